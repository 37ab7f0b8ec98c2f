"""The audit writer's ledger: its compiled class (`gateway/audit/_seal.c`) against the
reference (`gateway.audit.ledger.Ledger`), and the writer built on it.

Both must give the same answers (seq, 0 for a value no hole holds, -1 when refused), move
the chain and the counts the same way, queue lines that are the template's canonical
bytes chained onto the previous record, call ``on_due`` under the lock exactly when a
checkpoint or rotation is due, and leave everything as it was when they refuse.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import AuditUnavailable, AuditWriter, WriterOptions, canonical, generate_keypair
from gateway.audit import ledger as ledger_mod
from gateway.audit.canonical import GENESIS, chain_hash, hashed_body
from gateway.audit.chain import Chain, Sealed, seal_filled
from gateway.audit.checkpoint import Signer, load_public_key
from gateway.audit.filesink import FileSink
from gateway.audit.records import SessionTotals
from gateway.audit.template import RecordTemplate, TemplateCache, TemplateMismatch
from gateway.audit.verify import verify_dir
from gateway.masking.results import StatementTag

KINDS = ["python"] + (["compiled"] if ledger_mod._native is not None else [])


def statement(rows: Any = 0) -> dict[str, Any]:
    return {"type": "statement", "session": "s1", "outcome": "allowed", "rows": rows,
            "decision_seq": 1, "note": "100% of \"it\" — ünïcode"}


def make(kind: str, *, chain: Chain | None = None, every: int = 0, limit: int = 0,
         backlog: int = 1000, on_due: Any = None) -> tuple[Any, Chain, threading.Lock]:
    chain = chain or Chain("gw1")
    lock = threading.Lock()
    ledger = ledger_mod.new_ledger(chain, lock, on_due or (lambda: None), max_backlog=backlog,
                                   checkpoint_every=every, segment_limit=limit,
                                   compiled=kind == "compiled")
    assert (type(ledger) is ledger_mod.Ledger) == (kind == "python")
    ledger.open = True
    return ledger, chain, lock


def template(chain: Chain, **fields: Any) -> RecordTemplate:
    tpl = chain.template({**statement(), **fields}, ("rows", "decision_seq"))
    assert tpl is not None
    return tpl


def assert_chained(queue: list[Sealed], values: list[tuple[Any, ...]], tpl: RecordTemplate,
                   prev: str = GENESIS) -> None:
    """Each line is the template's bytes with its values, chained onto the one before."""
    for sealed, vals in zip(queue, values, strict=True):
        line, digest = seal_filled(prev, tpl.fill(sealed.seq, prev, sealed.ts, vals))
        assert sealed.line == line and sealed.hash == digest
        assert (sealed.type, sealed.session) == ("statement", "s1")
        prev = digest


@pytest.mark.parametrize("kind", KINDS)
def test_append_seals_queues_and_counts(kind: str) -> None:
    ledger, chain, _ = make(kind)
    tpl = template(chain)
    assert [ledger.append(tpl, (i, 7)) for i in range(3)] == [1, 2, 3]
    queue = ledger.take()
    assert ledger.queue == [] and isinstance(queue[0], Sealed)
    assert_chained(queue, [(i, 7) for i in range(3)], tpl)
    assert (chain.seq, chain.head) == (3, queue[-1].hash)
    assert ledger.segment_records == ledger.since_checkpoint == 3
    assert ledger.segment_bytes == sum(len(s.line) for s in queue)
    json.loads(queue[0].line)  # a JSON line


