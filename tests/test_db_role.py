"""A decision's db_role: the statement runs as that upstream role, and only that statement
(the gateway sets the role before it and resets it after; the client never sees that)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import PgBackend, asyncpg_connect, upstreams_for
from rawclient import RawClient

from gateway.devtools.harness import GatewayProcess
from gateway.wire import frontend as fe

POLICY = Path(__file__).resolve().parent / "policies" / "dbrole"

ROLE_SETUP = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'report_reader') THEN
    CREATE ROLE report_reader NOLOGIN;
  END IF;
END $$;
GRANT report_reader TO pgwarden_svc WITH INHERIT FALSE, SET TRUE;
CREATE TABLE IF NOT EXISTS reports (id int, total numeric);
INSERT INTO reports SELECT 1, 10 WHERE NOT EXISTS (SELECT FROM reports);
ALTER TABLE reports OWNER TO postgres;
REVOKE ALL ON reports FROM PUBLIC, pgwarden_svc;
GRANT SELECT ON reports TO report_reader;
"""


@pytest.fixture(scope="module")
def gw(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    pg.server.psql(ROLE_SETUP, dbname="payments")  # as the superuser
    with GatewayProcess(tmp_path_factory.mktemp("dbrole"), upstreams_for(pg),
                        policy_dir=POLICY) as g:
        yield g


def connect(gw: GatewayProcess) -> psycopg.Connection:
    return psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True)


def test_the_statement_runs_as_the_granted_role_and_only_it(gw: GatewayProcess) -> None:
    with connect(gw) as c:
        assert c.execute("select current_user, count(*) from reports").fetchone() == (
            "report_reader", 1)
        assert c.execute("select current_user").fetchone() == ("pgwarden_svc",)
        # the gateway's SET ROLE / RESET ROLE results never reach the client
        cur = c.execute("select current_user, total from reports; select id from reports")
        assert cur.fetchall() == [("report_reader", 10)]
        assert cur.nextset() and cur.fetchall() == [(1,)]
        assert not cur.nextset()
        # statements needing different roles are not mixed in one string
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="different db_role"):
            c.execute("select 'before'; select total from reports")


def test_a_failing_statement_leaves_no_elevated_role(gw: GatewayProcess) -> None:
    with connect(gw) as c:
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("select total / 0 from reports")
        assert c.execute("select current_user").fetchone() == ("pgwarden_svc",)
        c.autocommit = False
        c.execute("select count(*) from reports").fetchone()
        assert c.execute("select current_user").fetchone() == ("pgwarden_svc",)
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("select total / 0 from reports")
        c.rollback()
        assert c.execute("select current_user").fetchone() == ("pgwarden_svc",)
        c.rollback()


def test_without_the_role_the_table_is_unreadable(gw: GatewayProcess, pg: PgBackend) -> None:
    with psycopg.connect(pg.dsn(pg.service), autocommit=True) as direct:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            direct.execute("select * from reports")


def test_extended_protocol_statements_run_as_the_role_too(gw: GatewayProcess) -> None:
    with connect(gw) as c:
        row = c.execute("select current_user, total from reports where id = %s", (1,))
        assert row.fetchone() == ("report_reader", 10)
        assert c.execute("select current_user").fetchone() == ("pgwarden_svc",)
        for _ in range(3):  # psycopg prepares on the third run: a named statement
            assert c.execute("select current_user from reports where id = %s", (1,),
                             prepare=True).fetchone() == ("report_reader",)
        assert c.execute("select current_user where %s", (True,)).fetchone() == (
            "pgwarden_svc",)
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("select total / %s from reports", (0,))
        assert c.execute("select current_user").fetchone() == ("pgwarden_svc",)


def test_asyncpg_prepared_and_cursor_run_as_the_role(gw: GatewayProcess) -> None:
    async def main() -> None:
        conn = await asyncpg_connect(gw)
        try:
            stmt = await conn.prepare("select current_user, id from reports where id = $1")
            assert tuple(await stmt.fetchrow(1)) == ("report_reader", 1)
            async with conn.transaction():
                got = [tuple(r) async for r in conn.cursor(
                    "select current_user, id from reports", prefetch=1)]
            assert got == [("report_reader", 1)]
            assert await conn.fetchval("select current_user") == "pgwarden_svc"
        finally:
            await conn.close()

    asyncio.run(main())


