"""Sans-IO tests of response tracking and result rewriting: bytes in, bytes out."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

import pytest
from conftest import MemoryTransport
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.enforce.roles import WRAPPED_AT, PortalRoles
from gateway.masking import results as results_module
from gateway.masking import rows as rows_module
from gateway.masking.methods import resolve
from gateway.masking.plan import ColumnMask, MaskPlan, with_row_limit
from gateway.masking.results import (
    SKIPPED,
    WATCH_ANSWERS,
    WATCH_ENDS,
    WATCH_IDLE,
    WATCH_ROWS,
    ResultMasker,
    StatementTag,
)
from gateway.masking.rows import (
    CopyOutMasker,
    UnsupportedCopy,
    field_masks,
    rewrite_data_row,
    rewrite_data_rows,
    rewrite_row_description,
)
from gateway.proxy.relay import OBSERVE
from gateway.wire import backend as be
from gateway.wire import frontend as fe
from gateway.wire.errors import ProtocolViolation
from gateway.wire.framing import RUN
from gateway.wire.pipeline import RUN_REST, ResponseTracker

LAST4 = ColumnMask("pan_last4", resolve("pan_last4", key=b""), "public.cards.pan")
NULL = ColumnMask("null", resolve("null", key=b""), "public.cards.cvv")
PAN = b"4111111111111111"


def body(msg: bytes) -> bytes:
    return msg[5:]


def field(name: str, table: int = 0, attnum: int = 0, type_oid: int = 25, fmt: int = 0
          ) -> be.RowDescriptionField:
    return be.RowDescriptionField(name, table, attnum, type_oid, -1, -1, fmt)


# -- ResponseTracker ----------------------------------------------------------------------------


def feed(tracker: ResponseTracker, types: str) -> list[tuple[str, bool, bool]]:
    out = []
    for t in types:
        a = tracker.response(ord(t))
        if a is not None:
            out.append((chr(a.request.type), a.ends_result, a.done))
    return out


def test_simple_query_with_two_statements() -> None:
    tr = ResponseTracker()
    req = tr.request(ord("Q"), ["a", "b"])
    assert req is not None and req.current_tag == "a"
    assert feed(tr, "TDDC") == [("Q", False, False)] * 3 + [("Q", True, False)]
    assert req.current_tag == "b"
    assert feed(tr, "CZ") == [("Q", True, False), ("Q", False, True)]
    assert len(tr) == 0


def test_extended_batch_and_error_skips_to_sync() -> None:
    tr = ResponseTracker()
    for t in "PBDES":
        tr.request(ord(t))
    assert [x[0] for x in feed(tr, "12TDDC")] == list("PBDEEE")
    assert len(tr) == 1  # only the Sync waits
    assert feed(tr, "Z") == [("S", False, True)]
    for t in "PBDEPBES":
        tr.request(ord(t))
    feed(tr, "1")
    feed(tr, "E")  # Bind failed: the server skips D E P B E up to the Sync
    assert len(tr) == 1
    feed(tr, "Z")
    assert len(tr) == 0


def test_describe_statement_and_suspended_portal() -> None:
    tr = ResponseTracker()
    for t in "PDS":
        tr.request(ord(t))
    assert feed(tr, "1tTZ")[-1] == ("S", False, True)
    for t in "BES":
        tr.request(ord(t))
    assert feed(tr, "2DDs")[-1] == ("E", True, True)
    feed(tr, "Z")
    for t in "ES":
        tr.request(ord(t))
    assert feed(tr, "DCZ")[1] == ("E", True, True)


def test_asynchronous_messages_answer_nothing() -> None:
    tr = ResponseTracker()
    assert tr.response(ord("N")) is None and tr.response(ord("A")) is None
    assert tr.response(ord("S")) is None
    assert tr.response(ord("E")) is None  # e.g. FATAL on termination while idle


@pytest.mark.parametrize(("requests", "answers"), [("", "T"), ("P", "2"), ("B", "Z"),
                                                    ("S", "C"), ("Q", "1")])
def test_an_answer_nothing_explains_raises(requests: str, answers: str) -> None:
    tr = ResponseTracker()
    for t in requests:
        tr.request(ord(t))
    with pytest.raises(ProtocolViolation):
        feed(tr, answers)


def test_a_barrier_answers_everything_up_to_its_last_ready_for_query() -> None:
    tr = ResponseTracker()
    assert tr.idle
    tr.barrier(1)
    tr.barrier(2)  # merged: one pending entry for three ReadyForQuery
    assert tr.idle and len(tr) == 1
    tr.request(ord("Q"), ["tagged"])
    assert not tr.idle
    answers = [tr.response(ord(t)) for t in "TDCZ12EZZ"]
    assert all(a is not None and a.tag is None for a in answers)
    assert [a.done for a in answers if a is not None] == [False] * 8 + [True]
    t = tr.response(ord("T"))  # after the third ReadyForQuery: the tagged Query's
    assert t is not None and t.tag == "tagged" and chr(t.request.type) == "Q"
    feed(tr, "CZ")
    assert len(tr) == 0 and tr.idle
    tr.barrier(1)
    done = tr.response(ord("Z"))
    assert done is not None and done.done and len(tr) == 0
    with pytest.raises(ProtocolViolation):
        tr.response(ord("Z"))  # nothing left to explain it
    tr.barrier(0)
    assert len(tr) == 0


def test_only_queries_pending_lets_a_query_be_followed_by_its_ends() -> None:
    tr = ResponseTracker()
    assert tr.only_queries()
    tr.barrier(1)
    tr.request(ord("Q"), ["tagged"])
    assert tr.only_queries()
    tr.request(ord("D"))  # a Describe alone: its RowDescription completes it
    assert not tr.only_queries()
    feed(tr, "ZCZ")  # the barrier's ReadyForQuery, then the Query's answer
    assert not tr.only_queries() and len(tr) == 1
    feed(tr, "T")
    assert tr.only_queries() and len(tr) == 0
    tr.request(ord("P"))
    feed(tr, "E")  # the server now skips to a Sync: whatever comes, follow it all
    assert tr.discarding and not tr.only_queries()
    rm = ResultMasker(lambda o, a: None)
    rm.forwarded(frames(fe.Query("select 1").encode()), {0: [StatementTag(command="A")]})
    assert rm.watch() == WATCH_ENDS
    rm.forwarded(frames(fe.Describe("S", "x").encode(), fe.Flush().encode()), {})
    assert rm.watch() == WATCH_ANSWERS


def test_untagged_batches_become_barriers_only_when_they_end_with_a_sync() -> None:
    rm = ResultMasker(lambda o, a: None)
    rm.forwarded(frames(fe.Query("select 1").encode()), {})
    rm.forwarded(frames(fe.Parse("", "select 2", ()).encode(), fe.Bind("", "", (), (), ()).encode(),
                        fe.Execute("", 0).encode(), fe.Sync().encode()), {})
    assert rm.idle and len(rm.tracker) == 1 and rm.watch() == WATCH_IDLE
    # no Sync at the end: its answers come before any ReadyForQuery, so each is followed
    rm.forwarded(frames(fe.Parse("", "select 3", ()).encode(), fe.Flush().encode()), {})
    assert not rm.idle and len(rm.tracker) == 2 and rm.watch() == WATCH_ANSWERS


def test_a_barrier_is_added_only_to_an_idle_tracker_that_is_not_skipping() -> None:
    tr = ResponseTracker()
    assert tr.barrier_if_idle(1) and tr.barrier_if_idle(2)
    assert len(tr) == 1 and tr._queue[0].statement == 3  # merged, as barrier() does
    tr.request(ord("P"))
    assert not tr.barrier_if_idle(1) and len(tr) == 2  # behind an open request: no
    feed(tr, "ZZZ")
    assert len(tr) == 1
    feed(tr, "E")  # the Parse failed: the server skips to a Sync not sent yet
    assert tr.discarding and not tr.barrier_if_idle(1) and len(tr) == 0
    tr.request(ord("S"))
    feed(tr, "Z")
    assert tr.barrier_if_idle(0) and len(tr) == 0


def test_requests_sent_after_an_error_are_skipped_up_to_the_sync() -> None:
    """The server discards every message after an extended-protocol error up to the next
    Sync, including those that reach it after the error: they get no answers."""
    tr = ResponseTracker()
    for t in "PBDE":
        tr.request(ord(t))
    feed(tr, "E")  # the Parse failed; no Sync was sent yet
    assert len(tr) == 0 and tr.discarding
    assert tr.request(ord("P")) is None and tr.request(ord("Q")) is None
    assert tr.request(ord("S")) is not None and not tr.discarding
    assert feed(tr, "Z") == [("S", False, True)]
    tr.request(ord("Q"))  # and then everything is answered again
    assert [x[0] for x in feed(tr, "TDCZ")] == list("QQQQ") and len(tr) == 0


def test_no_barrier_behind_open_requests_or_over_a_skippable_query() -> None:
    rm = ResultMasker(lambda o, a: None)
    # P B E without a Sync, then the Sync alone: an error in the first would make the
    # server skip to that Sync, which a barrier behind them would hide from the tracker
    rm.forwarded(frames(fe.Parse("", "select 1", ()).encode(),
                        fe.Bind("", "", (), (), ()).encode(), fe.Execute("", 0).encode()), {})
    rm.forwarded(frames(fe.Sync().encode()), {})
    assert [chr(r.type) for r in rm.tracker._queue] == list("PBES")
    assert rm.message(ord("E"), b"") is None  # the Parse failed: skip to the Sync
    assert rm.message(ord("Z"), b"I") is None and len(rm.tracker) == 0
    # a Query after an extended run, before any Sync, would be skipped after an error
    rm.forwarded(frames(fe.Parse("", "select 1", ()).encode(), fe.Query("select 2").encode(),
                        fe.Sync().encode()), {})
    assert [chr(r.type) for r in rm.tracker._queue] == list("PQS")


def test_a_masked_result_pipelined_behind_untagged_ones_is_masked() -> None:
    """Answers to untagged batches are not shown one by one (only ReadyForQuery); the
    masked statement sent behind them still gets its own result rewritten, and only it."""
    rm = ResultMasker(lambda o, a: None)
    raw = body(be.DataRow((PAN,)).encode())
    rm.forwarded(frames(fe.Query("select pan from t").encode()), {})
    rm.forwarded(frames(fe.Query("select pan from cards").encode()),
                 {0: [StatementTag(plan({0: LAST4}, 1))]})
    assert rm.needs_rows and not rm.idle and rm.watch() == WATCH_ROWS
    # the first (untagged) Query's answer: untouched
    for t, b in [("T", b""), ("D", raw), ("C", b"SELECT 1\0"), ("Z", b"I")]:
        assert rm.message(ord(t), b) is None
    desc = body(be.RowDescription((field("pan", 16400, 2),)).encode())
    assert rm.message(ord("T"), desc) is not None
    assert rm.message(ord("D"), raw) == be.DataRow((b"************1111",)).encode()
    rm.message(ord("C"), b"SELECT 1\0")
    rm.message(ord("Z"), b"I")
    assert rm.idle and not rm.needs_rows and rm.masked_values == 1
    assert rm.watch() == WATCH_IDLE


# -- rows ---------------------------------------------------------------------------------------


def plan(positions: dict[int, ColumnMask], width: int, by_column: dict | None = None
         ) -> MaskPlan:
    return MaskPlan(positions, by_column or {}, width)


def test_data_row_masks_only_its_fields_and_rebuilds_the_length() -> None:
    row = be.DataRow((b"1", PAN, None, b"x")).encode()
    counts: dict[str, int] = {}
    out = rewrite_data_row(body(row), {1: LAST4, 2: NULL, 3: NULL}, counts)
    assert be.decode_backend(out[0], out[5:]) == be.DataRow(
        (b"1", b"************1111", None, None))
    assert struct.unpack("!i", out[1:5])[0] == len(out) - 1
    assert counts == {"public.cards.pan": 1, "public.cards.cvv": 1}  # NULL isn't counted


def test_data_row_with_a_lying_field_count_is_an_error() -> None:
    row = body(be.DataRow((b"1", PAN)).encode()) + b"junk"
    with pytest.raises(ValueError):
        rewrite_data_row(row, {1: LAST4}, {})


def test_row_description_declares_masked_fields_text() -> None:
    t = be.RowDescription((field("id", 99, 1, 23, 1), field("pan", 99, 3, 1043, 1))).encode()
    out = rewrite_row_description(body(t), {1: LAST4})
    decoded = be.decode_backend(out[0], out[5:])
    assert decoded.fields[0] == field("id", 99, 1, 23, 1)
    assert decoded.fields[1] == be.RowDescriptionField("pan", 99, 3, 25, -1, -1, 1)


def test_field_masks_cross_check_with_the_servers_column_origin() -> None:
    t = be.RowDescription((field("id", 99, 1), field("alias", 99, 3))).encode()
    col = ("public", "cards", "pan")
    p = plan({}, 2, {col: LAST4})  # the analysis placed nothing; the server says pan
    masks = field_masks(p, body(t), lambda oid, att: col if (oid, att) == (99, 3) else None)
    assert masks == {1: LAST4}


def test_field_masks_mask_everything_when_the_shapes_disagree() -> None:
    t = be.RowDescription((field("a"), field("b"), field("c"))).encode()
    masks = field_masks(plan({0: LAST4}, 2), body(t), lambda o, a: None)
    assert set(masks) == {0, 1, 2} and all(m.method == "redact" for m in masks.values())


# -- COPY ---------------------------------------------------------------------------------------


def test_copy_text_with_escaped_delimiters_and_null() -> None:
    m = CopyOutMasker({1: LAST4}, {}, binary=False, counts=(counts := {}))
    out = m.feed(b"a\\tb\t" + PAN + b"\tz\n1\t\\N\tz\n")
    assert out == b"a\\tb\t************1111\tz\n1\t\\N\tz\n"
    assert counts == {"public.cards.pan": 1}


def test_copy_csv_quotes_newlines_and_header_across_messages() -> None:
    m = CopyOutMasker({1: LAST4}, {"format": "csv", "header": "true"}, binary=False, counts={})
    out = m.feed(b"holder,pan\n\"Smith, \"\"J\"\"\n2\",\"41111111")
    assert out == b"holder,pan\n"
    assert m.pending()
    out = m.feed(b"11111111\"\n")
    assert out == b"\"Smith, \"\"J\"\"\n2\",************1111\n"
    assert not m.pending()


def test_copy_binary_rows_split_anywhere() -> None:
    header = b"PGCOPY\n\xff\r\n\x00" + b"\0\0\0\0" + b"\0\0\0\0"
    row = struct.pack("!h", 2) + struct.pack("!i", 1) + b"7" + struct.pack("!i", 16) + PAN
    stream = header + row + row + struct.pack("!h", -1)
    m = CopyOutMasker({1: LAST4}, {"format": "binary"}, binary=True, counts={})
    out = b"".join(m.feed(stream[i:i + 7]) for i in range(0, len(stream), 7))
    assert PAN not in out and out.count(b"************1111") == 2
    assert out.startswith(header) and out.endswith(b"\xff\xff") and not m.pending()


def test_copy_options_that_cannot_be_parsed_are_refused() -> None:
    with pytest.raises(UnsupportedCopy):
        CopyOutMasker({0: LAST4}, {"format": "csv"}, binary=True, counts={})
    with pytest.raises(UnsupportedCopy):
        CopyOutMasker({0: LAST4}, {"delimiter": "ab"}, binary=False, counts={})


# -- ResultMasker: plans follow statements and portals ---------------------------------------------


def frames(*msgs: bytes) -> list[tuple[int, bytes]]:
    return [(m[0], m[5:]) for m in msgs]


def test_a_prepared_statements_plan_reaches_its_portals_rows() -> None:
    rm = ResultMasker(lambda o, a: None)
    p = plan({0: LAST4}, 1)
    batch = frames(fe.Parse("s1", "select pan from cards", ()).encode(),
                   fe.Bind("", "s1", (), (), (1,)).encode(),
                   fe.Execute("", 0).encode(), fe.Sync().encode())
    rm.forwarded(batch, {0: StatementTag(p)})
    assert rm.needs_rows
    outs = [rm.message(ord(t), b) for t, b in
            [("1", b""), ("2", b""), ("D", body(be.DataRow((PAN,)).encode())),
             ("C", b"SELECT 1\0"), ("Z", b"I")]]
    assert outs[2] == be.DataRow((b"************1111",)).encode()
    assert outs[0] is None and outs[3] is None
    assert not rm.needs_rows
    # a later Bind of the same statement in another batch is masked too
    rm.forwarded(frames(fe.Bind("p2", "s1", (), (), ()).encode(),
                        fe.Execute("p2", 1).encode(), fe.Sync().encode()), {})
    assert rm.message(ord("2"), b"") is None
    assert rm.message(ord("D"), body(be.DataRow((PAN,)).encode())) is not None
    rm.message(ord("s"), b"")
    rm.message(ord("Z"), b"I")
    assert rm.masked_values == 2


def run_of(*msgs: bytes) -> list[tuple[int, bytes]]:
    return frames(*msgs, fe.Sync().encode())


AUDITED = StatementTag(None, decision_seq=7, command="SELECT")


def test_a_lone_extended_run_of_an_audited_statement_may_be_followed_by_its_caller() -> None:
    rm = ResultMasker(lambda o, a: None)
    parse, bind = fe.Parse("s1", "select 1", ()).encode(), fe.Bind("p", "s1", (), (), ())
    assert rm.follow_alone(run_of(parse, bind.encode(), fe.Describe("P", "p").encode(),
                                  fe.Execute("p", 0).encode()), {0: AUDITED}) is AUDITED
    assert rm.empty()  # the caller follows it: nothing pending here
    # registered as forwarded() would: later runs of s1 (no Parse) are its executions
    for describe in ([], [fe.Describe("S", "s1").encode()], [fe.Describe("P", "q").encode()]):
        assert rm.follow_alone(run_of(fe.Bind("q", "s1", (), (), ()).encode(), *describe,
                                      fe.Execute("q", 0).encode()), {}) is AUDITED
    rm.forwarded(run_of(fe.Execute("q", 0).encode()), {})  # and so are its portals
    assert rm.tracker.pending()[0].tag is AUDITED


@pytest.mark.parametrize("case", [
    "row limit", "other portal described", "other statement described",
    "other portal executed", "other statement bound",
    "two executes", "flush", "no sync", "masked", "internal", "no record", "unknown statement",
    "pending", "untagged parse", "a message of the gateway's own", "malformed bind"])
def test_anything_else_is_left_to_the_masker_and_changes_nothing(case: str) -> None:
    rm = ResultMasker(lambda o, a: None)
    parse = fe.Parse("s1", "select 1", ()).encode()
    bind = fe.Bind("p", "s1", (), (), ()).encode()
    execute = fe.Execute("p", 0).encode()
    msgs, tag = [parse, bind, execute], AUDITED
    if case == "row limit":
        msgs[2] = fe.Execute("p", 10).encode()
    elif case == "other portal described":
        msgs.insert(2, fe.Describe("P", "other").encode())
    elif case == "other statement described":
        msgs.insert(2, fe.Describe("S", "s2").encode())
    elif case == "other portal executed":
        msgs[2] = fe.Execute("other", 0).encode()
    elif case == "other statement bound":
        msgs[1] = fe.Bind("p", "s2", (), (), ()).encode()
    elif case == "two executes":
        msgs.append(execute)
    elif case == "flush":
        msgs.append(fe.Flush().encode())
    elif case == "masked":
        tag = StatementTag(plan({0: LAST4}, 1), decision_seq=7)
    elif case == "internal":
        tag = StatementTag(decision_seq=7, internal=True)
    elif case == "no record":
        tag = StatementTag(None, decision_seq=None)
    elif case == "unknown statement":
        msgs = msgs[1:]
    elif case == "pending":
        rm.forwarded(frames(fe.Query("select 1").encode()), {0: [AUDITED]})
    elif case == "malformed bind":  # forwarded() says so, as it did before follow_alone
        msgs[1] = b"B\0\0\0\x05p"  # an unterminated portal name
    tags: dict[int, object] = {} if case in ("unknown statement", "untagged parse") \
        else {0: tag}
    if case == "a message of the gateway's own":  # (its answers are not the client's)
        tags[2] = StatementTag(internal=True)
    batch = frames(*msgs) if case == "no sync" else run_of(*msgs)
    pending = rm.tracker.pending()
    assert rm.follow_alone(batch, tags) is None
    assert rm.tracker.pending() == pending and not rm._statements and not rm._portals


def test_the_rest_of_a_run_takes_its_answers_and_ends_its_statement_once() -> None:
    """What the relay hands over when it stops following a run itself: whatever answers
    the rest of the run may come; the first end is the statement's, a later error (at
    commit) the run's."""
    t = ResponseTracker()
    t.request(RUN_REST, [AUDITED])
    answers = [t.response(ord(m)) for m in "12tTDDC"]
    assert [(a.ends_result, a.done, a.tag) for a in answers][-1] == (True, False, AUDITED)
    assert all(not a.ends_result and a.tag is AUDITED for a in answers[:-1])
    late = t.response(ord("E"))
    assert late is not None and late.ends_result and late.tag is None
    assert t.response(ord("Z")).done and t.empty()
    t.request(RUN_REST, [AUDITED])
    error = t.response(ord("E"))  # the Bind failed, say: that ends the statement
    assert error is not None and error.ends_result and error.tag is AUDITED
    assert not t.discarding  # its Sync is part of it: ReadyForQuery follows
    assert t.response(ord("Z")).done
    t.request(RUN_REST, [AUDITED])  # an INSERT's: its Describe answered by NoData
    assert [t.response(ord(m)).ends_result for m in "2nC"] == [False, False, True]
    assert t.response(ord("Z")).done
    t.request(RUN_REST, [AUDITED])
    with pytest.raises(ProtocolViolation, match="'s' while the rest of an extended-protocol"):
        t.response(ord("s"))  # PortalSuspended: it had no row limit


