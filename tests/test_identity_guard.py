"""The upstream identity is the gateway's: a client cannot change it, whatever the policy
says (the `gateway` fixture's policy allows every statement)."""

from __future__ import annotations

import psycopg
import pytest

from gateway.devtools.harness import GatewayProcess

REFUSED = [
    "set role pgwarden_svc",
    "set local role pgwarden_svc",
    "reset role",
    "set role to default",
    "set session authorization pgwarden_svc",
    "reset session authorization",
    "set session role none",
    "select set_config('role', 'pgwarden_svc', false)",
    "select set_config('ROLE'::text, 'pgwarden_svc', false)",
    "select set_config('session_authorization', 'pgwarden_svc', true)",
    "select set_config(n, 'pgwarden_svc', false) from (values ('role')) v(n)",
    "begin; set local role pgwarden_svc; commit",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_identity_changes_are_refused(gateway: GatewayProcess, token: str, sql: str) -> None:
    with psycopg.connect(gateway.dsn("payments"), password=token, autocommit=True) as c:
        before = c.execute("select current_user, session_user").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not allowed"):
            c.execute(sql)
        assert c.execute("select current_user, session_user").fetchone() == before


def test_other_settings_still_work(gateway: GatewayProcess, token: str) -> None:
    with psycopg.connect(gateway.dsn("payments"), password=token, autocommit=True) as c:
        c.execute("select set_config('application_name', 'renamed', false)")
        c.execute("set statement_timeout = '5s'")
        assert c.execute("show application_name").fetchone() == ("renamed",)
