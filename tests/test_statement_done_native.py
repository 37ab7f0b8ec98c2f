"""A statement's usual end recorded by the compiled ledger (`Ledger.complete` in
`gateway/audit/_seal.c`) against the Python path of `Session._statement_done`.

For every CommandComplete it takes, the compiled call must append the record the Python
path appends (the same bytes but for the time, the duration and the envelope) and count
the session's totals the same way; for every one it declines (a tag with no count or one
it does not read, a value no hole holds, a row limit's end, no template yet, a closed
trail) it must append and count nothing, so that the Python path does it once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditContext, AuditWriter, generate_keypair, records
from gateway.audit import ledger as ledger_mod
from gateway.audit.canonical import now_ts
from gateway.audit.checkpoint import Signer, load_public_key
from gateway.audit.filesink import FileSink
from gateway.audit.template import TemplateCache
from gateway.audit.verify import verify_dir
from gateway.enforce.input_doc import SessionFacts
from gateway.identity.model import Identity
from gateway.masking.results import StatementTag
from gateway.proxy.session import Session

pytestmark = pytest.mark.skipif(ledger_mod._native is None,
                                reason="the compiled ledger is not built (PGWARDEN_PURE_PYTHON)")

CC = 0x43  # CommandComplete
ENVELOPE = ("seq", "prev", "hash", "ts", "duration_us")

BODIES = [
    b"SELECT 1\0", b"SELECT 0\0", b"INSERT 0 5\0", b"UPDATE 12\0", b"DELETE 3\0",
    b"COPY 7\0", b"FETCH 0\0", b"MOVE 99\0", b"MERGE 2\0", b"SELECT 01\0",
    b"SELECT 999999999999\0",  # 12 digits: the most a hole holds
    b"SELECT 1000000000000\0",  # 13: declined, read by Python, no template fill
    b"SELECT 99999999999999999999999\0",
    b"CREATE TABLE\0", b"SELECT\0", b"BEGIN\0", b"\0", b"",
    b"SELECT  3\0", b" SELECT 3 \0", b"SELECT 3\0\0", b"SELECT\t3\0", b"SELECT 3\n\0",
    b"SELECT 1x\0", b"SELECT x1\0", b"SELECT \xff 3\0", b"SELECT 3\xff\0",
    b"SELECT 3\0junk\0", b"SELECT -1\0", b"SELECT +1\0", b"SELECT 1 2\0", b"7\0", b" 42 \0",
]


def session(directory: Path, compiled: bool, signer: Signer | None = None
            ) -> tuple[Session, AuditWriter]:
    """A session's audit state as Session builds it, writing to `directory`."""
    writer = AuditWriter(FileSink(str(directory), "gw1"), instance="gw1", signer=signer)
    writer.start()
    facts = SessionFacts.build(
        Identity("ci-job", "https://issuer", ("ci",), {}, "jwt", None), session_id="s1",
        started_at=time.time(), name="payments", database="payments", user="app",
        application_name="test", client_addr="127.0.0.1", tls=True, networks={})
    s = Session.__new__(Session)
    s.id, s.audit_ctx = "s1", AuditContext.from_input(facts.input_for({}))
    s.totals = records.SessionTotals()
    s._templates = TemplateCache(writer)
    s.server = type("Server", (), {"audit": writer})()
    if not compiled:
        s._templates.complete = None
    assert (s._templates.complete is not None) == compiled
    return s, writer


def statement_records(directory: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for f in sorted(directory.glob("*.jsonl"))
             for line in f.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ENVELOPE}
            for r in lines if r["type"] == "statement"]


def tags() -> list[StatementTag]:
    now = time.perf_counter()
    return [StatementTag(None, 7, now, "SELECT"), StatementTag(None, None, now, "INSERT"),
            StatementTag(None, 8, 0.0, "SELECT"),  # no start: duration null
            StatementTag(None, 10**12, now, "SELECT"),  # a seq no hole holds
            StatementTag(None, 9, now, None),
            StatementTag(None, 9, now, "SELECT", withheld=True)]  # a row limit's