def recorder() -> tuple[ResultMasker, list[tuple[str | None, int]]]:
    ended: list[tuple[str | None, int]] = []
    rm = ResultMasker(lambda o, a: None,
                      on_result=lambda tag, t, b, counts: ended.append((tag.command, t)))
    return rm, ended


def test_every_answer_to_the_messages_of_a_db_role_wrap_is_dropped() -> None:
    """A db_role Bind and Execute go out between the gateway's own Parse/Bind/Execute/
    Close of SET ROLE and RESET ROLE (enforce/roles.py), tagged internal as the gate's
    take_tags tags them: each answer to those is dropped, ParseComplete included (a
    strict driver takes an extra one for the answer to a Parse it never sent), and the
    client's own answers pass, in order."""
    roles = PortalRoles()
    roles.parsed("", "report_reader")
    client = frames(fe.Parse("", "select 1 from reports", ()).encode(),
                    fe.Bind("", "", (), (), ()).encode(), fe.Describe("P", "").encode(),
                    fe.Execute("", 0).encode(), fe.Sync().encode())
    sent: list[tuple[int, bytes]] = []
    tags: dict[int, StatementTag] = {}
    for i, (t, b) in enumerate(client):
        added = roles.wrap(t, b) if i in (1, 3) else None
        for k, f in enumerate(added or [(t, b)]):
            if added is not None and k != WRAPPED_AT:
                tags[len(sent)] = StatementTag(internal=True)
            sent.append(f)
    rm = ResultMasker(lambda o, a: None)
    rm.forwarded(sent, tags)
    internal = "12C3"  # to each added Parse, Bind, Execute (SET), Close
    answers = ["1", internal, "2", internal, "T", internal, "D", "C", internal, "Z"]
    kept = "".join(t for t in "".join(answers)
                   if rm.message(ord(t), b"SET\0" if t == "C" else b"") is None)
    assert kept == "12TDCZ"
    assert rm.idle and len(rm.tracker) == 0
    assert not rm._inflight and not rm._deferred  # (nothing of the gateway's own left)