@pytest.mark.skipif(len(KINDS) < 2, reason="the compiled ledger is not built")
@pytest.mark.parametrize("session", ["s1", None])
def test_queued_records_stay_out_of_the_cyclic_gc(session: str | None) -> None:
    """A record waits up to a second in the queue: tracked, a busy gateway's records
    would reach the oldest generation and bring full collections of the heap with them."""
    ledger, chain, _ = make("compiled")
    tpl = template(chain, session=session)
    ledger.append(tpl, (1, 7))
    (sealed,) = ledger.take()
    assert sealed.session == session and not gc.is_tracked(sealed)
    # what may hold a container stays tracked: a Sealed made in Python, and pushed
    pushed = Sealed(2, "h", b"{}\n", "ts", "statement", "s1")
    ledger.push(pushed)
    assert gc.is_tracked(ledger.take()[0])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [-1, 10**12, 4111111111111111, 1.5, "7", b"7", [1]])
def test_a_value_no_hole_holds_appends_nothing(kind: str, bad: Any) -> None:
    ledger, chain, lock = make(kind)
    tpl = template(chain)
    ledger.append(tpl, (1, 1))
    before = (chain.seq, chain.head, len(ledger.queue), ledger.segment_bytes)
    assert ledger.append(tpl, (bad, 1)) == 0
    assert ledger.append(tpl, (1,)) == 0  # too few values
    assert (chain.seq, chain.head, len(ledger.queue), ledger.segment_bytes) == before
    assert not lock.locked()


@pytest.mark.parametrize("kind", KINDS)
def test_it_refuses_when_closed_or_the_backlog_is_full(kind: str) -> None:
    ledger, chain, lock = make(kind, backlog=2)
    tpl = template(chain)
    assert ledger.admit(5) == 0 and ledger.admit(0) == 1  # (1: that many are queued)
    assert ledger.append(tpl, (0, 0)) == 1 and ledger.append(tpl, (0, 0)) == 2
    assert ledger.admit(5) == -1  # what append answers now, appending nothing
    assert ledger.append(tpl, (0, 0)) == -1  # two records are not durable
    assert chain.seq == 2 and len(ledger.queue) == 2
    ledger.durable = 1
    assert ledger.admit(3) == 0 and ledger.admit(2) == 1 and chain.seq == 2
    assert ledger.append(tpl, (0, 0)) == 3
    ledger.open = False
    ledger.durable = 3
    assert ledger.admit(5) == -1
    assert ledger.append(tpl, (0, 0)) == -1 and chain.seq == 3
    assert not lock.locked()


@pytest.mark.parametrize("kind", KINDS)
def test_on_due_runs_under_the_lock_when_a_checkpoint_or_rotation_is_due(kind: str) -> None:
    calls: list[tuple[int, bool]] = []
    holder: dict[str, Any] = {}

    def on_due() -> None:
        led, lock = holder["ledger"], holder["lock"]
        calls.append((led.since_checkpoint, lock.locked()))
        if led.since_checkpoint >= 3:
            led.since_checkpoint = 0  # what the writer's checkpoint does

    ledger, chain, lock = make(kind, every=3, on_due=on_due)
    holder.update(ledger=ledger, lock=lock)
    tpl = template(chain)
    for i in range(7):
        ledger.append(tpl, (i, 0))
    assert calls == [(3, True), (3, True)]
    assert ledger.since_checkpoint == 1

    calls.clear()
    ledger, chain, lock = make(kind, limit=1, on_due=on_due)  # any record fills a segment
    holder.update(ledger=ledger, lock=lock)
    ledger.append(template(chain), (0, 0))
    assert calls == [(1, True)] and ledger.due


@pytest.mark.parametrize("kind", KINDS)
def test_an_error_in_on_due_propagates_with_the_lock_released(kind: str) -> None:
    def on_due() -> None:
        raise RuntimeError("boom")

    ledger, chain, lock = make(kind, every=1, on_due=on_due)
    with pytest.raises(RuntimeError, match="boom"):
        ledger.append(template(chain), (0, 0))
    assert not lock.locked()
    assert chain.seq == 1 and len(ledger.queue) == 1  # the record itself was appended


@pytest.mark.parametrize("kind", KINDS)
def test_a_template_of_another_chain_is_refused(kind: str) -> None:
    ledger, _, lock = make(kind)
    other = template(Chain("gw2"))
    with pytest.raises(ValueError, match="another chain"):
        ledger.append(other, (0, 0))
    assert not lock.locked() and ledger.queue == []


