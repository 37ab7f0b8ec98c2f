"""tools/bench.py's arithmetic: the median round and the per-round ratios it reports.
(The benchmark itself runs by hand or in `make bench`, never in the test suite; its
`--floor` proxy gets a smoke test.)"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import load_tool, make_input, rel, statement


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_tool("bench")


def rounds(bench: ModuleType, target: str, *tps: float) -> object:
    return bench.median_round([bench.Result(target, "simple", t, 1000 / t, int(t), 0, (t,))
                               for t in tps])


def test_the_median_round_keeps_every_rounds_tps(bench: ModuleType) -> None:
    r = rounds(bench, "pgbouncer", 300.0, 100.0, 200.0)
    assert (r.tps, r.latency_ms, r.tps_rounds) == (200.0, 5.0, (300.0, 100.0, 200.0))
    assert rounds(bench, "x", 4.0, 1.0, 3.0, 2.0).tps == 2.0  # even count: the lower middle


def test_ratios_pair_the_targets_round_by_round(bench: ModuleType) -> None:
    # The machine slowed in round 2 for everyone: paired ratios stay 0.8, while the ratio
    # of the medians (160 / 180) would not.
    results = [rounds(bench, "pgbouncer", 200.0, 100.0, 180.0),
               rounds(bench, "pgwarden+pol", 160.0, 80.0, 144.0),
               rounds(bench, "pgwarden+audit", 80.0, 60.0, 72.0)]
    rows = {row["gateway"]: row for row in bench.ratios(results)}
    assert rows["pgwarden+pol"]["/pgbouncer"] == pytest.approx(0.8)
    assert rows["pgwarden+pol"]["/pgbouncer range"] == (0.8, 0.8)
    assert rows["pgwarden+audit"]["/pgwarden+pol"] == pytest.approx(0.5)
    assert rows["pgwarden+audit"]["/pgwarden+pol range"] == (0.5, 0.75)
    assert "/direct" not in rows["pgwarden+pol"]  # no such target measured


def test_rounds_alternate_the_targets_order(bench: ModuleType) -> None:
    # The audited gateway must not always run right after policy alone: each pair of
    # targets runs in both orders, as often, over an even number of rounds.
    targets = ["direct", "pgbouncer", "pgwarden+pol", "pgwarden+audit"]
    orders = [bench.round_order(targets, n) for n in range(4)]
    assert orders[0] == orders[2] == targets
    assert orders[1] == orders[3] == targets[::-1]
    pol, audit = "pgwarden+pol", "pgwarden+audit"
    first = [order.index(pol) < order.index(audit) for order in orders]
    assert first.count(True) == first.count(False) == 2
    assert targets == ["direct", "pgbouncer", "pgwarden+pol", "pgwarden+audit"]  # untouched


def test_the_python_floor_carries_a_tls_session_to_postgres(
        bench: ModuleType, pg: object, tmp_path: Path) -> None:
    """`--floor`'s proxy: TLS in front, bytes to the server behind, a real client through."""
    import contextlib

    import psycopg

    server = pg.server  # type: ignore[attr-defined]
    role = pg.service  # type: ignore[attr-defined]
    with contextlib.ExitStack() as stack:
        target = bench.start_floor(stack, server, role.password)
        port = int(target.env["PGPORT"])
        assert target.tls and target.env["PGSSLMODE"] == "require"
        with psycopg.connect(host="127.0.0.1", port=port, user=role.name,
                             password=role.password, dbname=pg.dbname,  # type: ignore[attr-defined]
                             sslmode="require") as c:
            assert c.pgconn.ssl_in_use
            assert c.execute("select count(*) from cards").fetchone() == (5,)


def test_tpcb_runs_pgbenchs_own_script_over_the_simple_protocol(bench: ModuleType) -> None:
    target = bench.Target("t", Path("/usr/bin/pgbench"), {}, True)
    select = bench.pgbench_cmd(target, "extended", 8, 5)
    tpcb = bench.pgbench_cmd(target, "tpcb", 8, 5)
    assert select[1:4] == ["-S", "-M", "extended"]
    assert "-S" not in tpcb and tpcb[1:3] == ["-M", "simple"]
    assert tpcb[3:] == select[4:]  # the same clients, threads and duration


def test_the_bench_policy_lets_its_writers_write_pgbenchs_tables_and_nothing_more(
        bench: ModuleType, tmp_path: Path) -> None:
    """TPC-B writes pgbench's tables: the benchmark's policy is the starter one with those
    listed among its writable tables, decided as the starter decides any other write."""
    from gateway.policy.engine import PolicyEngine
    from gateway.policy.source import PolicySource

    engine = PolicyEngine(PolicySource.load(bench.bench_policy(tmp_path / "policy")))
    starter = PolicyEngine(PolicySource.load(bench.STARTER_POLICY))

    def update(table: str, groups: tuple[str, ...]) -> dict[str, Any]:
        sql = f"UPDATE {table} SET abalance = abalance + 1 WHERE aid = 1"  # noqa: S608
        return make_input(list(groups), statement(sql, "UPDATE", "write",
                                                  [rel(table, ["update"])]))

    writer = update("pgbench_accounts", bench.BENCH_GROUPS)
    assert engine.decide(writer).allow and not starter.decide(writer).allow
    assert not engine.decide(update("pgbench_accounts", ("ci",))).allow  # readers read
    assert not engine.decide(update("cards", bench.BENCH_GROUPS)).allow
