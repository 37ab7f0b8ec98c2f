"""The compiled seal of a templated audit record (`gateway/audit/_seal.c`) against the
Python steps it replaces in `Chain.seal_template`: fill the holes, hash onto the chain,
append the hash member.

For random record shapes (any text, `%` signs, quotes, non-ASCII) and random hole values
(every kind a hole holds, and many it must refuse), the C call must give the Python
line and digest byte for byte, or None exactly where the Python fill raises
TemplateMismatch. Malformed arguments raise, never crash.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.audit import chain as chain_mod
from gateway.audit.canonical import now_ts, parse_ts
from gateway.audit.chain import Chain, seal_filled
from gateway.audit.template import RecordTemplate, TemplateMismatch

pytestmark = pytest.mark.skipif(
    chain_mod._native is None,
    reason="the C seal is not in use (not built: no C compiler at install; or "
           "PGWARDEN_PURE_PYTHON is set)")

# tools/check_native.py raises it for its sanitizer run
EXAMPLES = int(os.environ.get("PGWARDEN_NATIVE_EXAMPLES", "300"))
TS = "2026-11-29T15:00:00.123456Z"
HEAD = "ab" * 32

hole_values = st.one_of(
    st.integers(0, 10**12 - 1), st.integers(-(2**70), 2**70), st.none(), st.booleans(),
    st.floats(allow_nan=False), st.text(max_size=5), st.binary(max_size=3),
    st.just(10**12), st.just(-1), st.just(4111111111111111))
field_text = st.text(max_size=40)  # any text: quotes, %, \\, non-ASCII, controls


def python_seal(tpl: RecordTemplate, seq: int, prev: str, ts: str,
                values: tuple[Any, ...]) -> tuple[bytes, str] | None:
    try:
        return seal_filled(prev, tpl.fill(seq, prev, ts, values))
    except (TemplateMismatch, UnicodeEncodeError):  # the chain's own prev is ASCII hex
        return None


def c_seal(tpl: RecordTemplate, seq: int, prev: str, ts: str,
           values: tuple[Any, ...], direct: bool = False) -> tuple[bytes, str] | None:
    """`direct`: with OpenSSL's SHA-256 called by the C module itself (sha256=None)."""
    assert chain_mod._native is not None
    sealed = chain_mod._native.seal(tpl.chunks, tpl.picks, seq, prev, ts, values,
                                    None if direct else hashlib.sha256)
    if sealed is None:
        return None
    line, digest, used = sealed
    assert used is ts  # the timestamp given is the one written
    return line, digest


def template(fields: dict[str, Any], holes: tuple[str, ...]) -> RecordTemplate | None:
    return Chain("gw1").template({"type": "statement", "session": "s1", **fields,
                                  **dict.fromkeys(holes, 0)}, holes)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=st.dictionaries(st.sampled_from(["a", "b%s", "c\"", "d é", "e\\", "f"]),
                              field_text, max_size=4),
       nholes=st.integers(0, 6), data=st.data(),
       seq=st.one_of(st.integers(1, 10**12 - 1), st.sampled_from([0, -1, 10**12, 2**64])),
       prev=st.one_of(st.just(HEAD), st.text(max_size=70)),
       ts=st.one_of(st.just(TS), st.text(max_size=30)), direct=st.booleans())
def test_the_c_seal_writes_the_python_bytes(fields: dict[str, Any], nholes: int,
                                            data: st.DataObject, seq: int, prev: str,
                                            ts: str, direct: bool) -> None:
    holes = tuple(f"h{i}" for i in range(nholes))
    tpl = template(fields, holes)
    assume(tpl is not None)  # text a template refuses (a PAN shape, a \\u escape)
    assert tpl is not None
    values = tuple(data.draw(hole_values) for _ in holes)
    expected = python_seal(tpl, seq, prev, ts, values)
    got = c_seal(tpl, seq, prev, ts, values, direct and chain_mod._SHA256 is None)
    if got is None:  # declined: only where fill refuses, or for text fill would encode
        assert expected is None or not (prev.isascii() and ts.isascii())
    else:
        assert got == expected


def test_seal_template_is_the_same_record_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    tpl = template({"sql": "SELECT 1 -- 100%", "note": "café"}, ("rows", "flag"))
    assert tpl is not None
    sealed = [Chain("gw1", 6, HEAD).seal_template(tpl, (5, True), ts=TS)]
    monkeypatch.setattr(chain_mod, "_native", None)
    sealed.append(Chain("gw1", 6, HEAD).seal_template(tpl, (5, True), ts=TS))
    assert sealed[0] == sealed[1]
    assert sealed[0].line.endswith(b',"hash":"' + sealed[0].hash.encode() + b'"}\n')


