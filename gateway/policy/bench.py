"""Measure the policy engine: ``python -m gateway.policy.bench [POLICY_DIR] [-n N]``.

Prints the cold start (load + compile), the per-decision cost without the cache (a new
input every time), with the cache (the same statement again), and, for comparison,
regopy's slow path (``Interpreter.query`` on source modules) and regopy's own
``query_bundle_entrypoint``. Speed is measured here, never asserted in unit tests.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from gateway.policy.engine import PolicyEngine
from gateway.policy.source import PolicySource

SAMPLE_INPUT: dict[str, Any] = {
    "identity": {
        "subject": "repo:acme/payments:ref:refs/heads/main",
        "issuer": "https://token.actions.githubusercontent.com",
        "groups": ["ci"],
        "claims": {"repository": "acme/payments"},
        "method": "jwt",
    },
    "connection": {
        "name": "cardholder",
        "database": "payments",
        "user": "ci-bot",
        "application_name": "psql",
        "client_addr": "10.20.0.7",
        "tls": True,
        "networks": ["ci-runners"],
    },
    "session": {"id": "5f0c6a1e", "started_at": "2025-01-15T09:30:00Z"},
    "statement": {
        "sql": "SELECT id, pan, amount_cents FROM cards WHERE id = $1",
        "fingerprint": "4f1c0e7d2b9a",
        "command": "SELECT",
        "kind": "read",
        "relations": [{"schema": "public", "name": "cards", "access": ["read"]}],
        "columns": [
            {"schema": "public", "table": "cards", "name": "id", "tags": [], "usage": ["output"]},
            {"schema": "public", "table": "cards", "name": "pan", "tags": ["pan"],
             "usage": ["output"]},
            {"schema": "public", "table": "cards", "name": "amount_cents", "tags": [],
             "usage": ["output"]},
        ],
        "functions": [],
        "has_where": True,
        "limit": None,
        "index": 0,
        "count": 1,
        "protocol": "extended",
    },
    "approval": {"granted": False, "id": None},
}  # fmt: skip


def _timeit(fn: Callable[[int], object], n: int) -> tuple[float, float]:
    """(median, p99) microseconds per call over n calls."""
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def run(policy: str, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    source = PolicySource.load(policy)
    t1 = time.perf_counter()
    engine = PolicyEngine(source)
    t2 = time.perf_counter()
    inputs = []
    for i in range(n):
        doc = copy.deepcopy(SAMPLE_INPUT)
        doc["statement"]["fingerprint"] = f"fp-{i}"  # defeat the cache
        inputs.append(doc)
    first = engine.decide(SAMPLE_INPUT)
    uncached = _timeit(lambda i: engine.decide(inputs[i]), n)
    cached = _timeit(lambda i: engine.decide(SAMPLE_INPUT), n)
    raw_eval = _timeit(lambda i: engine.evaluate(inputs[i]), n)

    from regopy import Interpreter
    from regopy.rego_shared import LogLevel

    interp = Interpreter()
    interp.log_level = LogLevel.NONE
    interp.add_data_json(json.dumps(source.data))
    for name, text in source.policy_modules.items():
        interp.add_module(name, text)
    bundle = interp.build(None, [engine.entrypoint])

    def regopy_bundle(i: int) -> None:
        interp.set_input(inputs[i])
        interp.query_bundle_entrypoint(bundle, engine.entrypoint)

    def regopy_query(i: int) -> None:
        interp.set_input(inputs[i])
        interp.query(engine.entrypoint_ref)

    regopy_fast = _timeit(regopy_bundle, min(n, 500))
    regopy_slow = _timeit(regopy_query, min(n, 200))
    return {
        "policy": policy,
        "revision": engine.revision,
        "decision": first.to_dict(),
        "load_ms": (t1 - t0) * 1e3,
        "compile_ms": (t2 - t1) * 1e3,
        "decide_uncached_us": {"median": uncached[0], "p99": uncached[1]},
        "decide_cached_us": {"median": cached[0], "p99": cached[1]},
        "evaluate_only_us": {"median": raw_eval[0], "p99": raw_eval[1]},
        "regopy_query_bundle_entrypoint_us": {"median": regopy_fast[0], "p99": regopy_fast[1]},
        "regopy_query_us": {"median": regopy_slow[0], "p99": regopy_slow[1]},
        "cache": engine.cache_info().__dict__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("policy", nargs="?", default="policies/pci")
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.policy, args.n), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
