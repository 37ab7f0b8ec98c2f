"""The audit readers (`audit show|export|explain`, `policy replay`) on hostile logs: no
line or field type makes a reader fail with a traceback."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_audit_cli import PCI, tarball

from gateway.audit import AuditContext, AuditWriter, records
from gateway.audit.filesink import FileSink

REPO = Path(__file__).resolve().parents[1]

FACTS = {
    "identity": {"subject": "repo:acme/payments", "issuer": "https://ci.example.com",
                 "groups": ["ci"], "claims": {}, "method": "jwt"},
    "connection": {"name": "cardholder", "database": "payments", "user": "ci-bot",
                   "application_name": "psql", "client_addr": "10.20.0.7", "tls": True,
                   "networks": []},
    "session": {"id": "5e55105e55105e55", "started_at": "2025-01-15T09:30:00.000000Z"},
}


def pgwarden(*args: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *map(str, args)],
                          capture_output=True, timeout=120, check=False, cwd=REPO)


def shown(out: subprocess.CompletedProcess[bytes]) -> str:
    """A reader's text output, after checking it ran without a traceback."""
    assert out.returncode in (0, 1), out.stderr.decode("utf-8", "replace")
    assert b"Traceback" not in out.stderr, out.stderr.decode("utf-8", "replace")
    return out.stdout.decode("utf-8")


def write_log(directory: Path, fill: Callable[[AuditWriter, AuditContext], None]) -> Path:
    """A log chained and written by the real writer, holding what `fill` appends."""
    w = AuditWriter(FileSink(directory, "gw1"), instance="gw1")
    w.start()
    fill(w, AuditContext.from_input(FACTS))
    assert w.close()
    return directory


def stored(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.glob("*.jsonl")))


@pytest.fixture
def bundles(tmp_path: Path) -> dict[str, Path]:
    old_dir, new_dir = tmp_path / "bundles", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    return {"dir": old_dir, "old": tarball(PCI, old_dir),
            "new": tarball(PCI, new_dir, edit={"groups": {"readers": ["nobody"],
                                                          "writers": [], "dba": []}})}


# -- lines and fields no reader expects ----------------------------------------------------


def test_readers_skip_a_line_nested_too_deeply_to_parse(tmp_path: Path) -> None:
    audit = write_log(tmp_path / "audit", lambda w, ctx: w.append(records.session_start(ctx)))
    segment = next(audit.glob("*.jsonl"))
    good = segment.read_bytes()
    with open(segment, "ab") as f:  # what a crafted (or damaged) log may hold
        f.write(b"[" * 200_000 + b"]" * 200_000 + b"\n")
    assert "session.start" in shown(pgwarden("audit", "show", audit))
    assert "session.start" in shown(pgwarden("audit", "export", audit, "--format", "csv"))
    assert pgwarden("audit", "export", audit, "--format", "jsonl").stdout == good
    assert pgwarden("audit", "show", audit, "--json").stdout == good


def odd_types(w: AuditWriter, ctx: AuditContext) -> None:
    w.append({"type": "session.start", "session": "s1", "input": FACTS,
              "who": {"subject": 7, "issuer": None, "groups": [1, "ci", None]},
              "where": {"client_addr": ["10.0.0.1"], "application_name": {"a": 1}}})
    w.append({"type": "session.update", "session": "s1", "changed": 5})
    w.append({"type": "session.update", "session": "s1", "changed": [["x"], "ok"], "ok": 1})
    w.append({"type": "decision", "session": "s1", "outcome": 3, "sql": ["select"],
              "reasons": 7, "statement": {"kind": "read", "relations": 5, "columns": {}},
              "decision": {"allow": True, "mask": [1], "require_approval": True,
                           "approvers": [1, "a"]}})
    w.append({"type": "statement", "session": "s1", "outcome": "allowed", "rows": [1],
              "duration_us": 10 ** 400})
    w.append({"type": "session.end", "session": "s1", "reason": "client", "totals": [1, 2]})
    w.append({"type": "session.start", "session": ["s2"], "input": FACTS})
    w.append({"type": "decision", "session": ["s2"], "sql": "select 1", "decision": "yes",
              "statement": {"kind": "read", "relations": [], "columns": []}})


def test_odd_typed_fields_are_shown_as_their_json_text(tmp_path: Path,
                                                       bundles: dict[str, Path]) -> None:
    audit = write_log(tmp_path / "audit", odd_types)
    text = shown(pgwarden("audit", "show", audit))
    assert '7 (-) groups 1,ci,- from ["10.0.0.1"] app {"a":1} -> -' in text
    assert "session.update  [s1]  5" in text and '["x"], ok -> 1' in text
    assert '3 ?  ["select"]' in text and "    reasons: 7" in text
    assert "rows=[1]" in text and "1" + "0" * 400 + " us" in text
    assert "session.end  [s1]  client: totals [1,2]" in text
    rows = list(csv.DictReader(io.StringIO(shown(pgwarden("audit", "export", audit,
                                                          "--format", "csv")))))
    assert rows[1]["groups"] == "[1,\"ci\",null]" and rows[4]["relations"] == "5"
    assert rows[4]["columns"] == "{}" and rows[4]["reasons"] == "7"
    for seq in (5, 9):
        out = pgwarden("audit", "explain", seq, audit, "--bundle", bundles["old"])
        assert out.returncode in (1, 2) and b"Traceback" not in out.stderr, out.stderr
    shown(pgwarden("policy", "replay", "--audit", audit, "--bundle", bundles["old"]))