@pytest.mark.parametrize("kind", KINDS)
def test_push_queues_a_record_sealed_elsewhere(kind: str) -> None:
    ledger, chain, _ = make(kind)
    sealed = chain.seal(statement())
    ledger.push(sealed)
    assert ledger.queue == [sealed]
    assert (ledger.segment_bytes, ledger.segment_records) == (len(sealed.line), 1)
    with pytest.raises((TypeError, AttributeError)):
        ledger.push(("not", "sealed"))
    assert ledger.queue == [sealed]


ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.one_of(st.integers(0, 10**12 + 5), st.none(),
                                           st.booleans(), st.just(-3), st.just(2.5))),
    st.tuples(st.just("durable"), st.integers(0, 40)),
    st.tuples(st.just("open"), st.booleans()),
    st.tuples(st.just("take"), st.none()),
    st.tuples(st.just("admit"), st.integers(0, 6)),
    st.tuples(st.just("refuses"), st.none()),
), max_size=40)


@pytest.mark.skipif(len(KINDS) < 2, reason="the compiled ledger is not built")
@settings(max_examples=150, deadline=None)
@given(ops=ops, every=st.integers(0, 4), limit=st.sampled_from([0, 500, 2000]),
       backlog=st.integers(1, 12))
def test_the_compiled_ledger_answers_as_the_reference(ops: list[tuple[str, Any]], every: int,
                                                      limit: int, backlog: int) -> None:
    sides = []
    for kind in KINDS:
        due: list[int] = []
        holder: dict[str, Any] = {}

        def on_due(due: list[int] = due, holder: dict[str, Any] = holder) -> None:
            led = holder["ledger"]
            due.append(led.chain.seq)
            if 0 < led.checkpoint_every <= led.since_checkpoint:
                led.since_checkpoint = 0
            if 0 < led.segment_limit <= led.segment_bytes:
                led.segment_bytes = led.segment_records = 0

        ledger, chain, _ = make(kind, every=every, limit=limit, backlog=backlog,
                                on_due=on_due)
        holder["ledger"] = ledger
        tpl = template(chain)
        answers: list[Any] = []
        appended: list[Sealed] = []
        values: list[tuple[Any, ...]] = []
        for op, arg in ops:
            if op == "append":
                got = ledger.append(tpl, (arg, 3))
                answers.append(got)
                if got > 0:
                    values.append((arg, 3))
            elif op == "durable":
                ledger.durable = min(arg, chain.seq)
            elif op == "open":
                ledger.open = arg
            elif op == "admit":
                answers.append(("admit", ledger.admit(arg)))
            elif op == "refuses":
                answers.append(("refuses", ledger.refuses()))
            else:
                appended.extend(ledger.take())
        appended.extend(ledger.take())
        assert_chained(appended, values, tpl)
        sides.append((answers, due, [s.seq for s in appended], chain.seq,
                      ledger.segment_records, ledger.since_checkpoint, ledger.durable))
    assert sides[0] == sides[1]


# -- the writer on it --------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_templated_records_cross_checkpoints_and_segments_and_verify(
        tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "python":
        monkeypatch.setattr(ledger_mod, "_native", None)
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    logs = tmp_path / "log"
    w = AuditWriter(FileSink(logs, "gw1"), instance="gw1",
                    signer=Signer.from_pem_file(tmp_path / "k.pem"),
                    options=WriterOptions(checkpoint_every=7, checkpoint_seconds=0,
                                          segment_bytes=4096))
    w.start()
    cache = TemplateCache(w)
    for i in range(60):
        seq = cache.append("statement", lambda i=i: statement(i), ("rows",), (i,), wake=False)
        assert seq == w.head[0] or w.head[0] > seq  # a checkpoint may follow it
        if i % 9 == 0:
            assert w.write_through()
    assert w.close()
    lines = [json.loads(x) for f in sorted(logs.glob("audit-gw1-*.jsonl"))
             for x in f.read_text().splitlines()]
    assert [r["rows"] for r in lines if r["type"] == "statement"] == list(range(60))
    reasons = [r["reason"] for r in lines if r["type"] == "checkpoint"]
    assert reasons.count("count") >= 3 and reasons.count("rotation") >= 3
    assert len(list(logs.glob("audit-gw1-*.jsonl"))) >= 5
    report = verify_dir(logs, load_public_key(tmp_path / "k.pub"))
    assert report.ok, report.problem