def test_statements_of_a_query_string_after_an_error_end_as_skipped() -> None:
    """PostgreSQL runs nothing of a query string after its first error: every statement
    after the failed one ends there (SKIPPED), so each decision gets its outcome."""
    rm, ended = recorder()
    tags = [StatementTag(command="A"), None, StatementTag(command="C"),
            StatementTag(command="X"), StatementTag(command="D", internal=True),
            StatementTag(command="E")]
    rm.forwarded(frames(fe.Query("select 1; select 1; select 1/0; select 3; reset role; "
                                 "select 2").encode()), {0: tags})
    for t, b in [("T", b""), ("D", b""), ("C", b"SELECT 1\0"), ("C", b"SELECT 1\0"),
                 ("E", b""), ("Z", b"I")]:
        rm.message(ord(t), b)
    # B was not followed (no tag), D is the gateway's own (internal): no record for them
    assert ended == [("A", ord("C")), ("C", ord("E")), ("X", SKIPPED), ("E", SKIPPED)]
    assert rm.idle and len(rm.tracker) == 0


def test_executes_an_extended_error_skips_end_as_skipped_and_are_not_followed_on() -> None:
    """An error in an extended-protocol run makes the server skip to the Sync: the
    Executes it skips end as SKIPPED, and nothing keeps waiting for their rows."""
    rm, ended = recorder()
    masked = StatementTag(plan({0: LAST4}, 1), command="B")
    batch = frames(fe.Parse("s1", "select 1/0", ()).encode(),
                   fe.Bind("", "s1", (), (), ()).encode(), fe.Execute("", 0).encode(),
                   fe.Parse("s2", "select pan from cards", ()).encode(),
                   fe.Bind("", "s2", (), (), ()).encode(), fe.Execute("", 0).encode(),
                   fe.Sync().encode())
    rm.forwarded(batch, {0: StatementTag(command="A"), 3: masked})
    assert rm.needs_rows
    for t in "12E":
        rm.message(ord(t), b"")
    assert ended == [("A", ord("E")), ("B", SKIPPED)]
    rm.message(ord("Z"), b"I")
    assert rm.idle and not rm.needs_rows  # the skipped masked Execute is not waited for


def test_an_error_before_its_execute_is_that_statements_and_the_rest_are_skipped() -> None:
    """A Bind can fail (a constant folded with its parameters, say): the statement it
    binds failed, so its Execute ends with that error; the next statement's is skipped."""
    rm, ended = recorder()
    batch = frames(fe.Parse("s1", "select $1::int / 0", ()).encode(),
                   fe.Bind("", "s1", (), (b"1",), ()).encode(), fe.Execute("", 0).encode(),
                   fe.Parse("s2", "select 2", ()).encode(),
                   fe.Bind("", "s2", (), (), ()).encode(), fe.Execute("", 0).encode(),
                   fe.Sync().encode())
    rm.forwarded(batch, {0: StatementTag(command="A"), 3: StatementTag(command="B")})
    rm.message(ord("1"), b"")
    rm.message(ord("E"), b"22012")  # answers the Bind
    assert ended == [("A", ord("E")), ("B", SKIPPED)]
    rm.message(ord("Z"), b"I")
    assert rm.idle and len(rm.tracker) == 0