def test_the_compiled_usual_end_records_and_counts_what_the_python_path_does(
        tmp_path: Path) -> None:
    runs: dict[bool, tuple[list[dict[str, Any]], dict[str, int]]] = {}
    hits = 0
    for compiled in (False, True):
        s, writer = session(tmp_path / str(compiled), compiled)
        complete = s._templates.complete
        if complete is not None:
            def counted(tag: Any, body: bytes, totals: Any, c: Any = complete) -> int:
                nonlocal hits
                seq = c(tag, body, totals)
                hits += seq > 0
                return seq
            s._templates.complete = counted
        try:
            for _ in range(2):  # the first of a kind builds its template, then it is filled
                for tag in tags():
                    for body in BODIES:
                        s._statement_done(tag, CC, body, {}, 0, 4)
        finally:
            writer.close()
        runs[compiled] = statement_records(tmp_path / str(compiled)), s.totals.to_dict()
    assert runs[True][1] == runs[False][1]
    assert runs[True][0] == runs[False][0]
    assert len(runs[True][0]) == 2 * len(tags()) * len(BODIES)
    # it took most of them: every counted tag past the first of its kind
    assert hits >= len(BODIES) // 2


def test_it_declines_without_appending_or_counting(tmp_path: Path) -> None:
    s, writer = session(tmp_path, compiled=True)
    complete = s._templates.complete
    assert complete is not None
    tag = StatementTag(None, 7, time.perf_counter(), "SELECT")
    try:
        assert complete(tag, b"SELECT 1\0", s.totals) == 0  # no template of its kind yet
        s._statement_done(tag, CC, b"SELECT 1\0", {}, 0, 1)  # the Python path builds it
        before, head = s.totals.to_dict(), writer.head[0]
        for declined, body in [(tag._replace(withheld=True), b"SELECT 1\0"),
                               (tag._replace(started=0.0), b"SELECT 1\0"),
                               (tag._replace(decision_seq=10**12), b"SELECT 1\0"),
                               (tag._replace(command="INSERT"), b"INSERT 0 1\0"),
                               (tag, b"CREATE TABLE\0"), (tag, b"SELECT 1000000000000\0"),
                               (tag, b"SELECT 1\n\0"), (tag, b"SELECT \xe9 1\0")]:
            assert complete(declined, body, s.totals) == 0, (declined, body)
        assert s.totals.to_dict() == before and writer.head[0] == head
        seq = complete(tag, b"SELECT 3\0", s.totals)
        assert seq == head + 1 == writer.head[0]
        assert s.totals.statements == before["statements"] + 1
        assert s.totals.allowed == before["allowed"] + 1
        assert s.totals.rows == before["rows"] + 3
    finally:
        writer.close()
    assert complete(tag, b"SELECT 1\0", s.totals) == 0  # closed: refused, the Python path
    assert s.totals.statements == before["statements"] + 1  # says why (and logs it)


def test_usual_ends_are_kept_then_sealed_before_the_session_end(tmp_path: Path) -> None:
    """The compiled usual end keeps its record unsealed (the writer thread seals a batch of
    them at once); whatever is appended next, the session's end included, comes after
    them in the chain, each keeps the time it ended, and the log verifies."""
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    s, writer = session(tmp_path / "log", True, Signer.from_pem_file(tmp_path / "k.pem"))
    tag = StatementTag(None, 7, time.perf_counter(), "SELECT")
    try:
        s._statement_done(tag, CC, b"SELECT 0\0", {}, 0, 0)  # builds the template
        for rows in range(1, 6):
            s._statement_done(tag, CC, f"SELECT {rows}\0".encode(), {}, 0, rows)
        assert 0 < writer.ledger.pending <= 5  # (fewer if the writer's timer took some)
        ended = now_ts()
        time.sleep(0.02)
        assert s.audit_ctx is not None
        writer.append(records.session_end(s.audit_ctx, reason="client", totals=s.totals))
    finally:
        writer.close()
    lines = [json.loads(line) for f in sorted((tmp_path / "log").glob("*.jsonl"))
             for line in f.read_text().splitlines()]
    kinds = [r["type"] for r in lines if r["type"] in ("statement", "session.end")]
    assert kinds == ["statement"] * 6 + ["session.end"]
    assert [r["rows"] for r in lines if r["type"] == "statement"] == [0, 1, 2, 3, 4, 5]
    stamps = [r["ts"] for r in lines if r["type"] == "statement"]
    assert stamps == sorted(stamps) and stamps[-1] <= ended  # when it ended, not sealed
    assert verify_dir(tmp_path / "log", load_public_key(tmp_path / "k.pub")).ok