def test_a_refused_fill_says_why(tmp_path: Path) -> None:
    w = AuditWriter(FileSink(tmp_path, "gw1"), instance="gw1",
                    options=WriterOptions(max_backlog=3, checkpoint_every=0,
                                          checkpoint_seconds=0))
    w.start()  # its segment header is one record not yet durable
    cache = TemplateCache(w)
    cache.append("k", statement, ("rows",), (1,), wake=False)
    assert cache.fill("k", (2,), wake=False) == 3
    with pytest.raises(AuditUnavailable, match="3 records wait for the sink"):
        cache.fill("k", (3,), wake=False)
    assert w.write_through()
    assert cache.fill("k", (3,), wake=False) == 4
    with pytest.raises(TemplateMismatch):
        w.append_template(cache._templates["k"][1], (-1,))
    assert w.close()
    with pytest.raises(AuditUnavailable, match="not open"):
        cache.fill("k", (4,), wake=False)


@pytest.mark.parametrize("kind", KINDS)
def test_fill_appends_only_the_template_held_for_that_key_and_pin(kind: str) -> None:
    ledger, chain, lock = make(kind, backlog=3)
    tpl, pin, other = template(chain), object(), object()
    templates: dict[Any, tuple[object, RecordTemplate | None]] = {
        "k": (pin, tpl), "none": (pin, None)}
    assert ledger.fill(templates, "missing", (1, 1), pin) == 0
    assert ledger.fill(templates, "k", (1, 1), other) == 0  # another object's entry
    assert ledger.fill(templates, "none", (1, 1), pin) == 0  # a shape with no template
    assert ledger.fill(templates, "k", (-1, 1), pin) == 0  # a value no hole holds
    assert chain.seq == 0 and ledger.queue == []
    assert [ledger.fill(templates, "k", (i, 2), pin) for i in range(4)] == [1, 2, 3, -1]
    assert_chained(ledger.take(), [(i, 2) for i in range(3)], tpl)
    with pytest.raises((TypeError, AttributeError)):
        ledger.fill([], "k", (1, 1), pin)
    assert not lock.locked()


# -- a statement's usual end, kept unsealed until the next settle (compiled only) ----------

USUAL = ("statement", "SELECT", "allowed", None, ())
compiled_only = pytest.mark.skipif(ledger_mod._native is None,
                                   reason="the compiled ledger is not built")


def usual_end(chain: Chain) -> dict[Any, Any]:
    """A session's template of its usual statement end, as TemplateCache holds it."""
    tpl = chain.template({"type": "statement", "session": "s1", "outcome": "allowed",
                          "command": "SELECT", "decision_seq": 1, "rows": 0,
                          "masked_values": 0, "duration_us": 0},
                         ("decision_seq", "rows", "masked_values", "duration_us"))
    assert tpl is not None
    return {USUAL: (None, tpl)}


def end(ledger: Any, templates: dict[Any, Any], decision: int, rows: int,
        totals: SessionTotals | None = None) -> int:
    tag = StatementTag(None, decision, time.perf_counter(), "SELECT")
    return int(ledger.complete(templates, tag, f"SELECT {rows}\0".encode(),
                               totals or SessionTotals()))


