"""The audit trail's per-statement promises (docs/audit.md) for the EXTENDED
protocol and real drivers: one `statement` record per execution, before session.end,
totals that are the records', masked counts, `audit verify` passing.

Real PostgreSQL, real `pgwarden serve` processes, real clients (asyncpg, psycopg, a raw
protocol client); the records are read from the gateway's own files.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import (
    PgBackend,
    app_session,
    asyncpg_connect,
    audit_yaml,
    pgwarden,
    read_records,
    upstreams_for,
)
from rawclient import RawClient
from test_db_role import ROLE_SETUP

from gateway.devtools.harness import GatewayProcess
from gateway.wire import frontend as fe

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "pci"
DBROLE_POLICY = REPO / "tests" / "policies" / "dbrole"
OUTCOMES = ("allowed", "masked", "error", "skipped", "unfinished", "limited")



# -- helpers -------------------------------------------------------------------------------








def by_decision(mine: list[dict], marker: str) -> tuple[dict, list[dict]]:
    """The one decision whose SQL holds `marker`, and its statement records."""
    (dec,) = [r for r in mine if r["type"] == "decision" and marker in (r.get("sql") or "")]
    return dec, [r for r in mine if r["type"] == "statement" and r["decision_seq"] == dec["seq"]]


def totals_problems(mine: list[dict]) -> list[str]:
    """What in session.end's totals is not its statement records' (docs/audit.md)."""
    (end,) = [r for r in mine if r["type"] == "session.end"]
    stmts = [r for r in mine if r["type"] == "statement"]
    t = end["totals"]
    out = []
    late = [r["seq"] for r in stmts if r["seq"] > end["seq"]]
    if late:
        out.append(f"statement records after session.end: {late}")
    if t["statements"] != len(stmts):
        out.append(f"totals.statements {t['statements']} != {len(stmts)} records")
    c = Counter(r["outcome"] for r in stmts)
    for o in OUTCOMES:
        key = "errors" if o == "error" else o
        if t[key] != c[o]:
            out.append(f"totals.{key} {t[key]} != {c[o]} records")
    mv = sum(r["masked_values"] for r in stmts)
    if t["masked_values"] != mv:
        out.append(f"totals.masked_values {t['masked_values']} != {mv}")
    rows = sum(r["rows"] or 0 for r in stmts)
    if t["rows"] != rows:
        out.append(f"totals.rows {t['rows']} != {rows}")
    return out


def raw_login(c: RawClient, gw: GatewayProcess, app: str) -> None:
    c.startup({"user": "ci-bot", "database": "payments", "application_name": app})
    first = c.read_until(b"R", b"E")
    assert first[-1].type == b"R", first
    c.password(gw.token())
    msgs = c.read_until(b"Z", b"E")
    assert msgs[-1].type == b"Z", [(m.type, m.fields()) for m in msgs]


def pbe(sql: str, name: str = "", portal: str = "", max_rows: int = 0,
        params: tuple[bytes | None, ...] = ()) -> bytes:
    return (fe.Parse(name, sql, ()).encode()
            + fe.Bind(portal, name, (), params, ()).encode()
            + fe.Describe("P", portal).encode()
            + fe.Execute(portal, max_rows).encode())


def be_(name: str, portal: str = "", max_rows: int = 0) -> bytes:
    return (fe.Bind(portal, name, (), (), ()).encode()
            + fe.Execute(portal, max_rows).encode())


SYNC = fe.Sync().encode()


def verify(audit_dir: Path, d: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return pgwarden("audit", "verify", str(audit_dir), "--key", str(d / "audit.pub"), *extra)


@pytest.fixture(scope="module")
def pci(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[GatewayProcess, Path, Path]]:
    d = tmp_path_factory.mktemp("probeK-pci")
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=POLICY,
                        extra_yaml=audit_yaml(d) + "approvals:\n  timeout: 60s\n") as gw:
        yield gw, d / "audit", d


# -- drivers -------------------------------------------------------------------------------


def test_asyncpg_prepared_statement_executed_three_times(pci) -> None:
    gw, audit_dir, _ = pci

    async def main() -> None:
        conn = await asyncpg_connect(gw, server_settings={"application_name": "pk-apg"})
        try:
            st = await conn.prepare("select pan as pk_apg_pan from cards where id <= $1")
            for n in (1, 2, 3):
                assert len(await st.fetch(n)) == n
            await conn.executemany("select $1::int as pk_apg_many", [(1,), (2,), (3,)])
            async with conn.transaction():
                got = [r[0] async for r in conn.cursor(
                    "select pan as pk_apg_cur from cards", prefetch=2)]
            assert len(got) == 5
        finally:
            await conn.close()

    asyncio.run(main())
    mine = app_session(audit_dir, "pk-apg")
    dec, stmts = by_decision(mine, "pk_apg_pan")
    assert dec["outcome"] == "masked"
    assert [(s["outcome"], s["rows"], s["masked_values"]) for s in stmts] == [
        ("masked", 1, 1), ("masked", 2, 2), ("masked", 3, 3)], stmts
    _, many = by_decision(mine, "pk_apg_many")
    assert len(many) == 3, many
    _, cur = by_decision(mine, "pk_apg_cur")
    assert sum(s["rows"] for s in cur) == 5 and sum(s["masked_values"] for s in cur) == 5, cur
    assert not totals_problems(mine), totals_problems(mine)


def test_psycopg_prepare_true_and_named_cursor_fetchmany(pci) -> None:
    gw, audit_dir, _ = pci
    with psycopg.connect(gw.dsn("payments"), password=gw.token(),
                         application_name="pk-psy") as c:
        for _ in range(3):
            c.execute("select pan as pk_psy_prep from cards where id = %s", (1,),
                      prepare=True).fetchall()
        with c.cursor(name="pk_cur") as cur:
            cur.execute("select pan as pk_psy_named from cards")
            assert len(cur.fetchmany(2)) == 2
            assert len(cur.fetchmany(2)) == 2
        c.commit()
        with c.cursor() as cur:
            cur.executemany("select %s::int as pk_psy_many", [(1,), (2,)])
    mine = app_session(audit_dir, "pk-psy")
    _, prep = by_decision(mine, "pk_psy_prep")
    assert [(s["outcome"], s["rows"], s["masked_values"]) for s in prep] == [
        ("masked", 1, 1)] * 3, prep
    masked = sum(s["masked_values"] for s in mine if s["type"] == "statement")
    assert masked == 3 + 4, [(s["command"], s["outcome"], s["rows"], s["masked_values"])
                             for s in mine if s["type"] == "statement"]
    assert not totals_problems(mine), totals_problems(mine)


# -- raw extended protocol -----------------------------------------------------------------


def test_a_suspended_portal_then_leaving_has_one_record_per_execute(pci) -> None:
    gw, audit_dir, _d = pci
    with RawClient(gw, tls=True) as c:
        raw_login(c, gw, "pk-susp")
        c.send(fe.Parse("s1", "select pan as pk_susp from cards", ()).encode()
               + fe.Bind("p1", "s1", (), (), ()).encode() + fe.Describe("P", "p1").encode()
               + fe.Execute("p1", 2).encode() + fe.Flush().encode())
        got = c.read_until(b"s")
        assert got[-1].type == b"s", [m.type for m in got]
        c.send(fe.Execute("p1", 2).encode() + fe.Flush().encode())
        got = c.read_until(b"s")
        assert got[-1].type == b"s", [m.type for m in got]
        # leaves with the portal suspended (no Sync: the transaction is still open)
    mine = app_session(audit_dir, "pk-susp")
    _, stmts = by_decision(mine, "pk_susp")
    assert [(s["outcome"], s["rows"], s["masked_values"]) for s in stmts] == [
        ("masked", 2, 2), ("masked", 2, 2)], stmts
    assert not totals_problems(mine), totals_problems(mine)


def test_named_statement_executed_several_times_in_one_pipeline(pci) -> None:
    gw, audit_dir, _ = pci
    with RawClient(gw, tls=True) as c:
        raw_login(c, gw, "pk-named")
        c.send(fe.Parse("s2", "select pan as pk_named from cards where id = 1", ()).encode()
               + be_("s2") + be_("s2") + be_("s2") + SYNC)
        got = c.read_until(b"Z")
        assert [m.type for m in got].count(b"C") == 3, [m.type for m in got]
        c.send(be_("s2") + SYNC)
        c.read_until(b"Z")
        c.send(fe.Terminate().encode())
    mine = app_session(audit_dir, "pk-named")
    _, stmts = by_decision(mine, "pk_named")
    assert [(s["outcome"], s["rows"], s["masked_values"]) for s in stmts] == [
        ("masked", 1, 1)] * 4, stmts
    assert not totals_problems(mine), totals_problems(mine)


def test_a_parse_only_batch_runs_nothing(pci) -> None:
    gw, audit_dir, _ = pci
    with RawClient(gw, tls=True) as c:
        raw_login(c, gw, "pk-parse")
        c.send(fe.Parse("s3", "select pan as pk_parse_only from cards", ()).encode() + SYNC)
        got = c.read_until(b"Z")
        assert [m.type for m in got] == [b"1", b"Z"], got
        c.send(fe.Parse("s4", "select 1 as pk_parse_only2", ()).encode() + SYNC)
        c.read_until(b"Z")
    mine = app_session(audit_dir, "pk-parse")
    stmts = [s for s in mine if s["type"] == "statement"]
    assert stmts == [], stmts
    assert not totals_problems(mine), totals_problems(mine)


def test_pipelined_run_with_an_error_in_the_middle(pci) -> None:
    gw, audit_dir, _ = pci
    with RawClient(gw, tls=True) as c:
        raw_login(c, gw, "pk-pipe")
        c.send(fe.Parse("s5", "select pan as pk_pipe_named from cards where id = 1",
                        ()).encode() + SYNC)
        c.read_until(b"Z")
        c.send(pbe("select 1 as pk_pipe_first")
               + pbe("select 1/0 as pk_pipe_err")
               + pbe("select 2 as pk_pipe_after")
               + be_("s5")
               + SYNC)
        got = c.read_until(b"Z")
        assert b"E" in [m.type for m in got]
        c.send(be_("s5") + SYNC)
        c.read_until(b"Z")
        c.send(fe.Terminate().encode())
    mine = app_session(audit_dir, "pk-pipe")
    outs = {}
    for marker in ("pk_pipe_first", "pk_pipe_err", "pk_pipe_after", "pk_pipe_named"):
        _, stmts = by_decision(mine, marker)
        outs[marker] = [s["outcome"] for s in stmts]
    assert outs == {"pk_pipe_first": ["allowed"], "pk_pipe_err": ["error"],
                    "pk_pipe_after": ["skipped"], "pk_pipe_named": ["skipped", "masked"]}, outs
    assert not totals_problems(mine), totals_problems(mine)


def test_leaving_mid_execute(pci) -> None:
    gw, audit_dir, _d = pci
    with RawClient(gw, tls=True) as c:
        raw_login(c, gw, "pk-mid")
        c.send(pbe("select pan as pk_mid, pg_sleep(case when id = 3 then 3 else 0 end) "
                   "from cards") + SYNC)
        got = c.read_until(b"D")
        got += c.read_until(b"D")
        assert [m.type for m in got].count(b"D") == 2, [m.type for m in got]
    mine = app_session(audit_dir, "pk-mid")
    _, stmts = by_decision(mine, "pk_mid")
    # (the gateway may see the server finish after the client left: then it is masked, 5)
    assert [(s["outcome"], s["rows"], s["masked_values"]) for s in stmts] in (
        [("unfinished", 2, 2)], [("masked", 5, 5)]), stmts
    assert not totals_problems(mine), totals_problems(mine)


def _withdrawn_for(audit_dir: Path, app: str, timeout: float = 10.0) -> tuple[list[dict], dict]:
    """(the session's records, its approval.withdrawn record), waiting for both."""
    mine = app_session(audit_dir, app)
    deadline = time.monotonic() + timeout
    while True:
        withdrawn = [r for r in read_records(audit_dir) if r["type"] == "approval.withdrawn"
                     and r.get("session") == mine[0]["session"]]
        if withdrawn:
            return mine, withdrawn[0]
        assert time.monotonic() < deadline, "no approval.withdrawn"
        time.sleep(0.1)


def test_a_held_statements_withdrawal_is_recorded_before_its_session_end(pci) -> None:
    """A Parse/Bind/Execute run whose COPY of card numbers is held for approval (pci
    policy); the client leaves while it waits. The request is withdrawn ("the client
    disconnected") and the statement decided before it in the same run, never sent, is
    `skipped` (docs/audit.md). The session's records must be complete when its
    session.end is written (session.end closes the session: its totals count the hold,
    `audit show --session` and any reader take session.end as the last word):
    approval.withdrawn, which carries the session's id, must come before session.end in
    the chain. Before the fix it was appended after it (the withdrawal is awaited in the gate's
    task after the session has already written its end)."""
    gw, audit_dir, _d = pci
    with RawClient(gw, tls=True) as c:
        raw_login(c, gw, "pk-held")
        c.send(pbe("select 1 as pk_held_before")
               + pbe("copy cards (holder, pan) to stdout")
               + SYNC)
        notice = c.read_until(b"N", b"Z")[-1]
        assert notice.type == b"N" and "held for approval" in notice.fields()["M"]
    mine, withdrawn = _withdrawn_for(audit_dir, "pk-held")
    (end,) = [r for r in mine if r["type"] == "session.end"]
    _, before = by_decision(mine, "pk_held_before")
    assert [s["outcome"] for s in before] == ["skipped"], before
    assert end["totals"]["held"] == 1
    assert not totals_problems(mine), totals_problems(mine)
    assert "disconnect" in (withdrawn["reason"] or ""), withdrawn
    assert withdrawn["seq"] < end["seq"], (
        f"approval.withdrawn seq {withdrawn['seq']} after session.end seq {end['seq']}")


def test_a_hold_ended_by_a_gateway_shutdown_is_not_blamed_on_the_client(
        pg: PgBackend, tmp_path: Path) -> None:
    """The gateway is stopped (SIGTERM, drain_timeout 1 s) while a statement is held for
    approval: the gateway ends the session with FATAL 57P01 and session.end says so
    (sqlstate 57P01). The request's approval.withdrawn `reason` says why it was withdrawn
    (docs/audit.md: "why it was withdrawn"); it must not say "the client disconnected":
    the client did not leave, the gateway ended its session. Before the fix the reason was
    hard-coded in StatementGate._approval for whatever ended the session."""
    gw = GatewayProcess(tmp_path / "gw", upstreams_for(pg), policy_dir=POLICY,
                        drain_timeout=1.0,
                        extra_yaml=audit_yaml(tmp_path) + "approvals:\n  timeout: 60s\n")
    audit_dir = tmp_path / "audit"
    gw.start()
    try:
        c = RawClient(gw, tls=True)
        raw_login(c, gw, "pk-held-stop")
        c.send(pbe("copy cards (holder, pan) to stdout") + SYNC)
        notice = c.read_until(b"N", b"Z")[-1]
        assert notice.type == b"N" and "held for approval" in notice.fields()["M"]
    finally:
        assert gw.stop() == 0
    told = c.read_until_close(lenient=True)
    c.close()
    fatal = [m.fields().get("C") for m in told if m.type == b"E"]
    mine, withdrawn = _withdrawn_for(audit_dir, "pk-held-stop")
    (end,) = [r for r in mine if r["type"] == "session.end"]
    assert end["sqlstate"] == "57P01" and fatal == ["57P01"], (end, fatal)
    assert "client disconnected" not in (withdrawn["reason"] or ""), withdrawn


# -- db_role -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dbrole(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[GatewayProcess, Path, Path]]:
    pg.server.psql(ROLE_SETUP, dbname="payments")  # as the superuser
    d = tmp_path_factory.mktemp("probeK-dbrole")
    with GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=DBROLE_POLICY,
                        extra_yaml=audit_yaml(d)) as gw:
        yield gw, d / "audit", d