def test_the_client_gets_only_the_answers_to_its_own_messages(gw: GatewayProcess) -> None:
    """The gateway's SET ROLE / RESET ROLE messages around a Bind and each Execute are
    answered too (ParseComplete, BindComplete, CommandComplete, CloseComplete): none of
    those may reach the client. libpq and asyncpg shrug off an extra ParseComplete;
    pgJDBC fails on one, as on any answer to a message it never sent. Byte level, as a
    driver sends them: an unnamed run, a named statement, a portal read in pieces."""
    sql = "select current_user, total from reports where id = $1"
    one = fe.Bind("", "", (0,), (b"1",), (0,)).encode()
    runs = {
        "P B D(portal) E S": ([fe.Parse("", sql, (23,)).encode(), one,
                               fe.Describe("P", "").encode(), fe.Execute("", 0).encode(),
                               fe.Sync().encode()], "12TDCZ"),
        "P(named) D(statement) S, then B E S twice": (
            [fe.Parse("S_1", sql, (23,)).encode(), fe.Describe("S", "S_1").encode(),
             fe.Sync().encode(),
             *[m for _ in range(2) for m in (fe.Bind("", "S_1", (0,), (b"1",), (1,)).encode(),
                                             fe.Execute("", 0).encode())],
             fe.Sync().encode()], "1tTZ2DC2DCZ"),
        "a portal in pieces": (
            [fe.Query("begin").encode(),
             fe.Parse("", "select current_user, g from reports, generate_series(1, 3) g",
                      ()).encode(),
             fe.Bind("c1", "", (), (), ()).encode(),
             fe.Execute("c1", 2).encode(), fe.Execute("c1", 2).encode(),
             fe.Sync().encode(), fe.Query("commit").encode()], "CZ12DDsDCZCZ"),
    }
    for name, (messages, answers) in runs.items():
        with RawClient(gw) as client:
            client.login(gw.token())
            client.send(b"".join(messages))
            got = []
            while len(got) < answers.count("Z"):
                got.append(client.read_until(b"Z"))
            types = "".join(m.type.decode() for batch in got for m in batch)
            assert types == answers, name
            rows = [m.body for batch in got for m in batch if m.type == b"D"]
            assert rows and all(b"report_reader" in r for r in rows), name


def test_a_role_is_never_applied_to_a_statement_it_was_not_decided_for(
        gw: GatewayProcess) -> None:
    """A Parse given a db_role that the server skips (an error ahead of it in its run)
    leaves the name on the statement the server had. A later Bind of the name is refused
    (the gateway no longer knows what the name runs as); one sent behind it before the
    error came back waits for that answer, then is refused the same way: the session
    goes on, and nothing ran as the role."""
    plain = fe.Parse("", "select current_user, $1::int", ()).encode()  # runs as any role
    skipped = [fe.Describe("S", "nosuch").encode(),  # fails: the server skips to the Sync
               fe.Parse("", "select current_user from reports", ()).encode(),
               fe.Sync().encode()]
    bind = [fe.Bind("", "", (), (b"1",), ()).encode(), fe.Execute("", 0).encode(),
            fe.Sync().encode()]
    for together in (False, True):
        with RawClient(gw) as client:
            client.login(gw.token())
            batches = ([plain, fe.Sync().encode()], skipped, bind)
            if together:
                client.send(b"".join(m for batch in batches for m in batch))
                answers = [client.read_until(b"Z") for _ in batches][-1]
            else:
                for batch in batches:
                    client.send(b"".join(batch))
                    answers = client.read_until(b"Z")
            assert [m.type for m in answers] == [b"E", b"Z"], together
            assert "is not the one the gateway decided" in answers[0].fields()["M"]
            client.send(fe.Query("select current_user").encode())
            assert [m.body for m in client.read_until(b"Z") if m.type == b"D"] == [
                b"\x00\x01\x00\x00\x00\x0cpgwarden_svc"]


PROBE_SETUP = """
CREATE TABLE IF NOT EXISTS role_probe (who text);
GRANT INSERT ON role_probe TO PUBLIC;
TRUNCATE role_probe;
"""
WRITE = "insert into role_probe select current_user"  # decided without a role
READ = "select total from reports"  # decided as report_reader