def assert_linked(queue: list[Sealed], first: int = 1, prev: str = GENESIS) -> None:
    """Consecutive seqs from `first`, each line hashed onto the one before."""
    for k, sealed in enumerate(queue):
        body = json.loads(sealed.line)
        assert (sealed.seq, body["seq"], body["prev"]) == (first + k, first + k, prev)
        assert chain_hash(prev, hashed_body(sealed.line.rstrip(b"\n"))[0]) == sealed.hash
        prev = sealed.hash


@compiled_only
def test_a_usual_end_is_kept_with_its_time_and_sealed_by_the_next_take() -> None:
    ledger, chain, lock = make("compiled")
    templates = usual_end(chain)
    before = canonical.now_ts()
    assert [end(ledger, templates, 7, k) for k in range(3)] == [1, 2, 3]  # its seq-to-be
    after = canonical.now_ts()
    # kept: nothing sealed, queued or counted towards a checkpoint yet; the backlog has them
    assert ledger.pending == 3 and ledger.queue == [] and chain.seq == 0
    assert ledger.since_checkpoint == 0 and ledger.admit(3) == 1
    time.sleep(0.01)
    queue = ledger.take()
    assert ledger.pending == 0 and not lock.locked()
    assert_linked(queue)
    assert [json.loads(s.line)["rows"] for s in queue] == [0, 1, 2]
    assert all(before <= s.ts <= after for s in queue)  # the time it ended, not the take's
    assert (chain.seq, chain.head, ledger.since_checkpoint) == (3, queue[-1].hash, 3)


@compiled_only
def test_kept_records_go_before_anything_sealed_after_them() -> None:
    ledger, chain, _ = make("compiled")
    templates = usual_end(chain)
    end(ledger, templates, 7, 1)
    assert ledger.append(template(chain), (0, 7)) == 2  # append settles first
    end(ledger, templates, 7, 2)
    # a record the writer seals itself must come after them (it calls settle() first):
    # push refuses one sealed past them
    with pytest.raises(RuntimeError, match="settle"):
        ledger.push(Sealed(3, "h", b"{}\n", "ts", "statement", "s1"))
    assert ledger.pending == 1
    queue = ledger.take()
    assert [json.loads(s.line)["type"] for s in queue] == ["statement"] * 3
    assert [s.seq for s in queue] == [1, 2, 3]
    end(ledger, templates, 7, 3)
    ledger.settle()
    ledger.push(chain.seal(statement()))
    assert_linked(queue + ledger.take())


@compiled_only
def test_kept_records_count_in_the_backlog() -> None:
    ledger, chain, _ = make("compiled", backlog=2)
    templates = usual_end(chain)
    assert end(ledger, templates, 7, 1) == 1 and end(ledger, templates, 7, 1) == 2
    totals = SessionTotals()
    assert end(ledger, templates, 7, 1, totals) == 0  # refused: the Python path says why
    assert totals.statements == 0 and ledger.pending == 2
    assert ledger.admit(10) == -1 and ledger.append(template(chain), (0, 0)) == -1
    assert ledger.pending == 0 and chain.seq == 2  # (the refused append settled them first)
    ledger.durable = 2
    assert ledger.admit(10) == 0
    assert end(ledger, templates, 7, 1) == 3
    ledger.open = False  # closed: refused, but what was kept is still sealed
    assert end(ledger, templates, 7, 1) == 0
    assert_linked(ledger.take())
    assert chain.seq == 3


@compiled_only
def test_a_checkpoint_comes_due_after_the_kept_record_that_makes_it_due() -> None:
    holder: dict[str, Any] = {}

    def on_due() -> None:  # what the writer's checkpoint does, under the lock
        led, ch = holder["ledger"], holder["chain"]
        led.settle()  # (inside the ledger's own settle: nothing to do)
        led.push(ch.seal({"type": "checkpoint", "head_seq": ch.seq}))
        led.since_checkpoint = 0

    ledger, chain, _ = make("compiled", every=2, on_due=on_due)
    holder.update(ledger=ledger, chain=chain)
    templates = usual_end(chain)
    for k in range(5):
        end(ledger, templates, 7, k)
    queue = ledger.take()
    assert [json.loads(s.line)["type"] for s in queue] == [
        "statement", "statement", "checkpoint", "statement", "statement", "checkpoint",
        "statement"]
    assert_linked(queue)


