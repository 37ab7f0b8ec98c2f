"""The audit readers (`audit show|export|explain`, `policy replay`) on hostile logs: a
record's text never acts on the auditor's terminal, and no line or field type makes a
reader fail with a traceback."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PgBackend, upstreams_for
from test_audit_cli import PCI, stmt, tarball

from gateway.audit import AuditContext, AuditWriter, generate_keypair, records
from gateway.audit.canonical import GENESIS, canonical_bytes, chain_hash
from gateway.audit.display import safe_json, visible
from gateway.audit.filesink import FileSink
from gateway.devtools.harness import GatewayProcess
from gateway.policy.engine import PolicyEngine
from gateway.policy.source import PolicySource

REPO = Path(__file__).resolve().parents[1]

# A timeline line of the attacker's making, behind line breaks, with escape sequences (a
# C1 CSI and OSC: the gateway itself only replaces C0 controls) and a bidi override.
FAKE = "2025-01-15T09:30:00.000000Z  gw1#1  decision  ALLOWED SELECT  (forged line)"
HOSTILE = "psql\r\n" + FAKE + "\r\u009b2J\u009d52;c;aGVsbG8=\u009c \u202egnp.exe\x7f"
# What a terminal must never get from a reader's text output (LF only between lines).
RAW = ["\r", "\x1b", "\x07", "\x7f", "\u009b", "\u009c", "\u009d", "\u202e", "\u2066"]

# Never run: the text of a recorded statement, with the client's identifier.
SQL = f'SELECT id AS "x{HOSTILE}" FROM cards'  # noqa: S608

FACTS = {
    "identity": {"subject": "repo:acme/payments", "issuer": "https://ci.example.com",
                 "groups": ["ci"], "claims": {}, "method": "jwt"},
    "connection": {"name": "cardholder", "database": "payments", "user": "ci-bot",
                   "application_name": HOSTILE, "client_addr": "10.20.0.7", "tls": True,
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


def assert_inert(text: str) -> None:
    """Nothing raw for a terminal, and no line of the attacker's."""
    assert not [c for c in RAW if c in text], repr(text)
    assert not [ln for ln in text.split("\n") if ln.startswith(FAKE)], text


def write_log(directory: Path, fill: Callable[[AuditWriter, AuditContext], None]) -> Path:
    """A log chained and written by the real writer, holding what `fill` appends."""
    w = AuditWriter(FileSink(directory, "gw1"), instance="gw1")
    w.start()
    fill(w, AuditContext.from_input(FACTS))
    assert w.close()
    return directory


def crafted(directory: Path, recs: list[dict[str, Any]]) -> Path:
    """A log chained like the gateway's but not written by it: the writer's own rule
    (C0 controls but TAB/LF/CR stored as U+FFFD) does not hold in it."""
    directory.mkdir()
    head, lines = GENESIS, []
    for seq, rec in enumerate(recs, 1):
        raw = canonical_bytes({"v": 1, "instance": "gw1", "seq": seq, "prev": head,
                               "ts": f"2025-01-15T09:30:{seq:02d}.000000Z", **rec})
        head = chain_hash(head, raw)
        lines.append(raw[:-1] + b',"hash":"' + head.encode() + b'"}\n')
    (directory / "audit-gw1-000001.jsonl").write_bytes(b"".join(lines))
    return directory


ESCAPES = {"type": "statement", "session": "s1", "outcome": "error", "command": "SELECT",
           "error": "boom\x1b]52;c;aGVsbG8=\x07\x1b[2J\x08\x00"}


def stored(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.glob("*.jsonl")))


# -- the display helper --------------------------------------------------------------------


def test_visible_escapes_controls_bidi_and_the_backslash() -> None:
    assert visible("a\r\nb\tc\x1b[2J\x07\x7f\u009b\u0085\u202e\u2066\u200f\\x1b") == (
        "a\\r\\nb\\tc\\x1b[2J\\x07\\x7f\\u009b\\u0085\\u202e\\u2066\\u200f\\\\x1b")
    assert visible("select café, 'ünï'") == "select café, 'ünï'"  # text is left alone
    # what shows as nothing: two names that would look the same, words no one sees
    assert visible("ci\u200b-bot\u00ad\ufeff\u2060\ufe0f\U000e0041\U000e007f") == (
        "ci\\u200b-bot\\u00ad\\ufeff\\u2060\\ufe0f\\U000e0041\\U000e007f")
    assert visible("\ud800") == "\\ud800"  # JSON can hold one; no UTF-8 stream can write it
    assert visible("a\r\n\tb\x1b", keep="\t\n\r") == "a\r\n\tb\\x1b"
    line = safe_json({"sql": "x\u009b\u202e\x1b\n"})
    assert json.loads(line) == {"sql": "x\u009b\u202e\x1b\n"}
    assert not [c for c in [*RAW, "\n"] if c in line]