def test_db_role_pipeline_with_an_error(dbrole) -> None:
    gw, audit_dir, _ = dbrole
    with RawClient(gw, tls=True) as c:
        raw_login(c, gw, "pk-role-pipe")
        c.send(pbe("select total / 0 as pk_role_err from reports")
               + pbe("select total as pk_role_after from reports")
               + pbe("select 3 as pk_role_plain")
               + SYNC)
        got = c.read_until(b"Z")
        assert b"E" in [m.type for m in got]
        c.send(pbe("select total as pk_role_ok from reports") + SYNC)
        got = c.read_until(b"Z")
        assert [m.type for m in got][-2:] == [b"C", b"Z"], [m.type for m in got]
        c.send(fe.Terminate().encode())
    mine = app_session(audit_dir, "pk-role-pipe")
    outs = {}
    for marker in ("pk_role_err", "pk_role_after", "pk_role_plain", "pk_role_ok"):
        _, stmts = by_decision(mine, marker)
        outs[marker] = [s["outcome"] for s in stmts]
    assert outs == {"pk_role_err": ["error"], "pk_role_after": ["skipped"],
                    "pk_role_plain": ["skipped"], "pk_role_ok": ["allowed"]}, outs
    assert not totals_problems(mine), totals_problems(mine)


def test_db_role_leaving_mid_execute(dbrole) -> None:
    gw, audit_dir, _ = dbrole
    with RawClient(gw, tls=True) as c:
        raw_login(c, gw, "pk-role-mid")
        c.send(pbe("select total, pg_sleep(3) as pk_role_sleep from reports") + SYNC)
        time.sleep(0.8)
    mine = app_session(audit_dir, "pk-role-mid")
    _, stmts = by_decision(mine, "pk_role_sleep")
    assert [s["outcome"] for s in stmts] == ["unfinished"], stmts
    assert not totals_problems(mine), totals_problems(mine)


