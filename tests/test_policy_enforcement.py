"""Every statement is decided by the starter policy (policies/pci) before it runs."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from conftest import PgBackend, asyncpg_connect, upstreams_for

from gateway.devtools.harness import GatewayProcess

POLICY = Path(__file__).resolve().parents[1] / "policies" / "pci"
PANS = ("4111111111111111", "5555555555554444", "378282246310005")


@pytest.fixture(scope="module")
def pci_gateway(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("pci"), upstreams_for(pg), policy_dir=POLICY)
    with gw:
        yield gw


def connect(gw: GatewayProcess, groups: tuple[str, ...] = ("ci",), **kw: object
            ) -> psycopg.Connection:
    return psycopg.connect(gw.dsn("payments"), password=gw.token(groups=groups), **kw)


def test_allowed_reads_run(pci_gateway: GatewayProcess) -> None:
    with connect(pci_gateway) as c:
        assert c.execute("select count(*) from transactions").fetchone()[0] >= 7
        assert c.execute("select holder from cards where id = 1").fetchone() == ("Alice Martin",)


def test_cvv_is_never_readable(pci_gateway: GatewayProcess) -> None:
    with connect(pci_gateway, autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute("select holder, cvv from cards")
        assert "denied by policy" in str(e.value) and "cvv" in str(e.value).lower()
        assert c.execute("select 1").fetchone() == (1,)


def test_other_sessions_statements_are_the_dba_group_s_only(pci_gateway: GatewayProcess
                                                            ) -> None:
    """Every session shares the gateway's upstream login, so pg_stat_activity shows every
    other identity's last statement, its literals included (the audit trail redacts
    them): readers may not see it."""
    with connect(pci_gateway, autocommit=True) as other:
        other.execute("select id from cards where holder = 'Alice Martin'").fetchall()
        with connect(pci_gateway, autocommit=True) as c:
            for sql in ("select query from pg_stat_activity",
                        "select pg_stat_get_backend_activity(1)"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    c.execute(sql)
        with connect(pci_gateway, groups=("ci", "dba")) as dba:
            queries = [q for (q,) in dba.execute("select query from pg_stat_activity")]
            assert any("Alice Martin" in (q or "") for q in queries)  # (what it hides)


def test_pan_never_leaves_raw(pci_gateway: GatewayProcess) -> None:
    """The starter policy masks card numbers for readers: plain references come back
    masked, expressions over them are refused."""
    with connect(pci_gateway, autocommit=True) as c:
        for sql in ("select pan from cards", "select * from cards",
                    "select upper(pan) from cards", "select c from cards c"):
            try:
                rows = c.execute(sql).fetchall()
            except psycopg.errors.InsufficientPrivilege:
                continue
            assert not any(p in repr(rows) for p in PANS), sql


def test_writes_need_the_writer_group(pci_gateway: GatewayProcess, pg: PgBackend) -> None:
    before = int(pg.server.psql("select count(*) from transactions", dbname="payments"))
    with connect(pci_gateway, autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="ci-writers"):
            c.execute("insert into transactions (card_id, amount) values (1, 5)")
    with connect(pci_gateway, ("ci-writers",), autocommit=True) as c:
        c.execute("insert into transactions (card_id, amount) values (1, 5)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("update transactions set amount = 0")  # no WHERE
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("delete from cards where id = 5")  # not a writable table
    after = int(pg.server.psql("select count(*) from transactions", dbname="payments"))
    assert after == before + 1


def test_a_denied_statement_in_a_string_runs_nothing(pci_gateway: GatewayProcess,
                                                     pg: PgBackend) -> None:
    before = pg.server.psql("select count(*) from transactions", dbname="payments")
    with connect(pci_gateway, ("ci-writers",), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="statement 2 of 3"):
            c.execute("insert into transactions (card_id, amount) values (2, 1);"
                      " select cvv from cards; select 1")
        assert c.execute("select 2").fetchone() == (2,)
    assert pg.server.psql("select count(*) from transactions", dbname="payments") == before


def test_ddl_and_role_changes_are_refused(pci_gateway: GatewayProcess) -> None:
    with connect(pci_gateway, autocommit=True) as c:
        for sql in ("create table evil (x int)", "drop table transactions",
                    "set role postgres", "set session authorization postgres",
                    "copy cards to program 'cat'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql)
    with connect(pci_gateway, ("dba",), autocommit=True) as c:
        c.execute("create table dba_scratch (x int)")
        c.execute("drop table dba_scratch")


def test_denied_statement_inside_a_transaction_aborts_it(pci_gateway: GatewayProcess) -> None:
    with connect(pci_gateway) as c:
        c.execute("select 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("select cvv from cards")
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        c.rollback()
        assert c.execute("select 3").fetchone() == (3,)


def test_extended_protocol_denied_parse_keeps_the_session_in_sync(
        pci_gateway: GatewayProcess) -> None:
    with connect(pci_gateway, autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("select cvv from cards where id = %s", (1,), prepare=True)
        assert c.execute("select holder from cards where id = %s", (2,)).fetchone() == (
            "Bob Chen",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege), c.pipeline():
            ok = c.execute("select %s::int", (1,))
            c.execute("select cvv from cards where id = %s", (1,))
            c.execute("select 2")
        assert ok.fetchone() == (1,)
        assert c.execute("select 4").fetchone() == (4,)


def test_unparsable_sql_is_refused_by_the_gateway(pci_gateway: GatewayProcess) -> None:
    with connect(pci_gateway, autocommit=True) as c:
        with pytest.raises(psycopg.errors.SyntaxError, match="could not parse"):
            c.execute("selec 1")
        assert c.execute("select 5").fetchone() == (5,)


def test_parsing_settings_cannot_drift(pci_gateway: GatewayProcess) -> None:
    with connect(pci_gateway, autocommit=True) as c:
        for sql in ("set client_encoding to 'SJIS'", "set standard_conforming_strings = off"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="read a statement"):
                c.execute(sql)


def test_asyncpg_denial_and_recovery(pci_gateway: GatewayProcess) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE

    async def main() -> None:
        c = await asyncpg.connect(host="127.0.0.1", port=pci_gateway.port, user="ci-bot",
                                  database="payments", password=pci_gateway.token(), ssl=ctx)
        try:
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await c.fetch("select cvv from cards where id = $1", 1)
            assert await c.fetchval("select holder from cards where id = $1", 3) == "Carol Diaz"
        finally:
            await c.close()

    asyncio.run(main())


def test_psql_sees_the_reason(pci_gateway: GatewayProcess, pg: PgBackend) -> None:
    env = pg.server.env()
    env["PGPASSWORD"] = pci_gateway.token()
    out = subprocess.run(
        [str(pg.server.bin_dir / "psql"), "-X", "-h", "127.0.0.1", "-p", str(pci_gateway.port),
         "-U", "ci-bot", "-d", "payments", "-c", "select cvv from cards"],
        env=env, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode != 0
    assert "denied by policy" in out.stderr
    assert not any(p in out.stdout + out.stderr for p in PANS)


def test_decisions_name_the_policy_revision(pci_gateway: GatewayProcess) -> None:
    import time

    time.sleep(0.3)
    decisions = [d for d in pci_gateway.logs if d.get("event") == "decision"]
    assert decisions
    assert all(d["bundle_revision"] and d["bundle_hash"] for d in decisions)
    # Allowed statements are logged at debug level; refusals always are.
    assert "deny" in {d["outcome"] for d in decisions}
    assert not any(d.get("event") == "decision.analysis_failed" for d in pci_gateway.logs)


def test_catalog_is_refreshed_after_ddl(pci_gateway: GatewayProcess) -> None:
    """A table created through the gateway is known to the next statement's analysis."""
    with connect(pci_gateway, ("dba",), autocommit=True) as dba:
        dba.execute("create table fresh_ledger (id int, note text)")
        with connect(pci_gateway, autocommit=True) as reader:
            assert reader.execute("select count(*) from fresh_ledger").fetchone() == (0,)
            assert reader.execute("select note from fresh_ledger").fetchall() == []
        dba.execute("drop table fresh_ledger")


def test_asyncpg_introspects_custom_types(pci_gateway: GatewayProcess, pg: PgBackend) -> None:
    """asyncpg learns an enum's codec with a catalog query it wraps in
    ``set_config('jit', 'off', false)``; the starter policy lets set_config change the
    settings SET may change (jit among them), and nothing else."""
    with psycopg.connect(pg.dsn(pg.service), autocommit=True) as owner:
        owner.execute("create type card_state as enum ('active', 'blocked')")
        owner.execute("create table card_states (id int, state card_state)")
        owner.execute("insert into card_states values (1, 'active'), (2, 'blocked')")

    async def main() -> None:
        c = await asyncpg_connect(pci_gateway)
        try:
            rows = await c.fetch("select id, state from card_states order by id")
            assert [(r["id"], r["state"]) for r in rows] == [(1, "active"), (2, "blocked")]
            for sql in ("select set_config('role', 'postgres', false)",
                        "select set_config('log_statement', 'none', false)"):
                with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                    await c.fetch(sql)
        finally:
            await c.close()

    try:
        asyncio.run(main())
    finally:
        with psycopg.connect(pg.dsn(pg.service), autocommit=True) as owner:
            owner.execute("drop table card_states")
            owner.execute("drop type card_state")