def test_unfinished_names_every_statement_whose_result_has_not_ended() -> None:
    rm, _ = recorder()
    rm.forwarded(frames(fe.Query("select 1; select pg_sleep(9); reset role; select 2")
                        .encode()),
                 {0: [StatementTag(command="A"), StatementTag(command="B"),
                      StatementTag(command="R", internal=True), StatementTag(command="C")]})
    rm.forwarded(frames(fe.Parse("s1", "select 3", ()).encode(),
                        fe.Bind("", "s1", (), (), ()).encode(), fe.Execute("", 0).encode(),
                        fe.Sync().encode()), {0: StatementTag(command="D")})
    assert [t.command for t in rm.unfinished()] == ["A", "B", "C", "D"]
    rm.message(ord("C"), b"SELECT 1\0")  # A is done; B runs
    assert [t.command for t in rm.unfinished()] == ["B", "C", "D"]
    rm.message(ord("E"), b"57014")  # B fails: it ended, and C will not run (skipped)
    assert [t.command for t in rm.unfinished()] == ["D"]


def test_a_decided_parse_that_fails_ends_its_statement_once() -> None:
    """asyncpg prepares (Parse, Describe, Sync) before it ever executes: an error answering
    the Parse (an operator that does not exist, say) is that statement's outcome, and
    its Executes skipped in the same run add nothing; a later statement's are skipped."""
    rm, ended = recorder()
    a, b = StatementTag(command="A", decision_seq=1), StatementTag(command="B", decision_seq=2)
    rm.forwarded(frames(fe.Parse("a", "select 1 + 'x'::text", ()).encode(),
                        fe.Describe("S", "a").encode(), fe.Sync().encode()), {0: a})
    rm.message(ord("E"), b"42883")
    rm.message(ord("Z"), b"I")
    assert ended == [("A", ord("E"))] and rm.idle
    ended.clear()
    rm.forwarded(frames(fe.Parse("", "select 1 + 'x'::text", ()).encode(),
                        fe.Bind("", "", (), (), ()).encode(), fe.Execute("", 0).encode(),
                        fe.Parse("b", "select 2", ()).encode(),
                        fe.Bind("", "b", (), (), ()).encode(), fe.Execute("", 0).encode(),
                        fe.Sync().encode()), {0: a, 3: b})
    rm.message(ord("E"), b"42883")
    rm.message(ord("Z"), b"I")
    assert ended == [("A", ord("E")), ("B", SKIPPED)] and rm.idle
    ended.clear()
    rm.forwarded(frames(fe.Parse("", "select 2", ()).encode(),
                        fe.Bind("", "", (), (), ()).encode(), fe.Execute("", 0).encode(),
                        fe.Sync().encode()), {0: b})
    for t, body_ in [("1", b""), ("2", b""), ("C", b"SELECT 1\0"), ("Z", b"I")]:
        rm.message(ord(t), body_)
    assert ended == [("B", ord("C"))] and rm.idle and len(rm.tracker) == 0


def test_executes_sent_while_the_server_skips_to_a_sync_end_as_skipped() -> None:
    rm, ended = recorder()
    rm.forwarded(frames(fe.Parse("s1", "select 1", ()).encode(),
                        fe.Bind("", "s1", (), (), ()).encode(), fe.Execute("", 0).encode()),
                 {0: StatementTag(command="A")})
    rm.message(ord("E"), b"")  # the Parse failed, no Sync sent yet: skip to the next one
    assert ended == [("A", ord("E"))] and rm.tracker.discarding  # A failed at its Parse
    rm.forwarded(frames(fe.Parse("s2", "select 2", ()).encode(),
                        fe.Bind("", "s2", (), (), ()).encode(), fe.Execute("", 0).encode(),
                        fe.Sync().encode()), {0: StatementTag(command="B")})
    assert ended == [("A", ord("E")), ("B", SKIPPED)]
    rm.message(ord("Z"), b"I")
    assert rm.idle and len(rm.tracker) == 0


# -- the batched hot path equals the per-row definition -----------------------------------------