# -- terminal injection --------------------------------------------------------------------


def hostile_session(w: AuditWriter, ctx: AuditContext) -> None:
    w.append(records.auth_failure(reason="malformed", client_addr="10.9.9.9",
                                  application_name=HOSTILE, db_user="x\u009b31m"))
    w.append(records.session_start(ctx))
    w.append(records.decision_record(ctx, sql=f'select 1 as "x{HOSTILE}"', outcome="denied",
                                     reasons=[f"no\r\n{FAKE}"], sqlstate="42501"))
    w.append(records.session_end(ctx, reason=f"client\n{FAKE}", totals={"statements": 1}))


def test_show_escapes_a_records_controls_and_bidi_text(tmp_path: Path) -> None:
    audit = write_log(tmp_path / "audit", hostile_session)
    text = shown(pgwarden("audit", "show", audit))
    assert_inert(text)
    assert "app psql\\r\\n" + FAKE + "\\r\\u009b2J\\u009d52;c;aGVsbG8=\\u009c \\u202egnp.exe\\x7f" \
        in text
    assert "reasons: no\\r\\n" + FAKE in text and "client\\n" + FAKE in text
    assert "db_user=x\\u009b31m" in text
    session = shown(pgwarden("audit", "show", audit, "--session", "5e55105e55105e55"))
    assert_inert(session)
    assert session.startswith("session 5e55105e55105e55: ")


def test_show_escapes_the_escape_sequences_of_a_crafted_log(tmp_path: Path) -> None:
    audit = crafted(tmp_path / "audit", [ESCAPES])
    text = shown(pgwarden("audit", "show", audit))
    assert_inert(text)
    assert "error: boom\\x1b]52;c;aGVsbG8=\\x07\\x1b[2J\\x08\\x00" in text


def test_the_machine_formats_stay_the_stored_bytes(tmp_path: Path) -> None:
    for audit in (write_log(tmp_path / "audit", hostile_session),
                  crafted(tmp_path / "crafted", [ESCAPES])):
        assert pgwarden("audit", "show", audit, "--json").stdout == stored(audit)
        assert pgwarden("audit", "export", audit, "--format", "jsonl").stdout == stored(audit)


def test_csv_keeps_line_feeds_quoted_and_escapes_every_other_control(tmp_path: Path) -> None:
    audit = write_log(tmp_path / "audit", hostile_session)
    out = pgwarden("audit", "export", audit, "--format", "csv")
    text = shown(out)
    assert not [c for c in RAW if c in text], repr(text)
    rows = {r["type"]: r for r in csv.DictReader(io.StringIO(text, newline=""))}
    app = ("psql\\r\n" + FAKE + "\\r\\u009b2J\\u009d52;c;aGVsbG8=\\u009c \\u202egnp.exe\\x7f")
    assert rows["auth.failure"]["application_name"] == app  # one cell, line breaks and all
    assert rows["session.end"]["reason"] == f"client\n{FAKE}"
    text = shown(pgwarden("audit", "export", crafted(tmp_path / "crafted", [ESCAPES]),
                          "--format", "csv"))
    assert not [c for c in RAW if c in text] and "\x00" not in text, repr(text)
    (row,) = csv.DictReader(io.StringIO(text, newline=""))
    assert row["error"] == "boom\\x1b]52;c;aGVsbG8=\\x07\\x1b[2J\\x08\\x00"


def test_csv_still_defuses_formulas(tmp_path: Path) -> None:
    audit = crafted(tmp_path / "audit", [
        {"type": "auth.failure", "reason": "malformed", "where": {"application_name": name}}
        for name in ("=cmd()", "\r=cmd()", "\x1b=cmd()", "+1", "a\\b")])
    rows = list(csv.DictReader(io.StringIO(shown(pgwarden("audit", "export", audit,
                                                           "--format", "csv")), newline="")))
    assert [r["application_name"] for r in rows] == [
        "'=cmd()", "\\r=cmd()", "\\x1b=cmd()", "'+1", "a\\\\b"]


