"""The audit evidence when sessions and processes end abnormally (found by a probe).

Real PostgreSQL, real `pgwarden serve` processes, real clients; the records are read
from the gateway's own files. Each test's docstring states what docs/audit.md promises.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import PgBackend, audit_yaml, ended_session, pgwarden, read_records, upstreams_for
from rawclient import RawClient, query_message

from gateway.devtools.harness import GatewayProcess

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "pci"



def decided_session(audit_dir: Path, marker: str) -> list[dict]:
    """The records of the session that decided a statement whose SQL holds `marker`, once
    its session.end is written."""
    return ended_session(audit_dir, lambda r: r["type"] == "decision"
                         and marker in (r.get("sql") or ""))




def vanish(conn: psycopg.Connection) -> None:
    """The client's connection goes away without a Terminate."""
    with socket.socket(fileno=os.dup(conn.fileno())) as raw:
        raw.shutdown(socket.SHUT_RDWR)
    conn.close()


@pytest.fixture(scope="module")
def audited(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[GatewayProcess, Path]]:
    """Allow-all policy, audit trail on, no JWT leeway (token expiry tests)."""
    d = tmp_path_factory.mktemp("probeJ")
    with GatewayProcess(d / "gw", upstreams_for(pg), leeway=0,
                        extra_yaml=audit_yaml(d)) as gw:
        yield gw, d / "audit"


# -- findings ------------------------------------------------------------------------------


def test_an_allowed_decision_whose_batch_never_went_out_still_gets_an_outcome(
        pg: PgBackend, tmp_path: Path) -> None:
    """docs/audit.md: a statement the gateway decided gets its outcome in a `statement`
    record written before its session's `session.end` (one per decision; `skipped` when
    the server never ran it), and session.end's totals are its statement records. With
    `durability: fsync` a batch waits for its decision record to reach the disk before it
    is forwarded; a client that sends a statement and then closes its socket during that
    wait ends the session first, and the batch is dropped. Its `decision` record says
    `allowed`, yet there is no `statement` record at all for it and the session's totals
    do not count it: an auditor cannot tell whether an allowed statement ran. Expected:
    exactly one statement record (for one that never ran, not `allowed`: e.g. `skipped`,
    rows null), counted in totals.statements. (When the close is seen only after the
    batch went out, the statement runs and is recorded as usual: the race is why six
    sessions are tried.)"""
    gw = GatewayProcess(tmp_path / "gw", upstreams_for(pg),
                        extra_yaml=audit_yaml(tmp_path) + "  durability: fsync\n")
    audit_dir = tmp_path / "audit"
    with gw:
        for i in range(6):
            with RawClient(gw, tls=True) as c:
                c.login(gw.token())
                c.send(query_message(f"select 1 as pj_first{i}"))
                c.read_until(b"Z")
                c.send(query_message(f"select 2 as pj_gone{i}"))
            # (the socket closes right after the Query)
        problems = []
        for i in range(6):
            mine = decided_session(audit_dir, f"pj_first{i}")
            (gone,) = [r for r in mine if r["type"] == "decision"
                       and f"pj_gone{i}" in r["sql"]]
            ends = [r for r in mine if r["type"] == "statement"
                    and r["decision_seq"] == gone["seq"]]
            (end,) = [r for r in mine if r["type"] == "session.end"]
            statements = [r for r in mine if r["type"] == "statement"]
            if len(ends) != 1 or end["totals"]["statements"] != len(statements):
                problems.append((i, gone["outcome"], [e["outcome"] for e in ends],
                                 end["totals"]["statements"]))
    assert not problems, (
        "allowed decisions without exactly one statement record "
        f"(session, decision outcome, statement outcomes, totals.statements): {problems}")


