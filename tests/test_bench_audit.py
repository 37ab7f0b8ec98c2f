"""tools/bench_audit.py's templated case writes what the gateway would: a chain that
verifies, each statement record with its own values (the numbers it reports are of real
records, not of a loop that skips the work)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import load_tool

from gateway.audit import Signer, generate_keypair, load_public_key
from gateway.audit.verify import verify_dir


def test_the_templated_case_writes_a_log_that_verifies(tmp_path: Path) -> None:
    bench = load_tool("bench_audit")
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    signer = Signer.from_pem_file(tmp_path / "k.pem")
    n = 20_000  # past two of the writer's batches
    for kind, rec in bench.sample_records().items():
        assert bench.bench_templated(tmp_path / kind, signer, rec, n) > 0
        report = verify_dir(tmp_path / kind, load_public_key(tmp_path / "k.pub"))
        assert report.ok, report.problem
        written = [json.loads(x) for f in sorted((tmp_path / kind).glob("*.jsonl"))
                   for x in f.read_text().splitlines()]
        mine = [r for r in written if r["type"] == kind]
        assert len(mine) == n
        if kind == "statement":
            assert [r["decision_seq"] for r in mine] == list(range(n))
            assert {r["rows"] for r in mine} == set(range(100))
        else:
            assert all(r["sql"] == rec["sql"] for r in mine)