@pytest.mark.parametrize("together", [False, True], ids=["sent-apart", "sent-together"])
@pytest.mark.parametrize("case", ["unnamed-skipped", "named-in-use", "role-to-none",
                                  "close-skipped"])
def test_a_pipelined_bind_never_runs_under_a_role_it_was_not_decided_with(
        gw: GatewayProcess, pg: PgBackend, case: str, together: bool) -> None:
    """The client pipelines a Bind behind a Parse (or Close) that changes its statement's
    db_role, in an earlier run the server has not answered yet. If the server does not
    carry that out, the name keeps its earlier statement, which must not run as the new
    one's role (nor the new one's role be dropped). The Bind waits for the answer and is
    refused: nothing runs, least of all a write under another role."""
    pg.server.psql(PROBE_SETUP, dbname="payments")
    name = "probe" if case in ("named-in-use", "close-skipped") else ""
    first_sql, second_sql = (READ, WRITE) if case in ("role-to-none", "close-skipped") \
        else (WRITE, READ)
    first = [fe.Parse(name, first_sql, ()).encode(), fe.Sync().encode()]
    change = fe.Close("S", name) if case == "close-skipped" else fe.Parse(name, second_sql, ())
    if case == "named-in-use":  # the server refuses it: the name has a statement
        second = [change.encode(), fe.Sync().encode()]
    else:  # the server skips the Parse or Close: an error ahead of it in its run
        second = [fe.Describe("S", "nosuch").encode(), change.encode(), fe.Sync().encode()]
    bind = [fe.Bind("", name, (), (), ()).encode(), fe.Execute("", 0).encode(),
            fe.Sync().encode()]
    with RawClient(gw) as client:
        client.login(gw.token())
        if together:
            client.send(b"".join(first + second + bind))
        else:  # one send per run, nothing read in between
            for batch in (first, second, bind):
                client.send(b"".join(batch))
        answers = [client.read_until(b"Z") for _ in range(3)]
        assert [m.type for m in answers[0]] == [b"1", b"Z"]
        assert [m.type for m in answers[1]] == [b"E", b"Z"]
        assert [m.type for m in answers[2]] == [b"E", b"Z"]
        assert "is not the one the gateway decided" in answers[2][0].fields()["M"]
        client.send(fe.Query("select current_user").encode())  # the session goes on
        assert [m.body for m in client.read_until(b"Z") if m.type == b"D"] == [
            b"\x00\x01\x00\x00\x00\x0cpgwarden_svc"]
    rows = pg.server.psql("select count(*) from role_probe", dbname="payments")
    assert rows.strip() == "0"


def test_a_cursor_name_declared_again_does_not_pass_on_its_role(gw: GatewayProcess) -> None:
    """A FETCH is decided against every query its cursor name may run. A role granted for
    an earlier cursor of the name ran the later one's query as that role (found by a
    probe: current_user came back report_reader for a cursor granted no role)."""
    with connect(gw) as c:
        c.execute("begin")
        c.execute("declare c cursor for select total from reports")  # granted report_reader
        c.execute("close c")
        c.execute("declare c cursor for select current_user::text from generate_series(1, 2)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="new name"):
            c.execute("fetch 1 from c")
        c.execute("rollback")
        c.execute("begin")
        c.execute("declare d cursor for select total from reports")  # one query: its role
        assert c.execute("fetch 1 from d").fetchall()
        c.execute("rollback")
        assert c.execute("select current_user").fetchone() == ("pgwarden_svc",)


@pytest.mark.parametrize("sql", ["alter role current_user set role = 'report_reader'",
                                 "alter database payments set role to report_reader",
                                 "alter role current_user set session_authorization = x"])
def test_a_default_role_for_later_logins_is_refused(gw: GatewayProcess, pg: PgBackend,
                                                     sql: str) -> None:
    """It would start every later upstream login, every client's, as that role."""
    try:
        with connect(gw) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="identity"):
                c.execute(sql)
        with connect(gw) as c:  # a new session: a new upstream login
            assert c.execute("select current_user").fetchone() == ("pgwarden_svc",)
    finally:
        # (from another database: a default role of payments' would apply to this too)
        pg.server.psql("ALTER ROLE pgwarden_svc RESET ALL; "
                       "ALTER DATABASE payments RESET ALL", dbname="postgres")
