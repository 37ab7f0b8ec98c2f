"""A statement granted a db_role runs after SET ROLE, and there ``"$user"`` in the
search_path names the role's schema, not the login's. The gateway must resolve the
statement's names as the server will, as that role: otherwise a policy that masks
public.cards.holder would be shown another relation than the one that runs, and the
holder names would go out raw. Raw protocol, against a policy that grants every
statement on a relation named ``cards`` or ``tills`` a role (``pgw_clerk`` to application_name
``clerk``, ``pgw_teller`` to the rest) and masks public.cards.holder (a name: the PAN
safety net would not catch it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PgBackend, upstreams_for
from rawclient import RawClient

from gateway.devtools.harness import GatewayProcess
from gateway.wire import frontend as fe

MASKING = Path(__file__).resolve().parent / "policies" / "masking"
RAW = b"Alice Martin"
MASKED = b"[REDACTED]"

POLICY = """package pgwarden

import rego.v1

mask[key] := method if {
	some c in input.statement.columns
	key := concat(".", [c.schema, c.table, c.name])
	method := data.pgwarden.methods[key]
}

default role := null

role := object.get(data.pgwarden.roles, input.connection.application_name, "pgw_teller") if {
	some r in input.statement.relations
	r.name in {"cards", "tills"}
}

decision := {
	"allow": true,
	"reasons": [],
	"mask": mask,
	"require_approval": false,
	"approvers": [],
	"row_limit": null,
	"db_role": role,
}
"""

# As the superuser: the roles and their rights. pgw_teller has a schema of its own, whose
# `cards` is a view of public.cards that names holder otherwise: a DBA's narrowed view,
# as "$user" schemas are used for. pgw_clerk has none, and the login (pgwarden_svc) has
# one with a `cards` of its own, with nothing in it worth masking.
SETUP = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgw_teller') THEN
    CREATE ROLE pgw_teller NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgw_clerk') THEN
    CREATE ROLE pgw_clerk NOLOGIN;
  END IF;
END $$;
GRANT pgw_teller, pgw_clerk TO pgwarden_svc WITH INHERIT FALSE, SET TRUE;
GRANT SELECT ON public.cards TO pgw_teller, pgw_clerk;
CREATE SCHEMA IF NOT EXISTS pgw_teller;
CREATE OR REPLACE VIEW pgw_teller.cards AS SELECT id, holder AS name FROM public.cards;
GRANT USAGE ON SCHEMA pgw_teller TO pgw_teller;
GRANT SELECT ON pgw_teller.cards TO pgw_teller;
CREATE SCHEMA IF NOT EXISTS pgwarden_svc AUTHORIZATION pgwarden_svc;
CREATE TABLE IF NOT EXISTS pgwarden_svc.cards (id int, holder text);
ALTER TABLE pgwarden_svc.cards OWNER TO pgwarden_svc;
CREATE TABLE IF NOT EXISTS pgwarden_svc.tills (id int);
ALTER TABLE pgwarden_svc.tills OWNER TO pgwarden_svc;
"""
TEARDOWN = """
DROP SCHEMA IF EXISTS pgw_teller CASCADE;
DROP SCHEMA IF EXISTS pgwarden_svc CASCADE;
REVOKE SELECT ON public.cards FROM pgw_teller, pgw_clerk;
"""


@pytest.fixture(scope="module")
def gw(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    pg.server.psql(SETUP, dbname="payments")
    d = tmp_path_factory.mktemp("db-role-user-schema")
    policy = d / "policy"
    policy.mkdir()
    (policy / "teller.rego").write_text(POLICY)
    (policy / "data.json").write_text(json.dumps({"pgwarden": {
        "classification": {"public.cards.holder": ["pii"]},
        "methods": {"public.cards.holder": "redact"},
        "roles": {"clerk": "pgw_clerk"}}}))
    try:
        with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=policy) as g:
            yield g
    finally:
        pg.server.psql(TEARDOWN, dbname="payments")


def _answers(gw: GatewayProcess, messages: list[bytes], runs: int,
             app: str | None = None) -> list[bytes]:
    """The rows and errors of `messages` (`runs` ReadyForQuery answers), raw, sent as
    application_name `app`."""
    with RawClient(gw) as client:
        client.login(gw.token())
        if app is not None:
            client.send(fe.Query(f"set application_name = '{app}'").encode())
            assert client.read_until(b"Z")[-1].type == b"Z"
        client.send(b"".join(messages))
        got = [m for _ in range(runs) for m in client.read_until(b"Z")]
        assert got and got[-1].type == b"Z", got
        client.send(fe.Query("select current_user").encode())  # the session goes on
        assert [m.body for m in client.read_until(b"Z") if m.type == b"D"] == [
            b"\x00\x01\x00\x00\x00\x0cpgwarden_svc"]
    return [m.body for m in got if m.type in (b"D", b"E")]


STATEMENTS = {
    # as pgw_teller, `cards` is its view, and `name` public.cards.holder
    "the role's schema": (None, "select name from cards where id = 1"),
    # as pgw_clerk, `cards` is public.cards, not the login's
    "the login's schema": ("clerk", "select holder from cards where id = 1"),
}


@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize("case", list(STATEMENTS))
def test_names_resolve_as_the_granted_role_resolves_them(
        gw: GatewayProcess, case: str, protocol: str) -> None:
    app, sql = STATEMENTS[case]
    if protocol == "simple":
        got = _answers(gw, [fe.Query(sql).encode()], 1, app)
    else:
        got = _answers(gw, [fe.Parse("", sql, ()).encode(), fe.Bind("", "", (), (), ()).encode(),
                            fe.Execute("", 0).encode(), fe.Sync().encode()], 1, app)
    assert got and all(RAW not in body for body in got), got
    if protocol == "extended" and app is None:
        # The Parse itself runs as the login (only Bind and Execute are wrapped in the
        # role), whose `cards` has no `name`: the server refuses it. Nothing runs.
        assert [b for b in got if b[:1] == b"S"] == got and b"42703" in got[0], got
    else:
        assert all(MASKED in body for body in got), got


def test_the_setup_is_what_the_cases_assume(gw: GatewayProcess, pg: PgBackend) -> None:
    """Directly: as pgw_teller, `cards` is its view (holder as `name`); as pgw_clerk,
    public.cards; as the login, the login's own empty table."""
    del gw
    for role, sql in (("pgw_teller", "select name from cards where id = 1"),
                      ("pgw_clerk", "select holder from cards where id = 1")):
        got = pg.server.psql(f"set role {role}; {sql}", dbname="payments")
        assert RAW.decode() in got, (role, got)
    as_login = pg.server.psql("set role pgwarden_svc; select count(*) from cards",
                              dbname="payments")
    assert as_login.split()[-1] == "0", as_login


def test_a_name_that_means_another_relation_as_the_role_is_refused(gw: GatewayProcess) -> None:
    """As the login, `tills` is pgwarden_svc.tills, which the policy grants pgw_teller;
    as pgw_teller, the name means no relation, and the policy grants no role for that:
    the statement is refused, whatever it would have read."""
    for messages in ([fe.Query("select id from tills").encode()],
                     [fe.Parse("", "select id from tills", ()).encode(), fe.Sync().encode()]):
        got = _answers(gw, messages, 1)
        assert len(got) == 1 and b"C42501" in got[0], got
        assert b"as that role its names mean other relations" in got[0], got