def test_with_no_timestamp_the_c_seal_writes_now_as_now_ts_does() -> None:
    tpl = template({"sql": "SELECT 1"}, ("rows",))
    assert tpl is not None and chain_mod._native is not None
    before = now_ts()
    line, digest, ts = chain_mod._native.seal(tpl.chunks, tpl.picks, 7, HEAD, None, (3,),
                                              hashlib.sha256)
    after = now_ts()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ts), ts
    assert before <= ts <= after  # one format: text order is time order
    assert (line, digest) == python_seal(tpl, 7, HEAD, ts, (3,))
    assert abs(parse_ts(ts) - time.time()) < 5
    sealed = Chain("gw1", 6, HEAD).seal_template(tpl, (3,))  # what the writer calls
    assert before <= sealed.ts <= now_ts() and b'"ts":"' + sealed.ts.encode() in sealed.line


def libcrypto_mapped() -> bool:
    with open("/proc/self/maps") as maps:
        return any(re.search(r"/libcrypto\.so\.(3|1\.1)$", line.rstrip()) for line in maps)


def test_the_c_seal_hashes_with_the_openssl_hashlib_loaded() -> None:
    assert chain_mod._native is not None
    import _hashlib  # noqa: F401  (what loads libcrypto, if anything does)

    assert chain_mod._native.openssl_sha256 is libcrypto_mapped()
    assert chain_mod._SHA256 is (None if libcrypto_mapped() else hashlib.sha256)
    if chain_mod._SHA256 is None:  # the same digest as hashlib's, every length
        for n in (0, 1, 55, 56, 63, 64, 65, 1000, 100_000):
            data = os.urandom(n)
            line, digest, _ = chain_mod._native.seal((data + b"}",), (), 1, "", TS, (), None)
            assert digest == hashlib.sha256(data + b"}").hexdigest()
            assert line == data + b',"hash":"' + digest.encode() + b'"}\n'


def test_the_c_seal_writes_each_second_it_passes_through() -> None:
    """The date and time of day are formatted once per second: every stamp across a
    second's turn is still the time it was made."""
    assert chain_mod._native is not None
    tpl = template({}, ())
    assert tpl is not None
    seconds = set()
    deadline = time.monotonic() + 1.5
    while len(seconds) < 2 and time.monotonic() < deadline:
        before = now_ts()
        _, _, ts = chain_mod._native.seal(tpl.chunks, tpl.picks, 1, HEAD, None, (), None
                                          if chain_mod._SHA256 is None else hashlib.sha256)
        assert before <= ts <= now_ts()
        seconds.add(ts[:19])
        time.sleep(0.01)
    assert len(seconds) == 2


def test_a_value_the_c_seal_declines_still_raises_template_mismatch() -> None:
    chain = Chain("gw1", 6, HEAD)
    tpl = template({}, ("rows",))
    assert tpl is not None
    with pytest.raises(TemplateMismatch):
        chain.seal_template(tpl, (4111111111111111,), ts=TS)
    assert (chain.seq, chain.head) == (6, HEAD)


@pytest.mark.parametrize("picks", [(3,), (-1,), (2**70,), (0, 4)])
def test_a_pick_with_no_value_is_declined(picks: tuple[int, ...]) -> None:
    assert chain_mod._native is not None
    chunks = (b"{",) + (b",",) * (len(picks) - 1) + (b"}",)
    assert chain_mod._native.seal(chunks, picks, 1, HEAD, TS, (), hashlib.sha256) is None


@pytest.mark.parametrize("args", [
    ((b"{",), (0,), 1, HEAD, TS, ()),                      # one chunk, one hole
    ((b"{", b"}"), ("0",), 1, HEAD, TS, ()),               # a pick that is no integer
    (("{", "}"), (0,), 1, HEAD, TS, ()),                   # chunks not bytes
    ((b"",), (), 1, HEAD, TS, ()),                         # nothing to seal
    ((b"{",) * 70, (0,) * 69, 1, HEAD, TS, ()),            # more holes than it takes
    ((b"{", b"}"), (0,), 1, HEAD, TS, (0,) * 70),
])
def test_malformed_arguments_raise(args: tuple[Any, ...]) -> None:
    assert chain_mod._native is not None
    with pytest.raises((ValueError, TypeError)):
        chain_mod._native.seal(*args, hashlib.sha256)


def test_a_hash_that_is_not_hex_text_raises() -> None:
    class Odd:
        def __init__(self, data: bytes) -> None:
            pass

        def hexdigest(self) -> bytes:
            return b"00"

    assert chain_mod._native is not None
    with pytest.raises(TypeError):
        chain_mod._native.seal((b"{", b"}"), (0,), 1, HEAD, TS, (), Odd)
