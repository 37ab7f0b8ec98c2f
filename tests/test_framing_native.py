"""The compiled step over backend messages (`gateway/wire/_skip.c`: unobserved ones
stepped over, observed ones cut out as events) against the Python loop it replaces
inside `BackendObserver.relay`.

Each stream (valid messages, unknown types, bad and huge lengths, random bytes) is fed in
the same chunks to an observer with the compiled step and one without: the bytes to
forward, the events and the errors must be the same after every chunk.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.proxy.relay import CLIENT_TYPES, OBSERVED, OBSERVED_ROWS
from gateway.wire import backend as be
from gateway.wire import framing
from gateway.wire.errors import ProtocolViolation

pytestmark = pytest.mark.skipif(
    framing._native is None,
    reason="the C step is not in use (not built: no C compiler at install; or "
           "PGWARDEN_PURE_PYTHON is set)")

# tools/check_native.py raises it for its sanitizer run
EXAMPLES = int(os.environ.get("PGWARDEN_NATIVE_EXAMPLES", "300")) * 2
OBSERVED_SETS = [OBSERVED, OBSERVED_ROWS, frozenset(b"ZE"), frozenset(), be.BACKEND_TYPES]

messages = st.one_of(
    st.builds(lambda vals: be.DataRow(tuple(vals)).encode(),
              st.lists(st.one_of(st.none(), st.binary(max_size=30)), max_size=4)),
    st.just(be.ReadyForQuery("I").encode()),
    st.just(be.CommandComplete("SELECT 1").encode()),
    st.just(be.ErrorResponse.build("XX000", "e").encode()),
    st.builds(lambda b: be.CopyData(b).encode(), st.binary(max_size=40)),
    st.builds(lambda t, length, body: bytes([t]) + struct.pack("!i", length) + body,
              st.integers(0, 255), st.sampled_from([-1, 0, 3, 4, 5, 9, 1 << 30]),
              st.binary(max_size=12)),
    st.binary(min_size=1, max_size=8),
)


def run(stream: bytes, cuts: list[int], observed: frozenset[int], native: bool,
        coalesce: frozenset[int]) -> list[object]:
    ob = framing.BackendObserver(be.BACKEND_TYPES, observed, 64)
    ob.coalesce = coalesce
    if not native:
        ob._scan = None
    out: list[object] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        try:
            out.append(ob.relay(stream[prev:cut]))
        except ProtocolViolation as e:
            out.append(("violation", str(e)))
            break
        out.append((ob._skip, ob._partial, ob._rows, ob.at_boundary()))
        prev = cut
    return out


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, max_size=12), st.sampled_from(OBSERVED_SETS),
       st.sampled_from([frozenset(), frozenset(b"D")]), st.data())
def test_same_answers_as_the_python_loop(msgs: list[bytes], observed: frozenset[int],
                                         coalesce: frozenset[int],
                                         data: st.DataObject) -> None:
    stream = b"".join(msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    assert run(stream, cuts, observed, True, coalesce) == \
        run(stream, cuts, observed, False, coalesce)


def test_rows_of_an_unmasked_result_are_one_step() -> None:
    rows = b"".join(be.DataRow((b"%d" % i, b"x" * 20)).encode() for i in range(1000))
    tail = be.CommandComplete("SELECT 1000").encode() + be.ReadyForQuery("I").encode()
    stream = rows + tail
    events: list[object] = []
    table = framing._scan_table(be.BACKEND_TYPES, OBSERVED, frozenset())
    assert framing._native.scan(stream, 0, table, 64, events, 2) == (len(stream), 0)
    assert events == [(ord("C"), b"SELECT 1000\0", len(rows), len(rows) + 17, 1002),
                      (ord("Z"), b"I", len(rows) + 17, len(stream), 0)]
    assert framing._native.scan(rows, 0, table, 64, [], 0) == (len(rows), 1000)
    forward, events = framing.BackendObserver(be.BACKEND_TYPES, OBSERVED, 64).relay(stream)
    assert forward == stream and [chr(t) for t, *_ in events] == ["C", "Z"]


def test_the_python_loop_gets_what_the_step_leaves() -> None:
    row = be.DataRow((b"1",)).encode()
    done = be.CommandComplete("SELECT 1").encode()
    table = framing._scan_table(be.BACKEND_TYPES, OBSERVED_ROWS, frozenset(b"D"))
    events: list[object] = []
    # a coalesced type, an oversized observed message, an unknown type, a partial one
    assert framing._native.scan(done + row, 0, table, 64, events, 0) == (len(done), 0)
    assert framing._native.scan(done, 0, table, 8, [], 3) == (0, 3)
    assert framing._native.scan(b"\x01\0\0\0\x04", 0, table, 64, [], 0) == (0, 0)
    assert framing._native.scan(done + done[:-1], 0, table, 64, events, 0) == (len(done), 0)
    assert [t for t, *_ in events] == [ord("C"), ord("C")]


def test_bad_arguments_are_refused() -> None:
    table = b"\x01" * 256
    with pytest.raises(ValueError):
        framing._native.scan(b"", 0, b"\x01" * 255, 64, [], 0)
    with pytest.raises(ValueError):
        framing._native.scan(b"abc", 4, table, 64, [], 0)
    with pytest.raises(ValueError):
        framing._native.scan(b"abc", 0, table, 64, [], -1)
    with pytest.raises(TypeError):
        framing._native.scan(bytearray(b"abc"), 0, table, 64, [], 0)
    with pytest.raises(TypeError):
        framing._native.scan(b"abc", 0, table, 64, [])


client_messages = st.one_of(
    st.builds(lambda s: b"Q" + struct.pack("!i", len(s) + 5) + s + b"\0",
              # the framer below takes 48 bytes at most: a text of 42 fits, 43 does not
              st.sampled_from([0, 5, 42, 43, 60]).flatmap(
                  lambda n: st.binary(min_size=n, max_size=n))),
    st.just(b"S\0\0\0\x04"),
    st.just(b"X\0\0\0\x04"),
    st.builds(lambda t, length, body: bytes([t]) + struct.pack("!i", length) + body,
              st.integers(0, 255), st.sampled_from([-1, 0, 3, 4, 5, 9, 60, 1 << 30]),
              st.binary(max_size=12)),
    st.binary(min_size=1, max_size=8),
)


def frame_all(stream: bytes, cuts: list[int], native: bool) -> list[object]:
    framer = framing.MessageFramer(CLIENT_TYPES, 48)
    if not native:
        framer._frames = None
    out: list[object] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        try:
            out.append(framer.feed(stream[prev:cut]))
        except ProtocolViolation as e:
            out.append(("violation", e.sqlstate, str(e)))
            break
        out.append(framer.has_partial())
        prev = cut
    return out


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(client_messages, max_size=12), st.data())
def test_the_framer_frames_like_the_python_loop(msgs: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    assert frame_all(stream, cuts, True) == frame_all(stream, cuts, False)


def test_the_framer_step_stops_where_python_decides() -> None:
    allowed = framing._allowed_table(CLIENT_TYPES)
    sync = b"S\0\0\0\x04"
    frames: list[object] = []
    assert framing._native.frames(sync + sync, 0, allowed, 48, frames) == 10
    assert frames == [(ord("S"), b""), (ord("S"), b"")]
    assert framing._native.frames(sync + b"\x01\0\0\0\x04", 0, allowed, 48, []) == 5
    assert framing._native.frames(sync + b"Q\0\0\0\x03", 0, allowed, 48, []) == 5
    assert framing._native.frames(sync + b"Q\0\0\0\x31" + b"x" * 45, 0, allowed, 48, []) == 5
    assert framing._native.frames(sync + b"Q\0\0\0\x06x", 0, allowed, 48, []) == 5
    with pytest.raises(ValueError):
        framing._native.frames(b"", 0, allowed[:-1], 48, [])
    with pytest.raises(TypeError):
        framing._native.frames(bytearray(sync), 0, allowed, 48, [])
