"""The compiled step over unobserved backend messages (`gateway/wire/_skip.c`) against
the Python loop it replaces inside `BackendObserver.relay`.

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

from gateway.proxy.relay import OBSERVED, OBSERVED_ROWS
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
        ob._skip_unobserved = None
    out: list[object] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        try:
            out.append(ob.relay(stream[prev:cut]))
        except ProtocolViolation as e:
            out.append(("violation", str(e)))
            break
        out.append((ob._skip, ob._partial, ob.at_boundary()))
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
    assert framing._native.skip(stream, 0, framing._skip_table(be.BACKEND_TYPES, OBSERVED)) \
        == len(rows)  # stops at the first observed message
    forward, events = framing.BackendObserver(be.BACKEND_TYPES, OBSERVED, 64).relay(stream)
    assert forward == stream and [chr(t) for t, *_ in events] == ["C", "Z"]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        framing._native.skip(b"", 0, b"\x01" * 255)
    with pytest.raises(ValueError):
        framing._native.skip(b"abc", 4, b"\x01" * 256)