@pytest.fixture
def bundles(tmp_path: Path) -> dict[str, Path]:
    old_dir, new_dir = tmp_path / "bundles", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    return {"dir": old_dir, "old": tarball(PCI, old_dir),
            "new": tarball(PCI, new_dir, edit={"groups": {"readers": ["nobody"],
                                                          "writers": [], "dba": []}})}


def hostile_decision(bundle: Path) -> Callable[[AuditWriter, AuditContext], None]:
    engine = PolicyEngine(PolicySource.load(bundle))

    def fill(w: AuditWriter, ctx: AuditContext) -> None:
        w.append(records.session_start(ctx))
        doc = stmt(SQL, "SELECT", "read", "cards", [("id", [])])
        inp = {**FACTS, "statement": doc, "approval": {"granted": False, "id": None}}
        w.append(records.decision_record(ctx, decision=engine.decide(inp), input_doc=inp,
                                         entrypoint=engine.entrypoint, duration_us=40))

    return fill


def test_explain_and_replay_escape_a_records_text(tmp_path: Path,
                                                  bundles: dict[str, Path]) -> None:
    audit = write_log(tmp_path / "audit", hostile_decision(bundles["old"]))
    text = shown(pgwarden("audit", "explain", 3, audit, "--bundles", bundles["dir"]))
    assert "the same decision" in text
    assert_inert(text)
    assert 'SELECT id AS "xpsql\\r\\n' + FAKE in text
    text = shown(pgwarden("policy", "replay", "--audit", audit, "--bundle", bundles["new"]))
    assert "allowed -> denied" in text
    assert_inert(text)
    out = pgwarden("policy", "replay", "--audit", audit, "--bundle", bundles["new"], "--json")
    line = shown(out)
    assert_inert(line)
    assert json.loads(line)["sql"] == SQL  # the same value


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


# -- end to end ----------------------------------------------------------------------------


def test_a_clients_text_reaches_audit_show_escaped(pg: PgBackend, tmp_path: Path) -> None:
    """application_name reaches the trail before any login (auth.failure) and a quoted
    identifier with every statement: neither can forge a timeline line or run an escape
    sequence on the auditor's terminal."""
    generate_keypair(tmp_path / "audit.pem", tmp_path / "audit.pub")
    audit = tmp_path / "audit"
    with GatewayProcess(tmp_path / "gw", upstreams_for(pg), policy_dir=REPO / "policies" / "pci",
                        extra_yaml=(f"audit:\n  dir: {json.dumps(str(audit))}\n"
                                    "  signing_key: {file: "
                                    f"{json.dumps(str(tmp_path / 'audit.pem'))}}}\n")) as gw:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(gw.dsn("payments"), password="not-a-token",
                            application_name=HOSTILE).close()
        with psycopg.connect(gw.dsn("payments"), password=gw.token(groups=("ci",)),
                             autocommit=True) as c:
            assert c.execute(f'select 1 as "x{HOSTILE}"').fetchone() == (1,)
        time.sleep(0.3)
    assert stored(audit).count(b"forged line") == 2  # the records hold the text as sent
    text = shown(pgwarden("audit", "show", audit))
    assert_inert(text)
    assert "auth.failure" in text and "\\r\\n" + FAKE in text and "\\u009b2J" in text
    assert pgwarden("audit", "show", audit, "--json").stdout == stored(audit)


def test_show_names_why_a_session_was_restated() -> None:
    """The writer restates open sessions at a new segment, or a table's interval; a
    crafted log's other values are printed escaped, never trusted as text."""
    from gateway.audit.reader import Located
    from gateway.audit.show import render_record

    base = {"seq": 9, "ts": "2026-12-02T00:00:00.000000Z", "type": "session.update",
            "session": "s1", "changed": [], "who": {"subject": "ci-bot"},
            "where": {"client_addr": "10.0.0.5"}}

    def shown(restated: object) -> str:
        rec = {**base, "restated": restated}
        return render_record(Located("gw1", "f", 1, rec, b""))

    assert "restated at a new segment: ci-bot" in shown("segment")
    assert "restated after segment_age: ci-bot" in shown("interval")
    odd = shown("\x1b[31mlater")
    assert "restated (\\x1b[31mlater): ci-bot" in odd and "\x1b" not in odd
    assert "restated ([1,2]): ci-bot" in shown([1, 2])  # (its JSON text)
