"""The audit trail written by a real gateway: every session, decision and statement is a
chained record that `pgwarden audit verify` accepts, no PAN reaches it whatever the client
sends, and a sink that cannot write makes the gateway refuse statements with 58030."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import psycopg
import pytest
from conftest import (
    PgBackend,
    asyncpg_connect,
    asyncpg_cursor,
    fill_disk,
    pgwarden,
    read_records,
    upstreams_for,
)

from gateway.audit import generate_keypair
from gateway.devtools.harness import GatewayProcess

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "pci"
PANS = ("4111111111111111", "5555555555554444", "378282246310005", "6011111111111117",
        "4000056655665556", "4242424242424242")


def audit_yaml(directory: Path, key: Path, extra: str = "") -> str:
    return (f"audit:\n  dir: {json.dumps(str(directory))}\n"
            f"  signing_key: {{file: {json.dumps(str(key))}}}\n{extra}")





def statement_ends(records: list[dict], column: str
                   ) -> list[tuple[str, str | None, int | None]]:
    """(outcome, sqlstate, rows) of the statement records of the decisions whose SQL
    names `column`."""
    seqs = {r["seq"] for r in records if r["type"] == "decision"
            and column in (r.get("sql") or "")}
    assert seqs, column
    return [(r["outcome"], r["sqlstate"], r["rows"]) for r in records
            if r["type"] == "statement" and r["decision_seq"] in seqs]


@pytest.fixture(scope="module")
def audited(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[GatewayProcess, Path, Path]]:
    d = tmp_path_factory.mktemp("audited")
    generate_keypair(d / "audit.pem", d / "audit.pub")
    gw = GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=POLICY,
                        extra_yaml=audit_yaml(d / "audit", d / "audit.pem"))
    with gw:
        yield gw, d / "audit", d / "audit.pub"


def test_a_session_leaves_a_verifiable_trail_without_any_pan(
        audited: tuple[GatewayProcess, Path, Path], pg: PgBackend,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    gw, audit_dir, pub = audited
    with psycopg.connect(gw.dsn("payments"), password=gw.token(groups=("ci",)),
                         application_name="audit-e2e", autocommit=True) as c:
        assert c.execute("select id, pan from cards where id = 1").fetchone() == (
            1, "************1111")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("select cvv from cards")
        # PANs as literals and as parameters, in a statement that runs and one that fails
        c.execute("select count(*) from cards where pan = '4111111111111111'").fetchone()
        c.execute("select count(*) from cards where pan = %s", ("5555555555554444",))
        with pytest.raises(psycopg.Error):
            c.execute("select 1 from cards where pan = %s::int", ("4242424242424242",))
        with pytest.raises(psycopg.errors.SyntaxError):
            c.execute("selec '6011111111111117'")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gw.dsn("payments"), password="not-a-token").close()
    time.sleep(0.3)
    records = read_records(audit_dir)
    types = [r["type"] for r in records]
    for t in ("gateway.start", "session.start", "decision", "statement", "session.end",
              "auth.failure"):
        assert t in types, types
    raw = "".join(f.read_text() for f in audit_dir.glob("*.jsonl"))
    for pan in PANS:
        assert pan not in raw and pan[:12] not in raw, pan
    decisions = [r for r in records if r["type"] == "decision"]
    assert all(r.get("bundle_hash") or r.get("decision", {}).get("bundle_hash")
               for r in decisions if r.get("decision")), decisions[:2]
    masked = [r for r in records if r["type"] == "statement" and r.get("masked_values")]
    assert masked and masked[0]["masked_columns"] == ["public.cards.pan"]
    assert masked[0]["rows"] == 1
    link = {r["seq"]: r for r in decisions}
    assert masked[0]["decision_seq"] in link
    # a live log verifies up to its last record (the shutdown checkpoint comes at stop)
    out = pgwarden("audit", "verify", str(audit_dir), "--key", str(pub), "--live")
    assert out.returncode == 0, out.stdout + out.stderr


def test_an_application_name_the_server_reports_escaped_leaves_no_pan(
        audited: tuple[GatewayProcess, Path, Path]) -> None:
    """PostgreSQL reports an application_name's non-ASCII bytes as \\xHH: kept so, the
    escape's last hex digit glued to a card number behind it (no PAN any more to a scan).
    The gateway records the name as the client sent it, scanned as such."""
    gw, audit_dir, _ = audited
    before = {f: f.stat().st_size for f in audit_dir.glob("*.jsonl")}
    with psycopg.connect(gw.dsn("payments"), password=gw.token(groups=("ci",)),
                         application_name="\u00e9" + PANS[0], autocommit=True) as c:
        c.execute(f"set application_name = '\u00e9{PANS[1]}'")
        c.execute("select 1").fetchone()
    time.sleep(0.3)
    added = ""
    for f in sorted(audit_dir.glob("*.jsonl")):
        added += f.read_bytes()[before.get(f, 0):].decode()
    mine = [json.loads(line) for line in added.splitlines()]
    assert {"session.start", "session.update"} <= {r["type"] for r in mine}
    decoded = json.dumps(mine, ensure_ascii=False)
    for pan in PANS[:2]:
        assert pan not in decoded and pan[:12] not in decoded, pan
    names = {r["where"]["application_name"] for r in mine if r.get("where")}
    assert {n[:4] for n in names} == {"\u00e9" + PANS[0][:3], "\u00e9" + PANS[1][:3]}, names


def test_every_allowed_statement_gets_an_outcome_also_when_an_error_skips_it(
        audited: tuple[GatewayProcess, Path, Path], pg: PgBackend) -> None:
    """PostgreSQL runs nothing of a query string after its first error, nor anything of
    an extended-protocol run up to its Sync: those statements were decided (and allowed),
    so each gets a statement record saying it was skipped, linked to its decision."""
    gw, audit_dir, pub = audited
    env = pg.server.env()
    env["PGPASSWORD"] = gw.token(groups=("ci",))
    out = subprocess.run(
        [str(pg.server.bin_dir / "psql"), "-X", "-h", "127.0.0.1", "-p", str(gw.port),
         "-U", "ci-bot", "-d", "payments", "-c",
         "select 1 as first_col; select 1/0 as boom_col; select 2 as third_col"],
        env=env, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode != 0 and "division by zero" in out.stderr, out.stderr
    with psycopg.connect(gw.dsn("payments"), password=gw.token(groups=("ci",)),
                         autocommit=True) as c:
        with pytest.raises(psycopg.errors.DivisionByZero), c.pipeline():
            c.execute("select %s::int / 0 as pipe_boom", (1,))
            c.execute("select %s::int as pipe_after", (2,))
        assert c.execute("select 3 as still_usable").fetchone() == (3,)
    time.sleep(0.3)
    records = read_records(audit_dir)
    decisions = {r["seq"]: r for r in records if r["type"] == "decision"}
    ends: dict[int, list[dict]] = {}
    for r in records:
        if r["type"] == "statement":
            ends.setdefault(r["decision_seq"], []).append(r)

    def outcomes(column: str) -> list[tuple[str, str | None]]:
        seqs = [s for s, d in decisions.items() if column in (d.get("sql") or "")]
        assert seqs, column
        return [(e["outcome"], e["sqlstate"]) for s in seqs for e in ends.get(s, [])]

    assert outcomes("first_col") == [("allowed", None)]
    assert outcomes("boom_col") == [("error", "22012")]
    assert outcomes("third_col") == [("skipped", None)]
    assert outcomes("pipe_boom") == [("error", "22012")]
    assert outcomes("pipe_after") == [("skipped", None)]
    assert outcomes("still_usable") == [("allowed", None)]
    out = pgwarden("audit", "verify", str(audit_dir), "--key", str(pub), "--live")
    assert out.returncode == 0, out.stdout + out.stderr


def test_each_run_of_a_drivers_statements_ends_in_its_own_record(
        audited: tuple[GatewayProcess, Path, Path]) -> None:
    """What a driver sends for one statement (Parse, Bind, Describe, Execute, Sync; for a
    prepared one Bind, Describe, Execute, Sync) the relay follows to its end itself: each
    execution still gets its record, with its rows, or the error at its Bind or Execute."""
    gw, audit_dir, pub = audited
    with psycopg.connect(gw.dsn("payments"), password=gw.token(groups=("ci",)),
                         autocommit=True) as c:
        assert c.execute("select g as run_rows from generate_series(1, %s) g",
                         (3,)).fetchall() == [(1,), (2,), (3,)]
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            c.execute("select %s::int as run_bind_bad", ("x",))  # fails at the Bind
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("select %s::int / 0 as run_exec_bad", (1,))  # ... at the Execute
        for n in (1, 2, 3):  # prepared by the 2nd (prepare=True): then Bind, Execute
            assert c.execute("select %s::int as run_prepared", (n,),
                             prepare=True).fetchone() == (n,)
    time.sleep(0.3)
    ends = partial(statement_ends, read_records(audit_dir))
    assert ends("run_rows") == [("allowed", None, 3)]
    assert ends("run_bind_bad") == [("error", "22P02", 0)]
    assert ends("run_exec_bad") == [("error", "22012", 0)]
    assert ends("run_prepared") == [("allowed", None, 1)] * 3
    out = pgwarden("audit", "verify", str(audit_dir), "--key", str(pub), "--live")
    assert out.returncode == 0, out.stdout + out.stderr


def test_runs_pipelined_behind_one_the_relay_follows_keep_their_own_records(
        audited: tuple[GatewayProcess, Path, Path]) -> None:
    """psycopg's pipeline mode with a Sync after each statement sends the next runs before
    the first one's answers are back: the relay hands what is left of the run it follows
    to the masker, and every statement still ends in its own record."""
    gw, audit_dir, _pub = audited
    with psycopg.connect(gw.dsn("payments"), password=gw.token(groups=("ci",)),
                         autocommit=True) as c:
        with c.pipeline() as p:
            first = c.execute("select g as pipe_one from generate_series(1, %s) g", (2,))
            p.sync()
            second = c.execute("select %s::int as pipe_two", (5,))
            p.sync()
            with pytest.raises(psycopg.errors.DivisionByZero):
                c.execute("select %s::int / 0 as pipe_three", (1,))
                p.sync()
            third = c.execute("select %s::int as pipe_four", (4,))
            p.sync()
        assert first.fetchall() == [(1,), (2,)] and second.fetchone() == (5,)
        assert third.fetchone() == (4,)
    time.sleep(0.3)
    records = read_records(audit_dir)
    for column, expected in (("pipe_one", [("allowed", None, 2)]),
                             ("pipe_two", [("allowed", None, 1)]),
                             ("pipe_three", [("error", "22012", 0)]),
                             ("pipe_four", [("allowed", None, 1)])):
        seqs = {r["seq"] for r in records if r["type"] == "decision"
                and column in (r.get("sql") or "")}
        assert len(seqs) == 1, column
        assert [(r["outcome"], r["sqlstate"], r["rows"]) for r in records
                if r["type"] == "statement" and r["decision_seq"] in seqs] == expected, column


def test_a_statement_whose_parse_fails_upstream_is_recorded_as_that_error(
        audited: tuple[GatewayProcess, Path, Path]) -> None:
    """asyncpg prepares a statement (Parse, Describe, Sync) before executing it: when the
    server refuses the Parse, the allowed statement's record says so."""
    import asyncpg

    gw, audit_dir, _pub = audited

    async def main() -> None:
        conn = await asyncpg_connect(gw, password=gw.token(groups=("ci",)))
        try:
            with pytest.raises(asyncpg.UndefinedFunctionError):
                await conn.fetch("select 1 + 'x'::text as asy_bad")
            assert await conn.fetchval("select 7 as asy_good") == 7
        finally:
            await conn.close()

    asyncio.run(main())
    time.sleep(0.3)
    records = read_records(audit_dir)
    for column, expected in (("asy_bad", [("error", "42883")]),
                             ("asy_good", [("allowed", None)])):
        seqs = [r["seq"] for r in records if r["type"] == "decision"
                and column in (r.get("sql") or "")]
        assert len(seqs) == 1, column
        assert [(r["outcome"], r["sqlstate"]) for r in records if r["type"] == "statement"
                and r["decision_seq"] == seqs[0]] == expected, column