def test_a_masked_result_cut_short_records_the_values_it_masked(
        pg: PgBackend, tmp_path: Path) -> None:
    """A result with a masked column (pci policy: cards.pan masked pan_last4) streams,
    and the client goes away mid-result: the statement is `unfinished` with the rows it
    was sent (docs/audit.md). Those rows carried masked card numbers, so its record must
    say so: `masked_values` = the values masked in what was sent (one per row here) and
    `masked_columns` = ["public.cards.pan"], and session.end's totals.masked_values must
    include them. Before the fix the unfinished record says masked_values 0 and masked_columns []
    while rows = 237: the evidence hides that card data (masked) left the database."""
    gw = GatewayProcess(tmp_path / "gw", upstreams_for(pg), policy_dir=POLICY,
                        extra_yaml=audit_yaml(tmp_path))
    audit_dir = tmp_path / "audit"
    with gw:
        c = psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True)
        c.pgconn.send_query(
            b"select c.pan as pj_masked_pan, repeat('x', 1000) as pad, "
            b"case when g.g = 50 then pg_sleep(3) end as z "
            b"from generate_series(1, 100) g(g) cross join cards c")
        c.pgconn.flush()
        time.sleep(1.0)  # ~49 x 5 rows are out; the server sleeps
        vanish(c)
        mine = decided_session(audit_dir, "pj_masked_pan")
    (decision,) = [r for r in mine if r["type"] == "decision"]
    assert decision["outcome"] == "masked", decision
    (stmt,) = [r for r in mine if r["type"] == "statement"]
    (end,) = [r for r in mine if r["type"] == "session.end"]
    assert stmt["outcome"] == "unfinished" and 100 < stmt["rows"] < 250, stmt
    assert (stmt["masked_values"], stmt["masked_columns"]) == (
        stmt["rows"], ["public.cards.pan"]), stmt
    assert end["totals"]["masked_values"] == stmt["masked_values"], end["totals"]


def test_session_end_records_the_sqlstate_a_token_expiry_ended_it_with(
        audited: tuple[GatewayProcess, Path]) -> None:
    """session.end has a `sqlstate` field (docs/audit.md, record types). A session the
    gateway ends because its token expired tells the client FATAL 28000; its session.end
    must carry that SQLSTATE (as statement and auth.failure records carry what the client
    was told). Before the fix session.end's sqlstate was always null."""
    gw, audit_dir = audited
    c = psycopg.connect(gw.dsn("payments"), password=gw.token(ttl=2), autocommit=True)
    c.execute("select 1 as pj_te_first")
    with pytest.raises(psycopg.OperationalError) as told:
        c.execute("select pg_sleep(10) as pj_te_sleep")
    c.close()
    assert told.value.sqlstate == "28000", told.value
    mine = decided_session(audit_dir, "pj_te_sleep")
    (sleep,) = [r for r in mine if r["type"] == "decision" and "pj_te_sleep" in r["sql"]]
    (stmt,) = [r for r in mine if r["type"] == "statement"
               and r["decision_seq"] == sleep["seq"]]
    assert stmt["outcome"] == "unfinished" and stmt["rows"] == 0, stmt
    (end,) = [r for r in mine if r["type"] == "session.end"]
    assert end["totals"]["unfinished"] == 1, end
    assert end["sqlstate"] == "28000", end


def test_session_end_records_the_sqlstate_a_shutdown_ended_it_with(
        pg: PgBackend, tmp_path: Path) -> None:
    """SIGTERM drain with a statement still running past listen.drain_timeout: the
    session is ended with FATAL 57P01, the statement recorded `unfinished`, the chain
    sealed (verify passes). Its session.end must carry sqlstate 57P01, what the client
    was told; before the fix it was null."""
    gw = GatewayProcess(tmp_path / "gw", upstreams_for(pg), drain_timeout=1.0,
                        extra_yaml=audit_yaml(tmp_path))
    audit_dir = tmp_path / "audit"
    gw.start()
    try:
        c = psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True)
        c.pgconn.send_query(b"select pg_sleep(6) as pj_drain_sleep")
        c.pgconn.flush()
        time.sleep(0.5)
    finally:
        assert gw.stop() == 0
    c.close()
    mine = decided_session(audit_dir, "pj_drain_sleep")
    (stmt,) = [r for r in mine if r["type"] == "statement"]
    assert stmt["outcome"] == "unfinished", stmt
    out = pgwarden("audit", "verify", str(audit_dir), "--key", str(tmp_path / "audit.pub"))
    assert out.returncode == 0, out.stdout + out.stderr
    (end,) = [r for r in mine if r["type"] == "session.end"]
    assert end["sqlstate"] == "57P01", end


