"""The compiled row walker (`gateway/masking/_rowwalk.c`) against its Python reference.

Every byte it reads comes from the upstream server, so it is fed well-formed runs,
every truncation of them, and runs with corrupted length fields: for each, both walkers
must return the same rows and counts, or both refuse with ValueError.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.masking import rows
from gateway.masking.methods import resolve
from gateway.masking.plan import ColumnMask
from gateway.wire import backend as be

pytestmark = pytest.mark.skipif(
    rows._native is None,
    reason="the C row walker is not in use (not built: no C compiler at install; or "
           "PGWARDEN_PURE_PYTHON is set)")

KEY = b"k" * 32
MASKS = [ColumnMask(m, resolve(m, key=KEY), "public.cards.pan")
         for m in ("pan_last4", "pan_first6_last4", "redact", "null", "hash")]
PAN = b"4111111111111111"
# tools/check_native.py raises it for its sanitizer run
EXAMPLES = int(os.environ.get("PGWARDEN_NATIVE_EXAMPLES", "300"))


def outcome(walker, data: bytes, pos: int, columns: list[tuple[int, ColumnMask]],
            max_size: int) -> tuple[object, ...]:
    counts: dict[str, int] = {}
    try:
        end, out = walker(data, pos, columns, counts, max_size)
    except ValueError:
        return ("refused",)
    return end, out, counts


def one_column_py(data: bytes, pos: int, columns: list[tuple[int, ColumnMask]],
                  counts: dict[str, int], max_size: int) -> tuple[int, bytes]:
    ((index, mask),) = columns
    return rows.walk_one_column_py(data, pos, index, mask, counts, max_size)


def same(data: bytes, pos: int, index: int | list[int], mask: ColumnMask | list[ColumnMask],
         max_size: int = 0x7FFFFFFF) -> tuple[object, ...]:
    """Every walker's answer for masking field(s) `index` with `mask`, checked equal."""
    indexes = [index] if isinstance(index, int) else index
    masks = [mask] * len(indexes) if isinstance(mask, ColumnMask) else mask
    columns = list(zip(indexes, masks, strict=True))
    py = outcome(rows.walk_columns_py, data, pos, columns, max_size)
    native = outcome(rows.walk_columns_native, data, pos, columns, max_size)
    assert native == py, (data, pos, indexes, [m.method for m in masks])
    if len(columns) == 1:
        assert outcome(one_column_py, data, pos, columns, max_size) == py
    return py


values = st.one_of(
    st.none(),
    st.just(PAN),
    st.binary(min_size=16, max_size=16),
    st.text("0123456789", min_size=13, max_size=19).map(str.encode),
    st.binary(max_size=40),
)
row_values = st.lists(values, min_size=1, max_size=5)


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(row_values, min_size=1, max_size=8), st.integers(0, 5),
       st.sampled_from(MASKS), st.binary(max_size=12))
def test_well_formed_runs_and_every_cut_of_them(table: list[list[bytes | None]], index: int,
                                                mask: ColumnMask, tail: bytes) -> None:
    data = b"".join(be.DataRow(tuple(r)).encode() for r in table)
    data += be.CommandComplete("SELECT 1").encode() + tail
    for cut in range(len(data) + 1):
        same(data[:cut], 0, index, mask)
    result = same(data, 0, index, mask)
    if all(len(r) > index for r in table):  # the masks fit: the run ends at CommandComplete
        end, _out, counts = result
        assert end == len(data) - len(tail) - len(be.CommandComplete("SELECT 1").encode())
        assert counts.get(mask.column, 0) == sum(r[index] is not None for r in table)
    else:
        assert result == ("refused",)


@settings(max_examples=EXAMPLES * 4 // 3, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(row_values, min_size=1, max_size=4), st.integers(0, 4),
       st.sampled_from(MASKS), st.data())
def test_corrupted_lengths(table: list[list[bytes | None]], index: int, mask: ColumnMask,
                           data: st.DataObject) -> None:
    raw = bytearray(b"".join(be.DataRow(tuple(r)).encode() for r in table))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 4))
        value = data.draw(st.sampled_from([-5, -1, 0, 1, 9, 10, 11, 16, 2**31 - 1, -2**31,
                                           len(raw), len(raw) - at]))
        struct.pack_into("!i", raw, at, value)
    pos = data.draw(st.integers(0, len(raw)))
    same(bytes(raw), pos, index, mask, data.draw(st.sampled_from([0x7FFFFFFF, 64, 8])))


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(values, min_size=1, max_size=7), min_size=1, max_size=6),
       st.lists(st.integers(0, 6), min_size=1, max_size=4, unique=True).map(sorted),
       st.lists(st.sampled_from(MASKS), min_size=4, max_size=4), st.data())