@compiled_only
def test_a_settle_that_fails_keeps_what_it_did_not_seal() -> None:
    fail = [True]

    def on_due() -> None:
        if fail[0]:
            fail[0] = False
            raise RuntimeError("boom")

    ledger, chain, lock = make("compiled", every=2, on_due=on_due)
    templates = usual_end(chain)
    for k in range(5):
        end(ledger, templates, 7, k)
    with pytest.raises(RuntimeError, match="boom"):
        ledger.take()
    # the second record made a checkpoint due and that failed: two sealed, three kept
    assert (chain.seq, ledger.pending, len(ledger.queue)) == (2, 3, 2)
    end(ledger, templates, 7, 5)  # kept after them
    assert ledger.pending == 4 and not lock.locked()
    ledger.since_checkpoint = -100  # (no checkpoint due again in this test)
    queue = ledger.take()
    assert [json.loads(s.line)["rows"] for s in queue] == [0, 1, 2, 3, 4, 5]
    assert_linked(queue)


@compiled_only
def test_kept_records_survive_another_thread_taking_meanwhile() -> None:
    """The event loop keeps records without the lock while the writer thread takes them
    (under it): every record is sealed once, in the order it was kept."""
    ledger, chain, lock = make("compiled", backlog=10**9)
    templates = usual_end(chain)
    taken: list[Sealed] = []
    done = threading.Event()

    def writer() -> None:
        while not done.is_set():
            with lock:
                taken.extend(ledger.take())

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for k in range(20_000):
            assert end(ledger, templates, 7, k % 1000) > 0
    finally:
        done.set()
        thread.join()
    taken.extend(ledger.take())
    assert [json.loads(s.line)["rows"] for s in taken] == [k % 1000 for k in range(20_000)]
    assert_linked(taken)


@compiled_only
def test_a_ledger_dropped_with_kept_records_frees_them() -> None:
    ledger, chain, _ = make("compiled")
    templates = usual_end(chain)
    end(ledger, templates, 7, 1)
    parts = templates[USUAL][1].parts
    refs = sys.getrefcount(parts)
    end(ledger, templates, 7, 1)
    held = sys.getrefcount(parts)
    assert held == refs + 1  # a kept record holds its template's parts
    del ledger
    gc.collect()
    freed = sys.getrefcount(parts)
    assert freed == refs - 1


@compiled_only
def test_an_uninitialised_ledger_refuses_every_call() -> None:
    """A Ledger made without __init__ holds no chain: each call says so (none reads it)."""
    native = ledger_mod._native
    assert native is not None
    bare = native.Ledger.__new__(native.Ledger)
    templates = usual_end(Chain("gw1"))
    tag = StatementTag(None, 7, time.perf_counter(), "SELECT")
    for call in (lambda: bare.complete(templates, tag, b"SELECT 1\0", SessionTotals()),
                 lambda: bare.append(templates[USUAL][1], (7, 1, 0, 0)),
                 bare.take, bare.settle, bare.refuses, lambda: bare.admit(1)):
        with pytest.raises(ValueError, match="not initialised"):
            call()


# -- kept records sealed in batches (the GIL let go while they are written and hashed) ---


def sessions_ends(chain: Chain, n: int) -> list[dict[Any, Any]]:
    """`n` sessions' templates of their usual end (a batch holds a few shapes at once)."""
    out = []
    for k in range(n):
        tpl = chain.template({"type": "statement", "session": f"s{k}", "outcome": "allowed",
                              "command": "SELECT", "decision_seq": 1, "rows": 0,
                              "masked_values": 0, "duration_us": 0},
                             ("decision_seq", "rows", "masked_values", "duration_us"))
        assert tpl is not None
        out.append({USUAL: (None, tpl)})
    return out


