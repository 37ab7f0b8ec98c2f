"""The safety net's compiled prefilter (`gateway/masking/_prefilter.c`) against its Python
twin `safety_net.quiet`: the same answer for every chunk, so that a chunk the C pass
lets through as it is is one the Python scan would also have let through."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.masking import safety_net
from gateway.masking.safety_net import StreamScanner, mask_in_place

pytestmark = pytest.mark.skipif(
    safety_net._native is None,
    reason="the C prefilter is not in use (not built: no C compiler at install; or "
           "PGWARDEN_PURE_PYTHON is set)")

# tools/check_native.py raises it for its sanitizer run
EXAMPLES = int(os.environ.get("PGWARDEN_NATIVE_EXAMPLES", "300")) * 3

# digits, both separators, the star and a few other bytes: PAN shapes are frequent
chunks = st.binary(max_size=60) | st.text("0123456789 -*x\0", max_size=60).map(str.encode)


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(chunks)
def test_the_same_answer_as_the_python_prefilter(chunk: bytes) -> None:
    assert safety_net._native.quiet(chunk) == safety_net.quiet(chunk)


@pytest.mark.parametrize(("chunk", "expected"), [
    (b"", True),
    (b"abc", True),
    (b"x411111111111x", True),  # 12 digits in a row
    (b"x1234567890123x", False),  # 13 digits in a row
    (b"x1234 5678x", False),  # 4, a separator, 4
    (b"x123-5678x", True),  # 3 before the separator
    (b"x1234  5678x", True),  # two separators
    (b"ab1", False),  # ends in a digit: the next chunk may continue it
    (b"ab1 ", False),  # ... or in a separator after one
    (b"ab ", True),  # a separator after no digit
    (bytearray(b"x1234-5678"), False),  # any buffer
])
def test_chunks_the_net_must_look_at(chunk: bytes, expected: bool) -> None:
    assert safety_net._native.quiet(chunk) is expected
    assert safety_net.quiet(bytes(chunk)) is expected


@settings(max_examples=EXAMPLES // 3, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(chunks, max_size=6))
def test_the_stream_is_masked_as_a_whole(parts: list[bytes]) -> None:
    scanner = StreamScanner()
    out = b"".join(scanner.feed(p) for p in parts) + scanner.flush()
    assert out == mask_in_place(b"".join(parts))[0]