def test_several_masked_columns(table: list[list[bytes | None]], indexes: list[int],
                                masks: list[ColumnMask], data: st.DataObject) -> None:
    # one counter per column here, so the counts tell the columns apart
    masks = [ColumnMask(m.method, m.masker, f"public.cards.c{i}") for i, m in enumerate(masks)]
    raw = b"".join(be.DataRow(tuple(r)).encode() for r in table)
    raw += be.CommandComplete("SELECT 1").encode()
    result = same(raw, 0, indexes, masks[: len(indexes)])
    if all(len(r) > indexes[-1] for r in table):
        end, out, counts = result
        assert end == len(raw) - len(be.CommandComplete("SELECT 1").encode())
        for k, i in enumerate(indexes):
            assert counts.get(f"public.cards.c{k}", 0) == sum(r[i] is not None for r in table)
        # what a client decodes: the masked fields hold what each masker makes of them
        decoded = list(_decode_rows(out))
        assert len(decoded) == len(table)
        for got, row in zip(decoded, table, strict=True):
            expected = list(row)
            for k, i in enumerate(indexes):
                expected[i] = masks[k].masker(row[i])
            assert got == expected
    else:
        assert result == ("refused",)
    cut = data.draw(st.integers(0, len(raw)))
    same(raw[:cut], 0, indexes, masks[: len(indexes)])


def _decode_rows(raw: bytes):
    pos = 0
    while pos < len(raw):
        (length,) = struct.unpack_from("!i", raw, pos + 1)
        (nfields,) = struct.unpack_from("!h", raw, pos + 5)
        p, fields = pos + 7, []
        for _ in range(nfields):
            (flen,) = struct.unpack_from("!i", raw, p)
            p += 4
            fields.append(None if flen < 0 else raw[p : p + flen])
            p += max(flen, 0)
        assert p == pos + 1 + length
        yield fields
        pos = p


def test_hand_made_hostile_rows() -> None:
    mask = MASKS[0]
    head = b"D" + struct.pack("!ih", 4 + 2 + 4 + 16, 1)
    good = head + struct.pack("!i", 16) + PAN
    assert same(good, 0, 0, mask)[1] == head + struct.pack("!i", 16) + b"*" * 12 + PAN[-4:]
    refused = [  # (row, masked field)
        (head + struct.pack("!i", 17) + PAN, 0),  # the field runs past its row
        (head + struct.pack("!i", 2**31 - 1) + PAN, 0),
        (b"D" + struct.pack("!ih", 10, 2) + struct.pack("!i", -1), 1),  # a missing field
        (b"D" + struct.pack("!ih", 6, 0), 0),  # a whole row too short for any field
    ]
    for raw, index in refused:
        assert same(raw, 0, index, mask) == ("refused",), raw
    huge = b"D" + struct.pack("!ih", 2**31 - 1, 1) + struct.pack("!i", 16) + PAN
    assert same(huge, 0, 0, mask) == (0, b"", {})  # incomplete: held for the next read
    assert same(huge, 0, 0, mask, max_size=1 << 20) == ("refused",)  # over the limit
    # a NULL masked field whose length word sits past its row: refused by both
    skip_past = b"D" + struct.pack("!ih", 10, 2) + struct.pack("!i", 3) + b"abc"
    assert same(skip_past + struct.pack("!i", -1), 0, 1, mask) == ("refused",)


def test_more_masked_columns_than_the_c_loop_takes_run_in_python() -> None:
    width = rows._NATIVE_MAX_COLUMNS + 1
    columns = [(i, MASKS[0]) for i in range(width)]
    raw = be.DataRow((PAN,) * width).encode() * 3
    counts: dict[str, int] = {}
    end, out = rows.walk_columns(raw, 0, columns, counts)
    assert (end, out) == rows.walk_columns_py(raw, 0, columns, {})
    assert PAN not in out and counts == {"public.cards.pan": 3 * width}
    with pytest.raises(ValueError):  # the C loop refuses it rather than cut it short
        rows.walk_columns_native(raw, 0, columns, {})