# -- passing checks kept -------------------------------------------------------------------


def test_thousands_of_pipelined_statements_then_a_disconnect_each_get_one_outcome(
        audited: tuple[GatewayProcess, Path]) -> None:
    """A client pipelines 10,000 Queries without reading and leaves: every decision has
    exactly one statement record (allowed or unfinished), none after session.end, and
    the totals are the records'. (Passes.)"""
    gw, audit_dir = audited
    payload = b"".join(query_message(f"select repeat('y', 3000) as pj_pl_{i}")
                       for i in range(10000))
    with RawClient(gw, tls=True) as c:
        c.login(gw.token())

        def send() -> None:
            try:
                c.send(payload)
            except OSError:
                pass

        threading.Thread(target=send, daemon=True).start()
        time.sleep(3)
    deadline = time.monotonic() + 40
    while True:
        records = read_records(audit_dir)
        first = [r for r in records if r["type"] == "decision"
                 and (r.get("sql") or "").startswith("select repeat($1, $2) as pj_pl_")]
        if first and any(r["type"] == "session.end" and r["session"] == first[0]["session"]
                         for r in records):
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    mine = [r for r in records if r.get("session") == first[0]["session"]]
    decisions = {r["seq"] for r in mine if r["type"] == "decision"}
    statements = [r for r in mine if r["type"] == "statement"]
    (end,) = [r for r in mine if r["type"] == "session.end"]
    per_decision = Counter(r["decision_seq"] for r in statements)
    assert set(per_decision) == decisions and set(per_decision.values()) == {1}
    assert all(r["seq"] < end["seq"] for r in statements)
    outcomes = Counter(r["outcome"] for r in statements)
    assert set(outcomes) <= {"allowed", "unfinished"}, outcomes
    assert end["totals"]["statements"] == len(statements)
    assert end["totals"]["unfinished"] == outcomes["unfinished"]
    assert end["totals"]["allowed"] == outcomes["allowed"]


def test_a_client_leaving_while_held_withdraws_and_the_log_verifies(
        pg: PgBackend, tmp_path: Path) -> None:
    """A statement held for approval when the client leaves: the held decision, its
    approval.requested, approval.withdrawn ("the client disconnected"), session.end
    counting it as held, no statement record for it; verify passes and `audit show
    --session` renders it. (Passes.)"""
    gw = GatewayProcess(tmp_path / "gw", upstreams_for(pg), policy_dir=POLICY,
                        extra_yaml=audit_yaml(tmp_path) + "approvals:\n  timeout: 60s\n")
    audit_dir = tmp_path / "audit"
    with gw:
        with RawClient(gw, tls=True) as c:
            c.login(gw.token())
            c.send(query_message("select 1 as pj_held_first"))
            c.read_until(b"Z")
            c.send(query_message("copy cards (holder, pan) to stdout"))
            notice = c.read_until(b"N", b"Z")[-1]
            assert notice.type == b"N" and "held for approval" in notice.fields()["M"]
        mine = decided_session(audit_dir, "pj_held_first")
        deadline = time.monotonic() + 10
        while not any(r["type"] == "approval.withdrawn" for r in read_records(audit_dir)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    (held,) = [r for r in mine if r["type"] == "decision" and r["outcome"] == "held"]
    assert not [r for r in mine if r["type"] == "statement"
                and r["decision_seq"] == held["seq"]]
    (end,) = [r for r in mine if r["type"] == "session.end"]
    assert end["totals"]["held"] == 1 and end["totals"]["statements"] == 1
    (withdrawn,) = [r for r in read_records(audit_dir) if r["type"] == "approval.withdrawn"]
    assert withdrawn["session"] == end["session"]
    out = pgwarden("audit", "verify", str(audit_dir), "--key", str(tmp_path / "audit.pub"))
    assert out.returncode == 0, out.stdout + out.stderr
    show = pgwarden("audit", "show", str(audit_dir), "--session", end["session"])
    assert show.returncode == 0 and "HELD COPY" in show.stdout, show.stdout + show.stderr