@pytest.mark.parametrize("leaving", ["terminate", "vanish"])
def test_a_statement_still_running_when_the_session_ends_is_recorded_unfinished(
        audited: tuple[GatewayProcess, Path, Path], leaving: str) -> None:
    """The client goes away before the result: saying goodbye (Terminate), or not at all
    (its connection shut down with the statement the only thing forwarded)."""
    gw, audit_dir, _pub = audited
    c = psycopg.connect(gw.dsn("payments"), password=gw.token(groups=("ci",)),
                        autocommit=True)
    c.execute("select 1 as before_sleep").fetchone()
    c.pgconn.send_query(f"select pg_sleep(3) as long_sleep_{leaving}".encode())
    c.pgconn.flush()
    time.sleep(0.5)  # decided and forwarded; the server is sleeping
    if leaving == "vanish":
        with socket.socket(fileno=os.dup(c.fileno())) as raw:
            raw.shutdown(socket.SHUT_RDWR)
    c.close()  # the client goes away before the result
    deadline = time.monotonic() + 10
    while True:
        records = read_records(audit_dir)
        decision = [r for r in records if r["type"] == "decision"
                    and f"long_sleep_{leaving}" in (r.get("sql") or "")]
        if decision and any(r["type"] == "session.end"
                            and r["session"] == decision[0]["session"] for r in records):
            break
        assert time.monotonic() < deadline, "no session.end for the sleeping session"
        time.sleep(0.1)
    ends = [r for r in records if r["type"] == "statement"
            and r["decision_seq"] == decision[0]["seq"]]
    assert [(e["outcome"], e["sqlstate"], e["rows"]) for e in ends] == [
        ("unfinished", None, 0)]
    end = next(r for r in records if r["type"] == "session.end"
               and r["session"] == decision[0]["session"])
    assert ends[0]["seq"] < end["seq"] and end["totals"]["statements"] == 2
    assert end["totals"]["unfinished"] == 1 and end["totals"]["allowed"] == 1
    show = pgwarden("audit", "show", str(audit_dir), "--session", end["session"])
    assert show.returncode == 0 and "UNFINISHED SELECT" in show.stdout, show.stdout
    assert "1 unfinished)" in show.stdout, show.stdout


