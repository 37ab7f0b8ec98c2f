"""A decision's row_limit through a real gateway and real clients: at most that many rows
of a read reach the client (the rest are withheld as the server sends them), the command
tag and a warning say so, the audit trail records the rows sent, and statements that do
not return query rows are refused rather than half limited."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import PgBackend, asyncpg_connect, asyncpg_cursor, audit_yaml, upstreams_for

from gateway.devtools.harness import GatewayProcess

POLICY = Path(__file__).resolve().parent / "policies" / "row_limit"
SETUP = """
CREATE TABLE IF NOT EXISTS limited (id int PRIMARY KEY, note text);
INSERT INTO limited SELECT g, 'n' || g FROM generate_series(1, 50) g ON CONFLICT DO NOTHING;
"""


@pytest.fixture(scope="module")
def limited(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[GatewayProcess, Path]]:
    pg.server.psql(SETUP, dbname="payments", user=pg.service.name)
    d = tmp_path_factory.mktemp("row_limit")
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=POLICY,
                        extra_yaml=audit_yaml(d)) as gw:
        yield gw, d / "audit"


def connect(gw: GatewayProcess) -> psycopg.Connection:
    return psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True)


def test_a_read_returns_at_most_its_limit_and_says_so(
        limited: tuple[GatewayProcess, Path]) -> None:
    gw, _ = limited
    notices: list[str] = []
    with connect(gw) as c:
        c.add_notice_handler(lambda d: notices.append(f"{d.severity}: {d.message_primary}"))
        cur = c.execute("select id from limited order by id")
        assert cur.fetchall() == [(1,), (2,), (3,)] and cur.rowcount == 3
        assert notices == ["WARNING: the result was cut at 3 rows: the policy's row_limit; "
                           "the gateway withheld the rest"]
        cur = c.execute("select id from limited where id > %s order by id limit 2", (10,))
        assert cur.fetchall() == [(11,), (12,)] and cur.rowcount == 2
        assert len(notices) == 1  # under the limit: nothing to say
        # the session is in step with the server: the next statements and a transaction
        assert c.execute("select count(*) from limited").fetchone() == (50,)
        with c.transaction():
            assert len(c.execute("select * from limited").fetchall()) == 3
            assert c.execute("select 42").fetchone() == (42,)
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_masked_and_limited_rows_through_psql(limited: tuple[GatewayProcess, Path],
                                              pg: PgBackend) -> None:
    """The simple protocol, two statements in one string: each keeps its own limit;
    the masked one is cut and masked."""
    gw, _ = limited
    env = dict(os.environ, PGPASSWORD=gw.token())
    out = subprocess.run(
        [str(pg.server.bin_dir / "psql"), "-X", "-A", "-t", "-h", gw.host, "-p", str(gw.port),
         "-U", "ci-bot", "-d", "payments", "-v", "ON_ERROR_STOP=1",
         "-c", "select pan from cards order by id; select id from limited order by id",
         "-c", "select id from limited order by id", "-c", r"\echo :ROW_COUNT"],
        env=env, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines == ["************1111", "************4444", "1", "2", "3", "1", "2", "3",
                     "3"]  # the last: ROW_COUNT, which psql takes from the command tag
    assert out.stderr.count("WARNING:  the result was cut at") == 2 + 1
    assert "4111111111111111" not in out.stdout + out.stderr


def test_a_drivers_cursor_gets_the_limit_across_its_fetches(
        limited: tuple[GatewayProcess, Path]) -> None:
    """asyncpg's cursor executes its portal a few rows at a time (PortalSuspended): the
    limit counts across the pieces; a SQL cursor's FETCH is a statement with its own."""
    gw, _ = limited

    async def main() -> tuple[list[int], list[int], list[int]]:
        conn = await asyncpg_connect(gw)
        try:
            async with conn.transaction():
                pieces = [r["id"] async for r in conn.cursor(
                    "select id from limited order by id", prefetch=2)]
            fetched = [r["id"] for r in await conn.fetch(
                "select id from limited where id > $1 order by id", 40)]
            async with conn.transaction():
                await conn.execute("declare k cursor for select id from limited order by id")
                first = [r["id"] for r in await conn.fetch("fetch 10 from k")]
                first += [r["id"] for r in await conn.fetch("fetch 10 from k")]
            return pieces, fetched, first
        finally:
            await conn.close()

    pieces, fetched, fetches = asyncio.run(main())
    assert pieces == [1, 2, 3]
    assert fetched == [41, 42, 43]
    assert fetches == [1, 2, 3, 11, 12, 13]  # each FETCH its own 3; the server moved on


@pytest.mark.parametrize("sql", [
    "insert into limited values (1000, 'x') returning id",
    "copy limited to stdout",
    "update limited set note = note where id = 1",
])
def test_what_does_not_return_query_rows_is_refused(limited: tuple[GatewayProcess, Path],
                                                     sql: str) -> None:
    gw, _ = limited
    with connect(gw) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match="row_limit applies to queries that return rows"):
            c.execute(sql)
        assert c.execute("select count(*) from limited where id = 1000").fetchone() == (0,)


def test_the_audit_trail_records_the_limit_the_rows_sent_and_the_cut(
        limited: tuple[GatewayProcess, Path]) -> None:
    """A result the limit cut is `limited` (masked too: its masked values counted); one
    under it is as usual; the session's totals count the cut ones."""
    gw, audit_dir = limited
    with connect(gw) as c:
        session = c.execute("select 1").fetchone()  # (the session's first statement)
        assert len(c.execute("select id as audited_cut from limited").fetchall()) == 3
        assert len(c.execute("select pan as audited_masked from cards").fetchall()) == 2
        assert len(c.execute("select id as audited_under from limited limit 2").fetchall()) == 2
        with pytest.raises(psycopg.errors.DivisionByZero):  # rows, then an error
            c.execute("select 10 / (3 - id) as audited_error from limited order by id")
    assert session == (1,)

    # a portal in pieces: an end (a record) per Execute
    assert asyncpg_cursor(gw, "select id as audited_pieces from limited order by id",
                          20) == [1, 2, 3]
    time.sleep(0.3)
    records = []
    for f in sorted(audit_dir.glob("*.jsonl")):
        records += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    ends = {}
    for column, limit in (("audited_cut", 3), ("audited_masked", 2), ("audited_under", 3),
                          ("audited_error", 3)):
        decisions = [r for r in records if r["type"] == "decision" and column in r["sql"]]
        assert [d["decision"]["row_limit"] for d in decisions] == [limit]
        [end] = [r for r in records
                 if r["type"] == "statement" and r["decision_seq"] == decisions[0]["seq"]]
        ends[column] = (end["outcome"], end["rows"], end["masked_values"])
        session_id = end["session"]
    assert ends == {"audited_cut": ("limited", 3, 0), "audited_masked": ("limited", 2, 2),
                    "audited_under": ("allowed", 2, 0), "audited_error": ("error", 2, 0)}
    [decision] = [r for r in records if r["type"] == "decision"
                  and "audited_pieces" in r["sql"]]
    pieces = [(r["outcome"], r["rows"]) for r in records
              if r["type"] == "statement" and r["decision_seq"] == decision["seq"]]
    # 50 rows, 20 per Execute: the first piece is cut at 3, the next withheld whole, and
    # asyncpg, given no rows, stops there (the portal ends with its transaction)
    assert pieces == [("limited", 3), ("limited", 0)]
    [totals] = [r["totals"] for r in records
                if r["type"] == "session.end" and r["session"] == session_id]
    assert (totals["limited"], totals["allowed"], totals["errors"]) == (2, 2, 1)