def test_db_role_prepared_drivers(dbrole) -> None:
    gw, audit_dir, _ = dbrole
    with psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True,
                         application_name="pk-role-psy") as c:
        for _ in range(3):
            assert c.execute("select total as pk_role_prep from reports where id = %s",
                             (1,), prepare=True).fetchall() == [(10,)]
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("select total / %s as pk_role_div from reports", (0,), prepare=True)
        assert c.execute("select current_user").fetchone() == ("pgwarden_svc",)
    mine = app_session(audit_dir, "pk-role-psy")
    _, prep = by_decision(mine, "pk_role_prep")
    assert [(s["outcome"], s["rows"]) for s in prep] == [("allowed", 1)] * 3, prep
    _, div = by_decision(mine, "pk_role_div")
    assert [s["outcome"] for s in div] == ["error"], div
    assert not totals_problems(mine), totals_problems(mine)


# -- durability: fsync ---------------------------------------------------------------------


def test_fsync_wait_then_leave_extended_batches(pg: PgBackend, tmp_path: Path) -> None:
    pg.server.psql(ROLE_SETUP, dbname="payments")
    gw = GatewayProcess(tmp_path / "gw", upstreams_for(pg), policy_dir=DBROLE_POLICY,
                        extra_yaml=audit_yaml(tmp_path) + "  durability: fsync\n")
    audit_dir = tmp_path / "audit"
    problems = []
    with gw:
        for i in range(6):
            with RawClient(gw, tls=True) as c:
                raw_login(c, gw, f"pk-fs-{i}")
                c.send(fe.Parse("n", f"select {i} as pk_fs_named", ()).encode()
                       + be_("n") + be_("n")
                       + pbe("select total as pk_fs_role from reports")
                       + pbe("select 1 as pk_fs_plain") + SYNC)
        for i in range(6):
            mine = app_session(audit_dir, f"pk-fs-{i}")
            outs = {}
            for marker in ("pk_fs_named", "pk_fs_role", "pk_fs_plain"):
                _, stmts = by_decision(mine, marker)
                outs[marker] = [s["outcome"] for s in stmts]
            p = totals_problems(mine)
            if p or len(outs["pk_fs_role"]) != 1 or len(outs["pk_fs_plain"]) != 1 \
                    or len(outs["pk_fs_named"]) not in (1, 2):
                problems.append((i, outs, p))
    assert not problems, problems
    out = verify(audit_dir, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_leaving_mid_resumed_portal_counts_its_masked_rows(pci) -> None:
    gw, audit_dir, _ = pci
    with RawClient(gw, tls=True) as c:
        raw_login(c, gw, "pk-resume")
        c.send(fe.Parse("r1", "select pan as pk_resume, pg_sleep(case when id = 4 then 3 "
                        "else 0 end) from cards", ()).encode()
               + fe.Bind("rp", "r1", (), (), ()).encode() + fe.Describe("P", "rp").encode()
               + fe.Execute("rp", 1).encode() + fe.Flush().encode())
        got = c.read_until(b"s")
        assert got[-1].type == b"s", [m.type for m in got]
        c.send(fe.Execute("rp", 0).encode() + SYNC)
        got = c.read_until(b"D") + c.read_until(b"D")  # rows 2 and 3; the server sleeps
        assert [m.type for m in got].count(b"D") == 2, [m.type for m in got]
    mine = app_session(audit_dir, "pk-resume")
    _, stmts = by_decision(mine, "pk_resume")
    assert [(s["outcome"], s["rows"], s["masked_values"], s["masked_columns"])
            for s in stmts] in (
        [("masked", 1, 1, ["public.cards.pan"]), ("unfinished", 2, 2, ["public.cards.pan"])],
        [("masked", 1, 1, ["public.cards.pan"]), ("masked", 4, 4, ["public.cards.pan"])],
    ), stmts
    assert not totals_problems(mine), totals_problems(mine)


def test_zz_the_pci_log_verifies_live(pci) -> None:
    """After every scenario above, the running gateway's trail verifies (--live)."""
    _, audit_dir, d = pci
    time.sleep(1.5)
    out = verify(audit_dir, d, "--live")
    assert out.returncode == 0, out.stdout + out.stderr