def test_a_result_cut_short_by_the_client_leaving_records_the_rows_it_had_sent(
        audited: tuple[GatewayProcess, Path, Path]) -> None:
    """The server sends a result in pieces of its output buffer: a client that goes away
    between two leaves a statement `unfinished` with some rows sent, and its record says
    how many."""
    gw, audit_dir, _pub = audited
    c = psycopg.connect(gw.dsn("payments"), password=gw.token(groups=("ci",)),
                        autocommit=True)
    # ~100 KB of rows, then a pause: most of them are flushed to the gateway before it
    c.pgconn.send_query(b"select repeat('x', 1000) as cut_short, "
                        b"case when g = 100 then pg_sleep(3) end from generate_series(1, 200) g;"
                        b"select 1 as cut_never")
    c.pgconn.flush()
    time.sleep(1.0)
    with socket.socket(fileno=os.dup(c.fileno())) as raw:
        raw.shutdown(socket.SHUT_RDWR)
    c.close()
    deadline = time.monotonic() + 10
    while True:
        records = read_records(audit_dir)
        decision = [r for r in records if r["type"] == "decision"
                    and "cut_short" in (r.get("sql") or "")]
        if decision and any(r["type"] == "session.end"
                            and r["session"] == decision[0]["session"] for r in records):
            break
        assert time.monotonic() < deadline, "no session.end for the cut-short session"
        time.sleep(0.1)
    (later,) = [r["seq"] for r in records if r["type"] == "decision"
                and "cut_never" in (r.get("sql") or "")]
    ends = {r["decision_seq"]: r for r in records if r["type"] == "statement"}
    cut, never = ends[decision[0]["seq"]], ends[later]
    assert cut["outcome"] == "unfinished" and 50 < cut["rows"] < 100, cut
    assert (never["outcome"], never["rows"]) == ("unfinished", 0)