def native_ledger(chain: Chain, sha256: Any, *, limit: int = 0, every: int = 0,
                  on_due: Any = None) -> Any:
    native = ledger_mod._native
    assert native is not None
    ledger = native.Ledger(chain, threading.Lock(), on_due or (lambda: None), Sealed, sha256,
                           max_backlog=10**9, checkpoint_every=every, segment_limit=limit)
    ledger.open = True
    return ledger


@compiled_only
@pytest.mark.parametrize("sha256", ["openssl", "hashlib"])
def test_many_kept_records_of_many_shapes_are_sealed_in_order(sha256: str) -> None:
    """More records than a batch holds, of many sessions taking turns (each its own
    template): each sealed once, in the order kept, with its own session and values
    (OpenSSL's digest seals them in batches, hashlib's one by one: the same records)."""
    chain = Chain("gw1")
    ledger = native_ledger(chain, None if sha256 == "openssl" else __import__("hashlib").sha256)
    if sha256 == "openssl" and ledger_mod._SHA256 is not None:
        pytest.skip("no OpenSSL SHA-256 found in this process")
    shapes = sessions_ends(chain, 40)
    for k in range(1000):
        assert end(ledger, shapes[k % 40 if k < 600 else 0], k, k) == k + 1
    queue = ledger.take()
    assert ledger.pending == 0 and len(queue) == 1000
    assert_linked(queue)
    bodies = [json.loads(s.line) for s in queue]
    assert [(b["session"], b["decision_seq"], b["rows"]) for b in bodies] == [
        (f"s{k % 40 if k < 600 else 0}", k, k) for k in range(1000)]
    assert [s.session for s in queue] == [b["session"] for b in bodies]
    assert ledger.segment_bytes == sum(len(s.line) for s in queue)
    assert (chain.seq, chain.head, ledger.since_checkpoint) == (1000, queue[-1].hash, 1000)


@compiled_only
def test_a_rotation_comes_due_after_the_record_that_fills_the_segment() -> None:
    """A rotation by size inside a batch: on_due runs right after the record whose bytes
    reach the limit, not at the batch's end."""
    fired: list[int] = []
    holder: dict[str, Any] = {}

    def on_due() -> None:  # as a rotation: a new segment, counted from nothing
        fired.append(holder["chain"].seq)
        holder["ledger"].segment_bytes = 0

    chain = Chain("gw1")
    limit = 5000
    ledger = native_ledger(chain, ledger_mod._SHA256, limit=limit, on_due=on_due)
    holder.update(ledger=ledger, chain=chain)
    templates = usual_end(chain)
    for k in range(700):
        end(ledger, templates, 7, k)
    queue = ledger.take()
    assert_linked(queue)
    expected, size = [], 0
    for sealed in queue:
        size += len(sealed.line)
        if size >= limit:
            expected.append(sealed.seq)
            size = 0
    assert fired == expected and len(fired) > 40


class FlakyChain(Chain):
    """A chain whose seq cannot be moved while `stuck`."""

    __slots__ = ("stuck",)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "seq" and getattr(self, "stuck", False):
            raise OSError("the chain is stuck")
        super().__setattr__(name, value)


@compiled_only
def test_a_batch_that_cannot_move_the_chain_seals_none_of_its_records() -> None:
    chain = FlakyChain("gw1")
    ledger = native_ledger(chain, ledger_mod._SHA256)
    templates = usual_end(chain)
    for k in range(300):
        end(ledger, templates, 7, k)
    chain.stuck = True
    with pytest.raises(OSError, match="stuck"):
        ledger.take()
    assert (chain.seq, chain.head, ledger.pending, ledger.queue) == (0, GENESIS, 300, [])
    assert ledger.segment_bytes == ledger.since_checkpoint == 0
    chain.stuck = False
    queue = ledger.take()
    assert [json.loads(s.line)["rows"] for s in queue] == list(range(300))
    assert_linked(queue)