def messages(stream: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of each whole message in `stream`."""
    out, pos = [], 0
    while pos < len(stream):
        (length,) = struct.unpack_from("!i", stream, pos + 1)
        out.append((stream[pos], stream[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def _rows_one_by_one(raw: bytes, masks: dict, counts: dict) -> bytes:
    return b"".join(rewrite_data_row(body, masks, counts) for _, body in messages(raw))


@pytest.mark.parametrize("masks", [
    {2: LAST4},
    {0: LAST4},
    {1: LAST4},
    {3: LAST4},
    {1: NULL, 2: LAST4},
    {2: ColumnMask("redact", resolve("redact", key=b""), "x")},
    {1: ColumnMask("hash", resolve("hash", key=b"k" * 16), "h"), 3: LAST4},
])
def test_rewrite_data_rows_matches_the_per_row_rewrite(masks: dict) -> None:
    values = [PAN, b"378282246310005", None, b"", b"not a pan", b"4111-1111-1111-1111"]
    raw = b"".join(
        be.DataRow((str(i).encode(), values[i % 6], values[(i + 1) % 6], b"tail")).encode()
        for i in range(60))
    batched: dict[str, int] = {}
    single: dict[str, int] = {}
    assert rewrite_data_rows(raw, masks, batched) == _rows_one_by_one(raw, masks, single)
    assert batched == single


def test_rewrite_data_rows_refuses_rows_shorter_than_the_masks() -> None:
    raw = be.DataRow((b"1",)).encode()
    with pytest.raises(ValueError):
        rewrite_data_rows(raw, {2: LAST4}, {})
    for index in (0, 1):  # a row of no field at all, last in the buffer or not
        empty = be.DataRow(()).encode()
        for raw in (empty, empty + be.DataRow((PAN, PAN)).encode()):
            with pytest.raises(ValueError):
                rewrite_data_rows(raw, {index: LAST4}, {})
    lying = bytearray(be.DataRow((b"1", PAN)).encode())
    struct.pack_into("!i", lying, 12, 999)  # the pan field claims 999 bytes
    with pytest.raises(ValueError):
        rewrite_data_rows(bytes(lying), {1: LAST4}, {})


def test_observer_coalesces_row_runs_at_any_split() -> None:
    from gateway.wire.framing import RUN, BackendObserver

    rows = [be.DataRow((str(i).encode(), PAN)).encode() for i in range(5)]
    stream = (be.RowDescription((field("id"), field("pan"))).encode() + b"".join(rows)
              + be.CommandComplete("SELECT 5").encode() + be.ReadyForQuery("I").encode())
    for cut in range(1, len(stream)):
        ob = BackendObserver(be.BACKEND_TYPES, frozenset(b"TDCZ"), 1 << 20)
        ob.coalesce = frozenset(b"D")
        forwarded, seen_rows, kinds, counted = b"", b"", [], 0
        for part in (stream[:cut], stream[cut:]):
            fwd, events = ob.relay(part)
            forwarded += fwd
            for t, body, start, end, n in events:
                kinds.append(t)
                counted += n
                if t == RUN | ord("D"):
                    assert fwd[start:end] == body
                    seen_rows += body
        assert forwarded == stream and seen_rows == b"".join(rows) and counted == len(rows)
        assert kinds[0] == ord("T") and kinds[-2:] == [ord("C"), ord("Z")]


def test_portal_roles_wrap_binds_and_executes_of_role_statements_only() -> None:
    from gateway.enforce.roles import PortalRoles

    roles = PortalRoles()
    roles.parsed("s1", "report_reader")
    roles.parsed("s2", None)
    bind = fe.Bind("p1", "s1", (), (), ()).encode()
    wrapped = roles.wrap(bind[0], bind[5:])
    assert wrapped is not None and len(wrapped) == 9 and wrapped[4] == (bind[0], bind[5:])
    set_parse = fe.decode_frontend(*wrapped[0])
    assert set_parse.sql == 'SET ROLE "report_reader"'
    assert fe.decode_frontend(*wrapped[5]).sql == "RESET ROLE"
    assert {type(fe.decode_frontend(*f)).__name__ for f in wrapped} == {
        "Parse", "Bind", "Execute", "Close"}
    execute = fe.Execute("p1", 10).encode()
    assert roles.wrap(execute[0], execute[5:]) is not None
    other = fe.Bind("", "s2", (), (), ()).encode()
    assert roles.wrap(other[0], other[5:]) is None  # a statement without a role
    close = fe.Close("P", "p1").encode()
    roles.wrap(close[0], close[5:])
    assert roles.wrap(execute[0], execute[5:]) is None  # the portal is gone
    tricky = PortalRoles()
    tricky.parsed("s", 'we"ird')
    b = fe.Bind("", "s", (), (), ()).encode()
    assert fe.decode_frontend(*tricky.wrap(b[0], b[5:])[0]).sql == 'SET ROLE "we""ird"'


def test_rows_walked_and_masked_in_one_pass_at_any_split() -> None:
    """The relay's upstream loop with `walk_run`: a masked result split anywhere comes out
    as the per-row rewrite says, every later chunk's rows walked once."""
    from gateway.proxy.relay import _splice
    from gateway.wire.framing import RUN, WALKED, BackendObserver

    values = [PAN, b"5555555555554444", None, b"378282246310005", b""]
    rows = [be.DataRow((str(i).encode(), b"x" * (i % 7), values[i % 5])).encode()
            for i in range(40)]
    stream = (be.RowDescription((field("id"), field("note"), field("pan"))).encode()
              + b"".join(rows) + be.CommandComplete("SELECT 40").encode()
              + be.ReadyForQuery("I").encode())
    expected_rows = _rows_one_by_one(b"".join(rows), {2: LAST4}, {})
    for cut in [*range(1, 120), *range(len(stream) - 40, len(stream))]:
        for size in (7, 64, 1000):
            rm = ResultMasker(lambda o, a: None)
            rm.forwarded(frames(fe.Query("select id, note, pan from cards").encode()),
                         {0: [StatementTag(plan({2: LAST4}, 3))]})
            ob = BackendObserver(be.BACKEND_TYPES, frozenset(b"TDCZ"), 1 << 20)
            ob.coalesce = frozenset(b"D")
            ob.walk_run = rm.walk_rows
            out, walked, counted = b"", 0, 0
            chunks = [stream[:cut]] + [stream[i:i + size] for i in range(cut, len(stream), size)]
            for chunk in chunks:
                fwd, events = ob.relay(chunk)
                swaps = []
                for t, b, start, end, n in events:
                    counted += n
                    if t & WALKED:
                        assert t == RUN | WALKED | ord("D")
                        walked += 1
                        swaps.append((start, end, b))
                    new = rm.message(t, b)
                    if new is not None:
                        swaps.append((start, end, new))
                out += _splice(fwd, swaps) if swaps else fwd
            assert PAN not in out
            assert out == stream.replace(b"".join(rows), expected_rows), (cut, size)
            assert rm.masked_values == 32  # the non-NULL pans
            assert counted == 40  # walked or not, every row once
            if size == 7 and cut < 40:
                assert walked  # rows after the RowDescription's chunk went the one-pass way


WALKERS = ["walk_one_column_py", "walk_columns_py"] + (
    ["walk_columns_native"] if rows_module._native else [])


@pytest.mark.parametrize("walker", WALKERS)
def test_walked_rows_stop_where_the_run_stops_and_refuse_what_the_masks_do_not_fit(
        walker: str) -> None:
    def walk_one_column(data: bytes, pos: int, index: int, mask: ColumnMask,
                        counts: dict[str, int], max_size: int = 0x7FFFFFFF
                        ) -> tuple[int, bytes]:
        if walker == "walk_one_column_py":
            return rows_module.walk_one_column_py(data, pos, index, mask, counts, max_size)
        return getattr(rows_module, walker)(data, pos, [(index, mask)], counts, max_size)

    rows = be.DataRow((b"1", PAN)).encode() + be.DataRow((b"2", PAN)).encode()
    tail = be.CommandComplete("SELECT 2").encode()
    counts: dict[str, int] = {}
    end, out = walk_one_column(rows + tail, 0, 1, LAST4, counts)
    assert end == len(rows) and PAN not in out and len(out) == len(rows)
    assert counts == {"public.cards.pan": 2}
    third = be.DataRow((b"3", PAN)).encode()
    end, out = walk_one_column(rows + third[:9], 0, 1, LAST4, {})  # an incomplete row
    assert end == len(rows)
    with pytest.raises(ValueError):  # fewer fields than the masks
        walk_one_column(be.DataRow((b"1",)).encode(), 0, 1, LAST4, {})
    with pytest.raises(ValueError):  # a row over the size limit
        walk_one_column(rows, 0, 1, LAST4, {}, max_size=8)
    with pytest.raises(ValueError):  # a whole row too short to hold any field, at the end
        walk_one_column(rows + be.DataRow(()).encode(), 0, 1, LAST4, {})
    prefix = be.RowDescription(()).encode()  # a walk from inside a buffer leaves its start
    end, out = walk_one_column(prefix + rows + tail, len(prefix), 1, LAST4, {})
    assert end == len(prefix) + len(rows)
    assert out == walk_one_column(rows, 0, 1, LAST4, {})[1]


# -- every followed statement ends exactly once, whatever fails ---------------------------------


def _unmasked(tag: object) -> bool:
    return tag is None or getattr(tag, "plan", None) is None


def _server(requests: list[tuple[str, object]], fails: list[bool]) -> list[tuple[str, int]]:
    """What PostgreSQL answers to `requests` (in order) when the ones marked in `fails`
    fail: (message type, index of the request it answers). An extended-protocol error
    skips everything up to the next Sync; an error in a query string ends that string.
    A statement with nothing to mask returns a row (its description, for a Query or a
    Describe, first), also before an error in its Execute or in its statement of a query
    string; masked ones return none here (rows need real bodies). A query
    string failing past its last statement fails as its implicit transaction commits (a
    deferred constraint): an error after every statement's CommandComplete. A statement
    exists once its Parse succeeded: a Bind of one whose Parse failed or was skipped
    fails."""
    out: list[tuple[str, int]] = []
    skipping = False
    defined: set[str] = set()
    for i, ((kind, req), fail) in enumerate(zip(requests, fails, strict=True)):
        if skipping and kind != "S":
            continue
        if kind == "B" and req.name not in defined:  # type: ignore[attr-defined]
            fail = True
        elif kind == "P" and not fail:
            defined.add(req.name)  # type: ignore[attr-defined]
        if kind == "S":
            out.append(("Z", i))
            skipping = False
        elif kind == "Q":
            for n, tag in enumerate(req.tags):  # type: ignore[attr-defined]
                if _unmasked(tag):
                    out += [("T", i), ("D", i)]
                if fail and n == req.fails_at:  # type: ignore[attr-defined]
                    out.append(("E", i))
                    break
                out.append(("C", i))
            else:
                if fail and req.fails_at == len(req.tags):  # type: ignore[attr-defined]
                    out.append(("E", i))
            out.append(("Z", i))
        elif fail:
            if kind == "E" and _unmasked(req.tag):  # type: ignore[attr-defined]
                out.append(("D", i))
            out.append(("E", i))
            skipping = True
        elif kind == "D":
            if req.describe == "S":  # type: ignore[attr-defined]
                out.append(("t", i))  # the statement's parameters first
            out.append(("T" if _unmasked(req.tag) else "n", i))  # type: ignore[attr-defined]
        elif kind == "E":
            if _unmasked(req.tag):  # type: ignore[attr-defined]
                out.append(("D", i))
            out.append(("C", i))
        else:
            out.append(({"P": "1", "B": "2"}[kind], i))
    return out


class _Unit:
    """One statement sent by the extended protocol (Parse, Bind, [Describe], Execute), or
    one more execution of an earlier one (Bind, [Describe], Execute)."""

    def __init__(self, name: str, tag: StatementTag | None, describe: str) -> None:
        self.name = name
        self.tag = tag
        self.describe = describe  # "", or what it describes: "P" (the portal) or "S"


class _Query:
    def __init__(self, tags: list[StatementTag | None], fails_at: int) -> None:
        self.tags = tags
        self.fails_at = fails_at


_Batch = tuple[list[bytes], dict[int, object]]


def _execution(u: _Unit, frames_: list[bytes], requests: list[tuple[str, object]]) -> None:
    """A unit's Bind, [Describe] and Execute: the messages, and the server's requests."""
    frames_.append(fe.Bind("", u.name, (), (), ()).encode())
    requests.append(("B", u))
    if u.describe:
        frames_.append(fe.Describe(u.describe, "" if u.describe == "P" else u.name).encode())
        requests.append(("D", u))
    frames_.append(fe.Execute("", 0).encode())
    requests.append(("E", u))


def _case(data: st.DataObject) -> tuple[list[StatementTag], list[_Batch],
                                        list[tuple[str, int]], list[tuple[bool, int]]]:
    """A random session: the tags of its followed statements (once per execution), its
    batches (frames and tags), the server's answers, and after each batch whether the
    answers sent so far arrive then and in how many buffers. Batches of one untagged
    Query are among them, and executions of statements parsed in earlier batches."""
    tags: list[StatementTag] = []
    parsed: list[_Unit] = []
    synced = True  # whether the batch before ended with a Sync

    def new_tag(n: int) -> StatementTag | None:
        if not data.draw(st.booleans(), "followed"):
            return None
        masked = data.draw(st.booleans(), "masked")
        tag = StatementTag(plan({0: LAST4}, 1) if masked else None, decision_seq=n,
                           command=f"c{n}")
        tags.append(tag)
        return tag

    requests: list[tuple[str, object]] = []
    batches: list[tuple[list[bytes], dict[int, object]]] = []
    for n in range(data.draw(st.integers(1, 6), "units")):
        frames_: list[bytes] = []
        batch_tags: dict[int, object] = {}
        kind = data.draw(st.sampled_from(["query", "plain query", "extended", "execute"]),
                         "kind")
        # A statement parsed before, in a run of its own (Bind, Execute, Sync): an error
        # answering a Parse or Describe ends the statement and absorbs its Executes in
        # the same run (ResultMasker._skip_after), so the run is one execution.
        executes = kind == "execute" and bool(parsed) and synced
        if executes:
            earlier = data.draw(st.sampled_from(parsed), "statement")
            u = _Unit(earlier.name, earlier.tag, data.draw(st.sampled_from(["", "P", "S"])))
            if u.tag is not None:
                tags.append(u.tag)
            _execution(u, frames_, requests)
        elif kind not in ("extended", "execute"):  # plain: nothing follows its statements
            statements = data.draw(st.integers(1, 3))
            q = _Query([new_tag(100 * n + i) if kind == "query" else None
                        for i in range(statements)],
                       data.draw(st.integers(0, statements)))  # (the last: at commit)
            batch_tags[0] = q.tags
            frames_.append(fe.Query("select 1").encode())
            requests.append(("Q", q))
        else:
            u = _Unit(f"s{n}", new_tag(n), data.draw(st.sampled_from(["", "P", "S"])))
            parsed.append(u)
            batch_tags[0] = u.tag
            frames_.append(fe.Parse(u.name, "select 1", ()).encode())
            requests.append(("P", u))
            _execution(u, frames_, requests)
        synced = executes or data.draw(st.booleans(), "sync")
        if synced:
            frames_.append(fe.Sync().encode())
            requests.append(("S", None))
        batches.append((frames_, {k: v for k, v in batch_tags.items() if v is not None}))
    batches.append(([fe.Sync().encode()], {}))
    requests.append(("S", None))
    fails = [data.draw(st.booleans(), "fails") if k != "S" else False for k, _ in requests]
    answers = _server(requests, fails)
    # after each batch: how many of the answers sent so far arrive now, in how many buffers
    arrivals = [(data.draw(st.booleans(), "answer now"), data.draw(st.integers(1, 3), "cuts"))
                for _ in batches]
    return tags, batches, answers, arrivals


@given(st.data())
@settings(max_examples=int(os.environ.get("PGWARDEN_PIPELINE_EXAMPLES", "300")), deadline=None)
def test_every_followed_statement_ends_once_and_nothing_stays_counted(
        data: st.DataObject) -> None:
    """Also when, as in the relay, the masker is shown only what its `watch()` asked for
    before each upstream buffer: every statement ends the same way as when it is shown
    every message."""
    tags, batches, answers, arrivals = _case(data)

    def run(observed: bool) -> dict[int, list[int]]:
        rm, _ = recorder()
        ends: dict[int, list[int]] = {}
        rm.on_result = lambda tag, t, b, c: ends.setdefault(id(tag), []).append(t)
        watching = WATCH_IDLE
        pending = list(answers)

        def buffer(msgs: list[tuple[str, int]]) -> None:
            nonlocal watching
            for mtype, _i in msgs:
                if not observed or ord(mtype) in OBSERVE[watching]:
                    rm.message(ord(mtype), PAN_ROW if mtype == "D" else b"")
            watching = rm.watch()  # as the relay does after each buffer

        sent = 0
        for (frames_, batch_tags), (now, cuts) in zip(batches, arrivals, strict=True):
            rm.forwarded(frames(*frames_), batch_tags)
            watching = max(watching, rm.watch())  # before any answer to what was sent
            sent += len(frames_)
            if now:  # what the server answered so far, in `cuts` buffers
                ready = [a for a in pending if a[1] < sent]
                del pending[:len(ready)]
                step = -(-len(ready) // cuts) or 1
                for k in range(0, len(ready), step):
                    buffer(ready[k : k + step])
        buffer(pending)
        assert len(rm.tracker) == 0 and rm.idle and not rm.needs_rows
        assert rm._tracked == 0 and rm._planned == 0
        for tag in tags:  # each execution of a followed statement: one end (an error, a
            # result or a skip)
            runs = sum(t is tag for t in tags)
            assert len(ends.get(id(tag), [])) == runs, (tag.command, ends.get(id(tag)))
        return ends

    assert run(observed=True) == run(observed=False)


PAN_ROW = body(be.DataRow((b"1",)).encode())  # a row of an unmasked result


# -- the relay follows the same statements, counting what nothing follows itself -------------


def _schedule(batches: list[_Batch], answers: list[tuple[str, int]],
              arrivals: list[tuple[bool, int]]
              ) -> list[tuple[_Batch | None, list[tuple[str, int]]]]:
    """The order in which a case's batches are forwarded and its answers arrive: each
    batch with the buffers that arrive after it (a buffer list per step, a batch or None)."""
    steps: list[tuple[_Batch | None, list[tuple[str, int]]]] = []
    pending = list(answers)
    sent = 0
    for batch, (now, cuts) in zip(batches, arrivals, strict=True):
        steps.append((batch, []))
        sent += len(batch[0])
        if now:  # what the server answered so far, in `cuts` buffers
            ready = [a for a in pending if a[1] < sent]
            del pending[:len(ready)]
            step = -(-len(ready) // cuts) or 1
            steps += [(None, ready[k : k + step]) for k in range(0, len(ready), step)]
    steps.append((None, pending))
    return steps


class _Wire(MemoryTransport):
    """A transport that keeps what the relay writes, and must never be closed."""

    def abort(self) -> None:
        raise AssertionError("the relay gave up on a session it should follow")

    close = abort


class _TaggingGate:
    """Forwards every batch as it is, with the tags the case gave it (as StatementGate
    does, none for a Query none of whose statements is followed)."""

    def __init__(self) -> None:
        self._tags: dict[int, object] = {}

    @property
    def tags(self) -> dict[int, object]:
        return self._tags

    @tags.setter
    def tags(self, tags: dict[int, object]) -> None:
        self._tags = {i: t for i, t in tags.items()
                      if not (type(t) is list and t.count(None) == len(t))}

    def review(self, raw: bytes, frames_: list[tuple[int, bytes]], relay: object) -> bytes:
        return raw

    def take_tags(self, frames_: list[tuple[int, bytes]]
                  ) -> tuple[list[tuple[int, bytes]], dict[int, object]]:
        tags, self._tags = self._tags, {}
        return frames_, tags

    def unapplied(self, name: str) -> None:
        """(StatementGate's: nothing of its own to forget here)"""

    def follow_portals(self, knows: object) -> None:
        """(StatementGate's: no SQL to refuse here)"""

    def parameter_status(self, name: str, value: str) -> None:
        pass

    def ready_for_query(self, status: str, idle: Callable[[], bool]) -> None:
        pass


def _relay_on_wires(on_result: object) -> tuple[Any, _TaggingGate, ResultMasker, Any, Any]:
    """A started relay between two memory transports, with a _TaggingGate and a masker,
    reporting ends to `on_result` (call it on a running event loop): (relay, gate,
    masker, client endpoint, upstream endpoint)."""
    from gateway.proxy.endpoint import Endpoint
    from gateway.proxy.relay import Relay

    client, upstream = Endpoint(), Endpoint()
    client.transport, upstream.transport = _Wire(), _Wire()  # type: ignore[assignment]
    gate, results = _TaggingGate(), ResultMasker(lambda o, a: None)
    relay = Relay("s1", client, upstream, 1 << 20, gate,  # type: ignore[arg-type]
                  safety_net="off", results=results, on_result=on_result)  # type: ignore[arg-type]
    relay.start()
    return relay, gate, results, client, upstream


_ANSWER_BYTES = {
    "T": be.RowDescription((field("a"),)).encode(), "D": be.DataRow((b"1",)).encode(),
    "C": be.CommandComplete("SELECT 1").encode(), "Z": be.ReadyForQuery("I").encode(),
    "E": be.ErrorResponse.build("42000", "failed").encode(),
    "1": be.Simple(b"1").encode(), "2": be.Simple(b"2").encode(), "n": be.Simple(b"n").encode(),
    "t": be.ParameterDescription(()).encode(),
}


@given(st.data())
@settings(max_examples=int(os.environ.get("PGWARDEN_PIPELINE_EXAMPLES", "300")), deadline=None)
def test_the_relay_ends_every_statement_as_the_masker_shown_everything_does(
        data: st.DataObject) -> None:
    """The relay shows its masker only what `watch()` asks for, and does not show it a
    batch of one untagged Query at all while it has nothing pending (it counts that
    Query's ReadyForQuery itself), nor one of a single statement with nothing to mask
    (it also reports that statement's end): every followed statement still ends as when
    the masker is shown every message, at every step the statements left unfinished are
    the same, each reports the DataRows sent since the result before it ended, the client
    gets the server's bytes, and nothing stays owed."""
    import asyncio

    _, batches, answers, arrivals = _case(data)
    reference: dict[int, list[int]] = {}
    rm, _ = recorder()
    rows = [0]  # DataRows since the last end: the next result to end sent them

    def ended(tag: Any, t: int, b: bytes, c: object) -> None:
        reference.setdefault(id(tag), []).append((t, rows[0]))
        rows[0] = 0

    rm.on_result = ended
    unfinished: list[list[int]] = []  # after each step, what a session ending would close
    for batch, buffers in _schedule(batches, answers, arrivals):
        if batch is not None:
            rm.forwarded(frames(*batch[0]), batch[1])
        for mtype, _i in buffers:
            rows[0] += mtype == "D"
            rm.message(ord(mtype), PAN_ROW if mtype == "D" else b"")
            if mtype in "CIEsZ":
                rows[0] = 0
        unfinished.append([id(t) for t in rm.unfinished()])

    async def run() -> tuple[dict[int, list[int]], bytes, bytes, int]:
        ends: dict[int, list[int]] = {}
        relay, gate, results, client, upstream = _relay_on_wires(
            lambda tag, t, b, c, h, sent: ends.setdefault(id(tag), []).append((t, sent)))
        server = bytearray()
        for step, (batch, buffer) in enumerate(_schedule(batches, answers, arrivals)):
            if batch is not None:
                gate.tags = batch[1]
                relay.from_client(b"".join(batch[0]))
            chunk = b"".join(_ANSWER_BYTES[m] for m, _ in buffer)
            if chunk:
                server += chunk
                relay.from_upstream(chunk)
            assert [id(t) for t in relay.unfinished()] == unfinished[step]
        assert not relay.done.done()
        assert results.empty() and relay._quiet == 0 and relay._quiet_tag is None
        return ends, bytes(client.transport.out), bytes(server), \
            len(upstream.transport.out)  # type: ignore[union-attr]

    ends, to_client, from_server, forwarded = asyncio.run(run())
    assert ends == reference
    assert to_client == from_server  # nothing masked here: the bytes pass as they came
    assert forwarded == sum(len(f) for frames_, _ in batches for f in frames_)


def test_executes_with_a_row_limit_each_report_their_own_rows() -> None:
    """Two Executes of one portal with a row limit, in one run: each ends with
    PortalSuspended and reports the DataRows of its own piece."""
    import asyncio

    async def run() -> list[tuple[object, str, int]]:
        ends: list[tuple[object, str, int]] = []
        relay, gate, _, _, _ = _relay_on_wires(
            lambda tag, t, b, c, h, sent: ends.append((tag, chr(t), sent)))
        tag = StatementTag(None, 1, command="SELECT")
        gate.tags = {0: tag}
        relay.from_client(b"".join((fe.Parse("", "select g", ()).encode(),
                                    fe.Bind("p", "", (), (), ()).encode(),
                                    fe.Execute("p", 2).encode(), fe.Execute("p", 2).encode(),
                                    fe.Sync().encode())))
        suspended = be.Simple(b"s").encode()
        relay.from_upstream(b"".join(_ANSWER_BYTES[m] for m in "12DD") + suspended
                            + _ANSWER_BYTES["D"] + suspended + _ANSWER_BYTES["Z"])
        return [(t is tag, kind, sent) for t, kind, sent in ends]

    assert asyncio.run(run()) == [(True, "s", 2), (True, "s", 1)]


def test_the_relay_follows_a_lone_extended_run_itself_and_reports_its_end() -> None:
    """A driver's one-statement run (Parse, Bind, Describe, Execute, Sync) of an audited
    statement with nothing to mask: the relay reports its end without showing the masker
    its answers; the next run, pipelined behind it, is handed to the masker in step."""
    import asyncio

    async def run() -> None:
        ends: list[tuple[object, int, bytes]] = []
        relay, gate, results, _, _ = _relay_on_wires(
            lambda tag, t, b, c, h, sent: ends.append((tag, t, b)))
        one = b"".join((fe.Parse("", "select 1", ()).encode(),
                        fe.Bind("", "", (), (), ()).encode(), fe.Describe("P", "").encode(),
                        fe.Execute("", 0).encode(), fe.Sync().encode()))
        first, second = StatementTag(None, 1, command="SELECT"), \
            StatementTag(None, 2, command="SELECT")
        gate.tags = {0: first}
        relay.from_client(one)
        assert relay._quiet_tag is first and results.empty()
        answers = [_ANSWER_BYTES[m] for m in "12TD"]
        relay.from_upstream(b"".join(answers))
        gate.tags = {0: second}
        relay.from_client(one)  # pipelined: the masker takes the rest of the first run
        assert relay._quiet_tag is None and not results.empty()
        relay.from_upstream(b"".join(_ANSWER_BYTES[m] for m in "CZ12TDCZ"))
        assert [(tag, chr(t), b) for tag, t, b in ends] == [
            (first, "C", b"SELECT 1\0"), (second, "C", b"SELECT 1\0")]
        assert results.empty() and not relay.done.done()

    asyncio.run(run())


# -- row limits ---------------------------------------------------------------------------------


def limited(limit: int, masks: dict[int, ColumnMask] | None = None, width: int = 1) -> MaskPlan:
    by_column = {("public", "cards", "pan"): LAST4} if masks else {}
    return with_row_limit(plan(masks or {}, width, by_column) if masks else None,
                          _Info(width), limit)


class _Info:
    """What `with_row_limit` reads of a StatementInfo: the outputs' count."""

    def __init__(self, width: int) -> None:
        self.outputs = (None,) * width


def rows_of(*values: bytes) -> list[bytes]:
    return [be.DataRow((v,)).encode() for v in values]


def decoded(stream: bytes) -> list[tuple[str, object]]:
    """(type, message) of each backend message in `stream`."""
    return [(chr(t), be.decode_backend(t, body)) for t, body in messages(stream)]


def test_a_query_under_a_row_limit_returns_that_many_rows_and_says_so() -> None:
    """DataRows one by one: the first `row_limit` pass, the rest are withheld; the command
    tag gives the rows the client got, a warning says why, and the result's end reports
    those rows."""
    ends: list[tuple[object, ...]] = []
    rm = ResultMasker(lambda o, a: None, on_result=lambda *a: ends.append(a))
    tag = StatementTag(limited(2), 7, command="SELECT")
    rm.forwarded(frames(fe.Query("select id from t").encode()), {0: [tag]})
    assert rm.watch() == WATCH_ROWS
    desc = body(be.RowDescription((field("id", 16400, 1),)).encode())
    assert rm.message(ord("T"), desc) is None  # a limit alone masks nothing
    out = [rm.message(ord("D"), body(r)) for r in rows_of(b"1", b"2", b"3", b"4")]
    assert out == [None, None, b"", b""]
    end = rm.message(ord("C"), b"SELECT 4\0")
    assert end is not None
    (nt, notice), (ct, complete) = decoded(end)
    assert (nt, ct) == ("N", "C") and complete == be.CommandComplete("SELECT 2")
    assert notice.code == "01000" and "cut at 2 rows" in notice.message
    assert ends == [(tag._replace(withheld=True), ord("C"), b"SELECT 2\0", {}, 2)]
    assert rm.message(ord("Z"), b"I") is None and rm.watch() == WATCH_IDLE


def test_a_run_of_rows_is_cut_where_the_budget_ends_and_masked() -> None:
    """Rows in runs (as the relay coalesces them): the run the budget ends in is cut at a
    row's end and its rows masked; later runs are withheld whole; a limit the result
    stays under changes nothing, and tells nothing."""
    ends: list[tuple[object, ...]] = []
    rm = ResultMasker(lambda o, a: None, on_result=lambda *a: ends.append(a))
    tag = StatementTag(limited(3, {0: LAST4}), 1, command="SELECT")
    under = StatementTag(limited(5), 2, command="SELECT")
    rm.forwarded(frames(fe.Query("select pan from cards; select 1").encode()),
                 {0: [tag, under]})
    desc = body(be.RowDescription((field("pan", 16400, 2),)).encode())
    assert rm.message(ord("T"), desc) is not None
    assert rm.walk_rows(b"".join(rows_of(PAN)), 0, 1 << 20) is None  # message cuts first
    run = RUN | ord("D")
    assert rm.message(run, b"".join(rows_of(PAN, PAN))) == \
        b"".join(rows_of(b"************1111") * 2)
    assert rm.message(run, b"".join(rows_of(PAN, b"4444333322221111", PAN))) == \
        rows_of(b"************1111")[0]
    assert rm.message(run, b"".join(rows_of(PAN, PAN))) == b""
    assert [t for t, _ in decoded(rm.message(ord("C"), b"SELECT 7\0") or b"")] == ["N", "C"]
    assert rm.message(ord("T"), body(be.RowDescription((field("x"),)).encode())) is None
    assert rm.message(run, b"".join(rows_of(b"1", b"2"))) is None
    assert rm.message(ord("C"), b"SELECT 2\0") is None
    assert [(e[0], e[2], e[4]) for e in ends] == [
        (tag._replace(withheld=True), b"SELECT 3\0", 3), (under, b"SELECT 2\0", 2)]
    assert ends[0][3] == {"public.cards.pan": 3}  # only the rows sent were masked


def test_a_portal_has_one_budget_across_its_executes_and_each_portal_its_own() -> None:
    """Executes with a row count (a driver's cursor): the budget spans the portal's
    pieces, the client is told once; a second portal of the same prepared statement
    starts afresh; the statement's own plan is never spent."""
    ends: list[tuple[object, ...]] = []
    rm = ResultMasker(lambda o, a: None, on_result=lambda *a: ends.append(a))
    stmt = StatementTag(limited(3), 1, command="SELECT")
    rm.forwarded(frames(fe.Parse("s", "select g", ()).encode(),
                        fe.Bind("p", "s", (), (), ()).encode(), fe.Execute("p", 2).encode(),
                        fe.Execute("p", 2).encode(), fe.Execute("p", 2).encode(),
                        fe.Bind("q", "s", (), (), ()).encode(), fe.Execute("q", 0).encode(),
                        fe.Sync().encode()), {0: stmt})
    for t in "12":
        assert rm.message(ord(t), b"") is None
    got: list[bytes | None] = []
    for _ in range(3):  # three pieces of two rows: 2 pass, then 1, then none
        got += [rm.message(ord("D"), body(r)) for r in rows_of(b"1", b"2")]
        got.append(rm.message(ord("s"), b""))
    assert got[:4] == [None, None, None, None] and got[4] == b""
    told = got[5]
    assert told is not None and [t for t, _ in decoded(told)] == ["N", "s"]
    assert got[6:] == [b"", b"", None]  # told once
    assert rm.message(ord("2"), b"") is None
    assert [rm.message(ord("D"), body(r)) for r in rows_of(b"1", b"2", b"3", b"4")] == \
        [None, None, None, b""]
    assert [t for t, _ in decoded(rm.message(ord("C"), b"SELECT 4\0") or b"")] == ["N", "C"]
    assert [e[4] for e in ends] == [2, 1, 0, 3]
    assert [e[0].withheld for e in ends] == [False, True, True, True]
    assert [e[0].plan.of for e in ends] == [stmt.plan] * 4 and stmt.plan.left == 3


def test_masked_rows_one_by_one_past_the_limit_are_withheld() -> None:
    """A DataRow shown on its own (one that spans reads): masked while within the limit,
    withheld (not masked, not passed) past it."""
    rm = ResultMasker(lambda o, a: None, on_result=lambda *a: None)
    tag = StatementTag(limited(1, {0: LAST4}), 1, command="SELECT")
    rm.forwarded(frames(fe.Query("select pan from cards").encode()), {0: [tag]})
    rm.message(ord("T"), body(be.RowDescription((field("pan", 16400, 2),)).encode()))
    assert [rm.message(ord("D"), body(r)) for r in rows_of(PAN, PAN)] == \
        [be.DataRow((b"************1111",)).encode(), b""]
    assert tag.plan is not None and tag.plan.counts == {"public.cards.pan": 1}


def test_a_limited_statement_whose_parse_failed_ends_once() -> None:
    """The portal's copy of the plan is still that statement's: an error answering the
    Parse ends it, and its Execute is not reported again as skipped."""
    ends: list[tuple[object, ...]] = []
    rm = ResultMasker(lambda o, a: None, on_result=lambda *a: ends.append(a))
    stmt = StatementTag(limited(1), 1, command="SELECT")
    rm.forwarded(frames(fe.Parse("", "select g", ()).encode(),
                        fe.Bind("", "", (), (), ()).encode(), fe.Execute("", 0).encode(),
                        fe.Sync().encode()), {0: stmt})
    error = body(be.ErrorResponse.build("42601", "syntax error").encode())
    rm.message(ord("E"), error)
    assert rm.message(ord("Z"), b"I") is None
    assert [(e[0], chr(e[1])) for e in ends] == [(stmt, "E")]


def test_a_row_limit_of_zero_withholds_every_row() -> None:
    ends: list[tuple[object, ...]] = []
    rm = ResultMasker(lambda o, a: None, on_result=lambda *a: ends.append(a))
    tag = StatementTag(limited(0), 1, command="FETCH")
    rm.forwarded(frames(fe.Query("fetch 2 from k").encode()), {0: [tag]})
    rm.message(ord("T"), body(be.RowDescription((field("id"),)).encode()))
    assert rm.message(RUN | ord("D"), b"".join(rows_of(b"1", b"2"))) == b""
    end = rm.message(ord("C"), b"FETCH 2\0")
    assert decoded(end or b"")[-1] == ("C", be.CommandComplete("FETCH 0"))
    assert ends[0][4] == 0


@pytest.mark.parametrize(("tag", "rows", "expected"), [
    (b"SELECT 20\0", 3, b"SELECT 3\0"), (b"FETCH 9\0", 0, b"FETCH 0\0"),
    (b"MOVE\0", 1, b"MOVE\0"), (b"\0", 1, b"\0"), (b"SELECT x\0", 1, b"SELECT x\0"),
    (b"42\0", 1, b"42\0"),
])
def test_a_command_tag_gets_the_rows_sent(tag: bytes, rows: int, expected: bytes) -> None:
    assert results_module._with_count(tag, rows) == expected


def test_the_relay_records_the_rows_a_limit_let_through() -> None:
    """Through the relay: the client gets the rows within the limit, and the statement's
    end reports those, not every row the server sent."""
    import asyncio

    async def run() -> tuple[list[tuple[object, str, int]], bytes]:
        ends: list[tuple[object, str, int]] = []
        relay, gate, _, client, _ = _relay_on_wires(
            lambda tag, t, b, c, h, sent: ends.append((tag, chr(t), sent)))
        tag = StatementTag(limited(2), 1, command="SELECT")
        gate.tags = {0: [tag]}
        relay.from_client(fe.Query("select g").encode())
        relay.from_upstream(b"".join([_ANSWER_BYTES["T"], *rows_of(b"1", b"2", b"3")]))
        relay.from_upstream(b"".join([*rows_of(b"4"), _ANSWER_BYTES["E"], _ANSWER_BYTES["Z"]]))
        return [(t == tag._replace(withheld=True), kind, sent) for t, kind, sent in ends], \
            bytes(client.transport.out)

    ends, out = asyncio.run(run())
    assert ends == [(True, "E", 2)]
    assert [t for t, _ in decoded(out)] == ["T", "D", "D", "E", "Z"]  # the error says why


def test_a_limited_result_cut_short_by_the_sessions_end_reports_the_rows_sent() -> None:
    import asyncio

    async def run() -> tuple[int, int]:
        relay, gate, _, _, _ = _relay_on_wires(lambda *a: None)
        gate.tags = {0: [StatementTag(limited(2), 1, command="SELECT")]}
        relay.from_client(fe.Query("select g").encode())
        relay.from_upstream(b"".join([_ANSWER_BYTES["T"], *rows_of(b"1", b"2", b"3", b"4")]))
        cut = relay.take_sent()
        gate.tags = {0: [StatementTag(limited(9), 2, command="SELECT")]}
        relay.from_upstream(_ANSWER_BYTES["C"] + _ANSWER_BYTES["Z"])
        relay.from_client(fe.Query("select g").encode())
        relay.from_upstream(b"".join([_ANSWER_BYTES["T"], *rows_of(b"1", b"2", b"3")]))
        return cut, relay.take_sent()

    assert asyncio.run(run()) == (2, 3)  # cut: the rows sent; under its limit: every row


@given(st.data())
@settings(max_examples=int(os.environ.get("PGWARDEN_PIPELINE_EXAMPLES", "300")), deadline=None)
def test_a_row_limit_holds_wherever_the_reads_split_the_result(data: st.DataObject) -> None:
    """A Query, or a portal executed a few rows at a time, under a row limit, masked or
    not, its answer cut into reads anywhere: the client gets exactly the first
    min(limit, rows) rows (masked when masked), each end gives the rows the client got
    (the command tag too), and one warning comes when rows were withheld."""
    import asyncio

    limit, total = data.draw(st.integers(0, 5), "limit"), data.draw(st.integers(0, 8), "rows")
    masked = data.draw(st.booleans(), "masked")
    per_execute = data.draw(st.sampled_from([0, 1, 2, 3]), "rows per Execute (0: a Query)")
    values = [PAN if masked else b"%d" % i for i in range(total)]
    tag = StatementTag(limited(limit, {0: LAST4} if masked else None), 1, command="SELECT")
    if per_execute:
        executes = total // per_execute + 1  # the last one completes the portal
        request = b"".join([fe.Parse("s", "select", ()).encode(),
                            fe.Bind("p", "s", (), (), ()).encode(),
                            *[fe.Execute("p", per_execute).encode()] * executes,
                            fe.Sync().encode()])
        answer = [_ANSWER_BYTES["1"], _ANSWER_BYTES["2"]]
        for k in range(executes):
            answer += rows_of(*values[k * per_execute : (k + 1) * per_execute])
            answer.append(be.Simple(b"s").encode() if k < executes - 1 else
                          be.CommandComplete(f"SELECT {total % per_execute}").encode())
        tags: dict[int, object] = {0: tag}
        expected_ends = []
        left = limit
        for k in range(executes):
            piece = len(values[k * per_execute : (k + 1) * per_execute])
            got = min(left, piece)
            left -= got
            expected_ends.append(("s" if k < executes - 1 else "C", got, got < piece))
    else:
        request = fe.Query("select").encode()
        answer = [_ANSWER_BYTES["T"], *rows_of(*values),
                  be.CommandComplete(f"SELECT {total}").encode()]
        tags = {0: [tag]}
        expected_ends = [("C", min(limit, total), total > limit)]
    stream = b"".join([*answer, _ANSWER_BYTES["Z"]])
    cuts = sorted(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=4), "cuts"))

    async def run() -> tuple[list[tuple[str, int, bool]], bytes]:
        ends: list[tuple[str, int, bool]] = []
        relay, gate, _, client, _ = _relay_on_wires(
            lambda t, m, b, c, h, sent: ends.append((chr(m), sent, t.withheld)))
        gate.tags = tags
        relay.from_client(request)
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            if end > start:
                relay.from_upstream(stream[start:end])
        return ends, bytes(client.transport.out)

    ends, out = asyncio.run(run())
    got = decoded(out)
    sent_rows = [m.values[0] for t, m in got if t == "D"]
    kept = min(limit, total)
    assert sent_rows == ([b"************1111"] * kept if masked else values[:kept])
    assert ends == expected_ends
    assert [m.message for t, m in got if t == "N"] == \
        ([f"the result was cut at {limit} rows: the policy's row_limit; the gateway "
          "withheld the rest"] if total > limit else [])
    last = [m for t, m in got if t == "C"]
    assert last == [be.CommandComplete(f"SELECT {expected_ends[-1][1]}")
                    if total > limit else be.CommandComplete(
                        f"SELECT {total % per_execute if per_execute else total}")]