def test_safety_net_hits_are_counted_in_the_record_of_the_statement_they_were_in(
        audited: tuple[GatewayProcess, Path, Path], pg: PgBackend) -> None:
    """Card numbers no column lineage accounts for (literals here) are masked by the
    safety net on their way out; each statement's record counts the hits in its own
    result, also when several results share one read, when a result spans many reads,
    and in an error's text."""
    gw, audit_dir, _pub = audited
    env = pg.server.env()
    env["PGPASSWORD"] = gw.token(groups=("ci",))
    out = subprocess.run(
        [str(pg.server.bin_dir / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1",
         "-p", str(gw.port), "-U", "ci-bot", "-d", "payments", "-c",
         "select 1 as net_none; "
         "select '4111111111111111' as net_two, '5555555555554444' as net_two_b; "
         "select 2 as net_after; "
         "select case when g % 100 = 0 then '4111111111111111' else 'no card' end "
         "as net_stream from generate_series(1, 20000) g; "
         "select '6011111111111117'::int as net_error"],
        env=env, capture_output=True, text=True, timeout=30, check=False)
    assert "*********1111" in out.stdout and "4111111111111111" not in out.stdout
    # (psql's "LINE 1:" context quotes its own copy of the query, not the server's text)
    assert 'value "601*********1117" is out of range' in out.stderr, out.stderr
    time.sleep(0.3)
    records = read_records(audit_dir)
    decisions = {r["seq"]: r for r in records if r["type"] == "decision"}

    def hits(column: str) -> list[tuple[str, int]]:
        seqs = [s for s, d in decisions.items() if column in (d.get("sql") or "")]
        assert len(seqs) == 1, column
        return [(r["outcome"], r["safety_net_hits"]) for r in records
                if r["type"] == "statement" and r["decision_seq"] == seqs[0]]

    assert hits("net_none") == [("allowed", 0)]
    assert hits("net_two") == [("allowed", 2)]
    assert hits("net_after") == [("allowed", 0)]
    assert hits("net_error") == [("error", 1)]
    assert hits("net_stream") == [("allowed", 200)]  # ~220 KB: many reads
    raw = "".join(f.read_text() for f in audit_dir.glob("*.jsonl"))
    assert "4111111111111111" not in raw and "6011111111111117" not in raw


def test_a_statement_that_fails_partway_records_the_rows_it_had_sent(
        audited: tuple[GatewayProcess, Path, Path], pg: PgBackend) -> None:
    """PostgreSQL streams a result as it computes it: rows can reach the client before an
    error ends the statement. Its record counts them, whichever way the relay followed it
    (a lone Query, a statement of a longer string, an extended-protocol run, a masked
    result, a COPY's CopyData in text or binary), and the session's totals include
    them."""
    gw, audit_dir, _pub = audited
    env = pg.server.env()
    env["PGPASSWORD"] = gw.token(groups=("ci",))
    for sql in ("select 1/(g - 5000) as late_lone from generate_series(1, 10000) g",
                "select 1 as late_first; "
                "select 1/(g - 3) as late_second from generate_series(1, 5) g; "
                "select 2 as late_skipped",
                # COPY's rows travel as CopyData, one per row: counted the same way
                "copy (select 1/(g - 3) as late_copy from generate_series(1, 5) g) "
                "to stdout"):
        out = subprocess.run(
            [str(pg.server.bin_dir / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1",
             "-p", str(gw.port), "-U", "ci-bot", "-d", "payments", "-c", sql],
            env=env, capture_output=True, text=True, timeout=30, check=False)
        assert out.returncode != 0 and "division by zero" in out.stderr, out.stderr
    with psycopg.connect(gw.dsn("payments"), password=gw.token(groups=("ci",)),
                         application_name="late-rows", autocommit=True) as c:
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("select 1/(g - %s) as late_run from generate_series(1, 10) g", (4,))
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("select pan, 1/(g - 3) as late_masked from cards, "
                      "generate_series(1, 5) g where cards.id = 1")
        with pytest.raises(psycopg.errors.DivisionByZero):  # (its header rides with row 1)
            with c.cursor().copy("copy (select 1/(g - 3) as late_bincopy from "
                                 "generate_series(1, 5) g) to stdout (format binary)") as cp:
                for _ in cp:
                    pass
        assert c.execute("select 5 as late_after").fetchone() == (5,)

    # Executes with a row limit: PortalSuspended
    assert asyncpg_cursor(gw, "select g as late_pieces from generate_series(1, 5) g", 2,
                          password=gw.token(groups=("ci",))) == [1, 2, 3, 4, 5]
    time.sleep(0.3)
    records = read_records(audit_dir)
    ends = partial(statement_ends, records)
    assert ends("late_lone") == [("error", "22012", 4999)]
    assert ends("late_first") == [("allowed", None, 1)]
    assert ends("late_second") == [("error", "22012", 2)]
    assert ends("late_skipped") == [("skipped", None, None)]
    assert ends("late_run") == [("error", "22012", 3)]
    assert ends("late_masked") == [("error", "22012", 2)]
    assert ends("late_after") == [("allowed", None, 1)]
    assert ends("late_copy") == [("error", "22012", 2)]
    assert ends("late_bincopy") == [("error", "22012", 2)]
    assert ends("late_pieces") == [("allowed", None, 2), ("allowed", None, 2),
                                   ("allowed", None, 1)]
    session = next(r["session"] for r in records if r["type"] == "session.start"
                   and r["where"]["application_name"] == "late-rows")
    end = next(r for r in records if r["type"] == "session.end" and r["session"] == session)
    assert end["totals"]["rows"] == 3 + 2 + 2 + 1 and end["totals"]["errors"] == 3


def test_the_sealed_log_verifies_and_tampering_is_named(
        pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> None:
    d = tmp_path_factory.mktemp("sealed")
    generate_keypair(d / "audit.pem", d / "audit.pub")
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=POLICY,
                        extra_yaml=audit_yaml(d / "audit", d / "audit.pem")) as gw:
        with psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True) as c:
            for i in range(1, 4):
                c.execute("select holder from cards where id = %s", (i,)).fetchone()
    assert gw.proc is not None and gw.proc.returncode == 0
    records = read_records(d / "audit")
    assert records[-1]["type"] == "checkpoint" and "gateway.stop" in [r["type"] for r in records]
    out = pgwarden("audit", "verify", str(d / "audit"), "--key", str(d / "audit.pub"))
    assert out.returncode == 0, out.stdout + out.stderr
    show = pgwarden("audit", "show", str(d / "audit"))
    assert show.returncode == 0 and "SELECT" in show.stdout, show.stdout + show.stderr
    # edit one decision: verify fails and names it
    seg = sorted((d / "audit").glob("*.jsonl"))[0]
    lines = seg.read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if '"type":"decision"' in line)
    lines[i] = lines[i].replace('"allow"', '"deny"', 1)
    seg.write_text("\n".join(lines) + "\n")
    out = pgwarden("audit", "verify", str(d / "audit"), "--key", str(d / "audit.pub"))
    assert out.returncode == 1
    assert f"{seg.name} line {i + 1}" in out.stdout + out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_audit_disk_refuses_statements_with_58030_until_space_returns(
        pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> None:
    d = tmp_path_factory.mktemp("fulldisk")
    disk = d / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        generate_keypair(d / "audit.pem", d / "audit.pub")
        extra = "  retry_interval: 0.2s\n"
        with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=POLICY,
                            extra_yaml=audit_yaml(disk / "audit", d / "audit.pem", extra)) as gw:
            with psycopg.connect(gw.dsn("payments"), password=gw.token(),
                                 autocommit=True) as c:
                assert c.execute("select 1").fetchone() == (1,)
            # A session repeating a plain read: its repeats are answered by the allow kept
            # at the first, whose decision record is written before that first answer; each
            # repeat's own statement record follows it in a batch (docs/audit.md).
            reader = psycopg.connect(gw.dsn("payments"), password=gw.token(),
                                     autocommit=True)
            for i in range(3):  # (no parameters: psycopg sends one Query message)
                assert reader.execute(f"select {i}").fetchone() == (i,)
            # A session whose write was prepared (and decided) before the disk fills: run
            # again, it is only a Bind and an Execute
            writer = psycopg.connect(gw.dsn("payments"), autocommit=True,
                                     password=gw.token(groups=("ci", "ci-writers")))
            insert = "insert into transactions (card_id, amount) values (1, %s)"
            writer.execute(insert, (771.17,), prepare=True)
            filler = fill_disk(disk)  # to the last byte
            # The records queued meanwhile are written within a second, and that write
            # finds no room: from then on the reader is refused.
            refusal, answered = None, 3
            deadline = time.monotonic() + 10
            while refusal is None and time.monotonic() < deadline:
                try:
                    reader.execute(f"select {answered}").fetchone()
                    answered += 1
                except psycopg.Error as e:
                    refusal = e
            assert refusal is not None and refusal.sqlstate == "58030", refusal
            reader.close()
            refused = None
            for _ in range(20):
                try:
                    with psycopg.connect(gw.dsn("payments"), password=gw.token(),
                                         autocommit=True) as c:
                        c.execute("select holder from cards where id = 1").fetchone()
                except psycopg.Error as e:
                    refused = e
                    if getattr(e, "sqlstate", None) == "58030":
                        break
                time.sleep(0.1)
            assert refused is not None and refused.sqlstate == "58030", refused
            # the prepared write does not run either: it would leave no record of running
            with pytest.raises(psycopg.Error) as again:
                writer.execute(insert, (771.17,), prepare=True)
            assert again.value.sqlstate == "58030"
            writer.close()
            with psycopg.connect(pg.dsn(pg.service)) as direct:
                ran = direct.execute("select count(*) from transactions where amount = 771.17"
                                     ).fetchone()
            assert ran == (1,)
            filler.unlink()  # space returns
            deadline = time.monotonic() + 10
            while True:
                try:
                    with psycopg.connect(gw.dsn("payments"), password=gw.token(),
                                         autocommit=True) as c:
                        assert c.execute("select 2").fetchone() == (2,)
                    break
                except psycopg.Error:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        out = pgwarden("audit", "verify", str(disk / "audit"), "--key", str(d / "audit.pub"))
        assert out.returncode == 0, out.stdout + out.stderr
        # Nothing was lost: once space returned, every answer the reader got has its
        # statement record, linked to the one decision that allowed them all.
        whole = [json.loads(line) for f in sorted((disk / "audit").glob("*.jsonl"))
                 for line in f.read_text().splitlines()]
        decided = {r["seq"]: r["session"] for r in whole
                   if r["type"] == "decision" and r["sql"] == "select $1"}
        runs: dict[int, int] = {}
        for r in whole:
            if r["type"] == "statement" and r["decision_seq"] in decided:
                assert r["session"] == decided[r["decision_seq"]] and r["outcome"] == "allowed"
                runs[r["decision_seq"]] = runs.get(r["decision_seq"], 0) + 1
        assert max(runs.values()) == answered, (runs, answered)
        assert sum(1 for s in decided.values() if s == decided[max(runs, key=runs.get)]) == 1
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_two_gateways_share_a_postgresql_sink_and_both_chains_verify(
        pg: PgBackend, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path_factory.mktemp("pgsink")
    generate_keypair(d / "audit.pem", d / "audit.pub")
    dsn = pg.dsn(pg.service)
    monkeypatch.setenv("PGWARDEN_TEST_AUDIT_DSN", dsn)
    table = "audit_e2e_shared"

    def gateway(name: str) -> GatewayProcess:
        extra = audit_yaml(d / name / "audit", d / "audit.pem",
                           f"  sink: postgres\n  instance_id: {name}\n"
                           f"  postgres: {{dsn: {{env: PGWARDEN_TEST_AUDIT_DSN}}, "
                           f"table: {table}}}\n")
        return GatewayProcess(d / name, upstreams_for(pg), policy_dir=POLICY, extra_yaml=extra)

    with gateway("gw-a") as a, gateway("gw-b") as b:
        for gw in (a, b, a):
            with psycopg.connect(gw.dsn("payments"), password=gw.token(),
                                 autocommit=True) as c:
                c.execute("select holder, pan from cards where id = 2").fetchone()
    with psycopg.connect(dsn) as c:
        per_instance = dict(c.execute(
            f"select instance, count(*) from {table} group by 1").fetchall())  # noqa: S608
    assert set(per_instance) == {"gw-a", "gw-b"} and min(per_instance.values()) > 5
    for instance in ("gw-a", "gw-b"):
        out = pgwarden("audit", "verify", "--pg", dsn, "--table", table, "--instance",
                       instance, "--key", str(d / "audit.pub"))
        assert out.returncode == 0, out.stdout + out.stderr


def test_a_new_application_name_is_decided_recorded_and_replayed(
        pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A client's SET application_name (pgJDBC's first statement) is followed from the
    server's report: the policy decides on the new name (no allow kept from before it is
    reused), the records from then on carry it, a session.update record archives the new
    facts, and explain and replay decide each decision on the facts it was decided on."""
    d = tmp_path_factory.mktemp("renamed")
    generate_keypair(d / "audit.pem", d / "audit.pub")
    policy = REPO / "tests" / "policies" / "app_name"  # refuses the app "blocked-app"
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=policy,
                        extra_yaml=audit_yaml(d / "audit", d / "audit.pem")) as gw:
        with psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True,
                             application_name="fine-app") as c:
            assert c.execute("select 1").fetchone() == (1,)
            assert c.execute("select 1").fetchone() == (1,)  # kept: a repeat of an allow
            c.execute("set application_name = 'blocked-app'")
            for _ in range(2):
                with pytest.raises(psycopg.errors.InsufficientPrivilege,
                                   match="application blocked-app may not query"):
                    c.execute("select 1")
            c.execute("reset application_name")  # back to the name it connected with
            assert c.execute("select 1").fetchone() == (1,)
            c.execute("set application_name = 'card 4111111111111111'")  # a PAN, scrubbed
            # a statement of a kind recorded under the first name: its record has this one
            assert c.execute("select 1").fetchone() == (1,)
        long_name = "x" * 70  # the server keeps 63 characters: so does the trail, at once
        with psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True,
                             application_name=long_name) as c:
            assert c.execute("select 2").fetchone() == (2,)
    text = "".join(f.read_text() for f in sorted((d / "audit").glob("*.jsonl")))
    assert "4111111111111111" not in text and "card 411*********1111" in text
    records = read_records(d / "audit")
    session = next(r["session"] for r in records if r["type"] == "session.start")
    mine = [r for r in records if r.get("session") == session]
    fine, blocked, card = "fine-app", "blocked-app", "card 411*********1111"
    assert [(r["type"], r.get("outcome"), r["where"]["application_name"]) for r in mine] == [
        ("session.start", None, fine),
        ("decision", "allowed", fine), ("statement", "allowed", fine),
        ("statement", "allowed", fine),  # the repeat: linked to the first's decision
        ("decision", "allowed", fine),  # the SET, which ends after the server's report:
        ("session.update", None, blocked), ("statement", "allowed", blocked),
        ("decision", "denied", blocked), ("decision", "denied", blocked),
        ("decision", "allowed", blocked),  # the RESET, decided before it ran
        ("session.update", None, fine), ("statement", "allowed", fine),
        ("decision", "allowed", fine), ("statement", "allowed", fine),
        ("decision", "allowed", fine),
        ("session.update", None, card), ("statement", "allowed", card),
        ("decision", "allowed", card), ("statement", "allowed", card),
        ("session.end", None, card)]
    other = next(r["session"] for r in records if r["type"] == "session.start"
                 and r["session"] != session)
    assert [(r["type"], r["where"]["application_name"]) for r in records
            if r.get("session") == other] == [
        ("session.start", long_name[:63]), ("decision", long_name[:63]),
        ("statement", long_name[:63]), ("session.end", long_name[:63])]
    update = next(r for r in mine if r["type"] == "session.update")
    assert update["changed"] == ["application_name"]
    assert update["input"]["connection"]["application_name"] == "blocked-app"
    assert update["input"]["session"]["id"] == session
    assert all("session_input" not in r for r in mine)  # archived once per change
    bundles = d / "gw" / "state" / "bundles"
    for r in mine:
        if r["type"] == "decision":
            out = pgwarden("audit", "explain", str(r["seq"]), str(d / "audit"),
                           "--bundles", str(bundles))
            assert out.returncode == 0 and "the same decision" in out.stdout, out.stdout
    bundle = next(bundles.glob("*.tar.gz"))
    out = pgwarden("policy", "replay", "--audit", str(d / "audit"), "--bundle", str(bundle))
    assert out.returncode == 0 and "0 would change" in out.stdout, out.stdout + out.stderr
    show = pgwarden("audit", "show", str(d / "audit"), "--session", session)
    assert "session.update  application_name -> blocked-app" in show.stdout, show.stdout
    out = pgwarden("audit", "verify", str(d / "audit"), "--key", str(d / "audit.pub"))
    assert out.returncode == 0, out.stdout + out.stderr
