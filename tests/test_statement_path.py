"""tools/statement_path.py measures the path a real session takes: every statement it
times is decided, relayed and, with an audit trail, recorded as the gateway records it."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import psycopg
import pytest
from conftest import PgBackend, load_tool

from gateway.audit.checkpoint import load_public_key
from gateway.audit.verify import verify_dir

POLICY = Path(__file__).resolve().parents[1] / "policies" / "pci"
DB = "statement_path"


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return load_tool("statement_path")


@pytest.fixture(scope="module")
def catalog(pg: PgBackend, tool: ModuleType) -> object:
    pg.server.create_database(DB, owner=pg.service.name)
    dsn = pg.dsn(pg.service, DB)
    with psycopg.connect(dsn, autocommit=True) as conn:  # pgbench -i's table, empty
        conn.execute("create table pgbench_accounts (aid int primary key, bid int, "
                     "abalance int, filler char(84))")
    return tool.load_catalog(dsn)


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_every_timed_statement_is_decided_relayed_and_recorded(
        tool: ModuleType, catalog: object, tmp_path: Path, protocol: str) -> None:
    """Each statement has its completion record, linked to the decision that allowed
    it: one per session, the first statement's (its Parse's with the prepared protocol);
    the repeats are answered by that kept allow."""
    out = tool.measure(catalog, POLICY, audit_dir=tmp_path, protocol=protocol, sessions=2,
                       n=40, rounds=2, warmup=5)
    assert out["statements"] == (5 + 2 * 40) * 2 and out["us_per_statement"] > 0
    report = verify_dir(tmp_path / "log", load_public_key(tmp_path / "audit.pub"))
    assert report.problem is None, report.problem
    recs = [json.loads(line) for f in sorted((tmp_path / "log").glob("*.jsonl"))
            for line in f.read_text().splitlines()]
    decisions = [r for r in recs if r["type"] == "decision"]
    ends = [r for r in recs if r["type"] == "statement"]
    assert len(ends) == out["statements"]
    assert len(decisions) == 2 and len({r["session"] for r in decisions}) == 2
    assert {r["outcome"] for r in decisions} == {"allowed"}
    assert {r["sql"] for r in decisions} == {
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1"}
    assert {(r["outcome"], r["rows"]) for r in ends} == {("allowed", 1)}
    assert {r["decision_seq"] for r in ends} == {r["seq"] for r in decisions}
    assert sum(r["type"] == "session.start" for r in recs) == 2


def test_without_an_audit_trail_only_the_policy_path_is_timed(
        tool: ModuleType, catalog: object, tmp_path: Path) -> None:
    out = tool.measure(catalog, POLICY, sessions=2, n=40, rounds=1, warmup=5)
    assert out["statements"] == (5 + 40) * 2 and out["us_per_statement"] > 0
    assert not list(tmp_path.iterdir())


def test_a_policy_that_refuses_the_statement_cannot_pass_for_a_measurement(
        tool: ModuleType, catalog: object, tmp_path: Path) -> None:
    """A denied statement never reaches the server as sent: the tool says so rather than
    time the refusal as if it were pgbench's allowed statement."""
    (tmp_path / "deny.rego").write_text(
        "package pgwarden\nimport rego.v1\ndecision := {\"allow\": false, "
        "\"reasons\": [\"no\"]}\n")
    with pytest.raises(RuntimeError, match="did not forward every statement as sent"):
        tool.measure(catalog, tmp_path, sessions=1, n=5, rounds=1, warmup=1)


def test_a_sweep_runs_before_every_statement_sent(
        tool: ModuleType, catalog: object, tmp_path: Path) -> None:
    """--sweep: the caches are evicted before each statement, warm-up included, and the
    statements are still the ones timed (decided, relayed, recorded)."""
    out = tool.measure(catalog, POLICY, audit_dir=tmp_path, sessions=2, n=10, rounds=2,
                       warmup=3, sweep_mb=0.25)
    assert out["sweeps"] == out["statements"] == (3 + 2 * 10) * 2
    assert tool.measure(catalog, POLICY, sessions=1, n=5, rounds=1, warmup=1)["sweeps"] == 0
