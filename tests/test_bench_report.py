"""tools/bench.py's arithmetic: the median round and the per-round ratios it reports.
(The benchmark itself runs by hand or in `make bench`, never in the test suite; its
`--floor` proxy gets a smoke test.)"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_tool


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
