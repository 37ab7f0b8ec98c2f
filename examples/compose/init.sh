#!/bin/sh
# Runs once in the postgres container: the service role the gateway logs in as, and data.
set -eu
pw="$(cat "$CARDHOLDER_PASSWORD_FILE")"
psql -v ON_ERROR_STOP=1 -U postgres -d payments -v pw="$pw" <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE pgwarden_svc LOGIN PASSWORD :'pw';
GRANT ALL ON SCHEMA public TO pgwarden_svc;
SET ROLE pgwarden_svc;
CREATE TABLE cards (id serial PRIMARY KEY, holder text, pan text, cvv text, expiry text);
INSERT INTO cards (holder, pan, cvv, expiry) VALUES
  ('Alice Martin', '4111111111111111', '123', '12/29'),
  ('Bob Chen', '5555555555554444', '456', '01/28');
SQL
