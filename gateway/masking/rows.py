"""Rewriting result messages under a mask plan. Sans-IO: message bytes in, bytes out.

* `field_masks` turns a plan and the server's RowDescription into the masks per field,
  adding any field whose table OID and attribute number name a masked column the
  analysis did not place there (a cross-check: the server's word beats the analyzer's).
* `rewrite_row_description` declares every masked field as ``text``: a masked value is
  text whatever the column's type, so a client decoding binary results gets valid data
  (``************1111`` is not a valid int8), and never the type's binary layout.
* `rewrite_data_row` masks the fields of one DataRow (text or binary format: a masked
  value is sent as text bytes, which is the binary form of ``text``); `walk_columns`
  masks a run of DataRows, finding where the run ends as it goes (in C when
  ``_rowwalk.c`` is built, else in Python; `rewrite_data_rows` is it over a whole run).
* `CopyOutMasker` does the same for COPY TO STDOUT rows in text, csv and binary format,
  streaming across CopyData messages.

Masked values are counted per protected column in the plan's ``counts``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence

from gateway import native
from gateway.wire.codec import frame

from .methods import REDACTED
from .plan import ColumnMask, MaskPlan

__all__ = ["CopyOutMasker", "UnsupportedCopy", "field_masks", "rewrite_data_row",
           "rewrite_data_rows", "rewrite_row_description", "walk_columns",
           "walk_columns_native", "walk_columns_py", "walk_one_column_py"]

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_FIELD_TAIL = struct.Struct("!IhIhih")  # table oid, attnum, type oid, typlen, typmod, format
TEXT_OID = 25

_native = native.load("gateway.masking._rowwalk")  # None: the Python loop below

Lookup = Callable[[int, int], "tuple[str, str, str] | None"]
FieldMasks = dict[int, ColumnMask]


def _redact_all(value: bytes | None) -> bytes | None:
    return None if value is None else REDACTED


def _row_description_fields(body: bytes) -> list[tuple[int, int, int, int]]:
    """(start of the fixed part, table oid, attnum, end) per field of a T body."""
    (n,) = _I16.unpack_from(body, 0)
    pos = 2
    out = []
    for _ in range(n):
        nul = body.index(0, pos)
        fixed = nul + 1
        table_oid, attnum, *_rest = _FIELD_TAIL.unpack_from(body, fixed)
        end = fixed + _FIELD_TAIL.size
        out.append((fixed, table_oid, attnum, end))
        pos = end
    return out


def field_masks(plan: MaskPlan, body: bytes, lookup: Lookup) -> FieldMasks:
    """Masks per field for a RowDescription body under `plan`."""
    fields = _row_description_fields(body)
    if len(fields) != plan.width:
        # The analysis and the server disagree on the shape: mask every field (fail closed).
        cover = ColumnMask("redact", _redact_all, "?")
        return dict.fromkeys(range(len(fields)), cover)
    masks = dict(plan.positions)
    for i, (_fixed, table_oid, attnum, _end) in enumerate(fields):
        if i in masks or not table_oid or attnum <= 0:
            continue
        col = lookup(table_oid, attnum)
        if col is not None and col in plan.by_column:
            masks[i] = plan.by_column[col]
    return masks


def rewrite_row_description(body: bytes, masks: Mapping[int, ColumnMask]) -> bytes:
    """The whole T message with masked fields declared ``text``."""
    if not masks:
        return frame(b"T", body)
    out = bytearray(body)
    for i, (fixed, table_oid, attnum, _end) in enumerate(_row_description_fields(body)):
        if i in masks:
            fmt = _FIELD_TAIL.unpack_from(body, fixed)[5]
            _FIELD_TAIL.pack_into(out, fixed, table_oid, attnum, TEXT_OID, -1, -1, fmt)
    return frame(b"T", bytes(out))


def rewrite_data_row(body: bytes, masks: Mapping[int, ColumnMask],
                     counts: dict[str, int]) -> bytes:
    """The whole D message with masked fields replaced."""
    (n,) = _I16.unpack_from(body, 0)
    parts: list[bytes] = [body[:2]]
    pos = 2
    last = 2
    unpack = _I32.unpack_from
    for i in range(n):
        (length,) = unpack(body, pos)
        start = pos + 4
        end = start if length < 0 else start + length
        m = masks.get(i)
        if m is not None:
            parts.append(body[last:pos])
            value = None if length < 0 else body[start:end]
            new = m.masker(value)
            if value is not None:
                counts[m.column] = counts.get(m.column, 0) + 1
            parts.append(b"\xff\xff\xff\xff" if new is None else _I32.pack(len(new)) + new)
            last = end
        pos = end
    if pos != len(body):
        raise ValueError("DataRow length does not match its fields")
    parts.append(body[last:])
    return frame(b"D", b"".join(parts))


def rewrite_data_rows(raw: bytes, masks: Mapping[int, ColumnMask],
                      counts: dict[str, int]) -> bytes:
    """Consecutive whole DataRow messages (headers included) with masked fields replaced
    (`walk_columns` over all of them)."""
    if not masks:
        return raw
    end, out = walk_columns(raw, 0, sorted(masks.items()), counts)
    if end != len(raw):
        raise ValueError("not a run of whole DataRow messages")
    return out


_D = ord("D")
_ROW_HEAD = struct.Struct("!Bihi")  # type, length, field count, first field's length
# A bytearray, not bytes: assigning bytes into a bytearray slice copies them into a new
# bytearray first, which cost more than the rest of the row's work.
_TWELVE_STARS = bytearray(b"*" * 12)


def compiled() -> bool:
    """Whether masked results run the compiled row loop (operators see it at startup)."""
    return _native is not None


Columns = Sequence[tuple[int, ColumnMask]]


def walk_columns(data: bytes, pos: int, columns: Columns, counts: dict[str, int],
                 max_size: int = 0x7FFFFFFF) -> tuple[int, bytes]:
    """The whole DataRows from `pos` on, with the fields `columns` names (index, mask;
    ascending indexes) masked: (where they end, the rewritten rows). Stops at a message of
    another type or an incomplete one, so it also finds the run's end
    (`BackendObserver.walk_run`). Raises ValueError for a row the masks do not fit or a
    length over `max_size`.

    Runs the compiled loop (`_rowwalk.c`) when it was built, else the Python one
    (`walk_one_column_py` for one column, `walk_columns_py` for more); they give the same
    answer for every input (tests compare them)."""
    if _native is not None and len(columns) <= _NATIVE_MAX_COLUMNS:
        return walk_columns_native(data, pos, columns, counts, max_size)
    if len(columns) == 1:
        ((index, mask),) = columns
        return walk_one_column_py(data, pos, index, mask, counts, max_size)
    return walk_columns_py(data, pos, columns, counts, max_size)


_NATIVE_MAX_COLUMNS = 64  # MAX_MASKED in _rowwalk.c


def walk_columns_native(data: bytes, pos: int, columns: Columns, counts: dict[str, int],
                        max_size: int = 0x7FFFFFFF) -> tuple[int, bytes]:
    """`walk_columns` with the row loop in C: it copies the run, masks 16-digit PANs under
    pan_last4 itself and hands back the fields the maskers must see."""
    if _native is None:
        raise RuntimeError("the compiled row walker is not built")
    end, buf, seen, pending = _native.walk(
        data, pos, tuple(i for i, _ in columns),
        tuple(m.method == "pan_last4" for _, m in columns), max_size)
    first = pos
    rebuilt: list[tuple[int, int, bytes]] = []
    changes: list[tuple[int, int, bytes | None]] = []  # of the row at `row`
    row = row_end = -1
    for row_start, end_of_row, k, p, flen in pending:
        if row_start != row and changes:
            rebuilt.append((row - first, row_end - first,
                            _rebuild_row(buf, row - first, row_end - first, changes)))
            changes = []
        row, row_end = row_start, end_of_row
        masker = columns[k][1].masker
        vstart = p + 4
        if flen >= 0:
            vend = vstart + flen
            new = masker(data[vstart:vend])
            if new is not None and len(new) == flen:
                buf[vstart - first : vend - first] = new
                continue
        else:
            vend = vstart
            new = masker(None)
            if new is None:
                continue
        changes.append((p - first, vend - first, new))
    if changes:
        rebuilt.append((row - first, row_end - first,
                        _rebuild_row(buf, row - first, row_end - first, changes)))
    for (_index, mask), n in zip(columns, seen, strict=True):
        if n:
            counts[mask.column] = counts.get(mask.column, 0) + n
    return end, _splice_rows(buf, 0, len(buf), rebuilt)


def walk_columns_py(data: bytes, pos: int, columns: Columns, counts: dict[str, int],
                    max_size: int = 0x7FFFFFFF) -> tuple[int, bytes]:
    """`walk_columns` in Python for any number of columns: the reference for the
    compiled loop (``walk_one_column_py`` is the faster one-column case)."""
    try:
        return _walk_columns_py(data, pos, columns, counts, max_size)
    except struct.error as e:  # a field length pointing past the buffer
        raise ValueError("DataRow field runs past its message") from e


def _walk_columns_py(data: bytes, pos: int, columns: Columns, counts: dict[str, int],
                     max_size: int) -> tuple[int, bytes]:
    last = columns[-1][0]
    buf = bytearray(data)
    first = pos
    seen = [0] * len(columns)
    rebuilt: list[tuple[int, int, bytes]] = []
    unpack_i = _I32.unpack_from
    n = len(data)
    while n - pos >= 11:
        kind, mlen, nfields, _flen = _ROW_HEAD.unpack_from(data, pos)
        if kind != _D:
            break
        end = pos + 1 + mlen
        if end > n:
            if mlen > max_size:
                raise ValueError("DataRow with an invalid length")
            break
        if mlen < 10 or nfields <= last or mlen > max_size:
            raise ValueError("a DataRow the masks do not fit, or over the size limit")
        p = pos + 7
        field = 0
        changes: list[tuple[int, int, bytes | None]] = []
        for k, (index, mask) in enumerate(columns):
            while field < index:
                (flen,) = unpack_i(data, p)
                p += 4 + flen if flen > 0 else 4
                field += 1
            if p + 4 > end:
                raise ValueError("DataRow field runs past its message")
            (flen,) = unpack_i(data, p)
            vstart = p + 4
            if flen >= 0:
                vend = vstart + flen
                if vend > end:
                    raise ValueError("DataRow field runs past its message")
                seen[k] += 1
                new = mask.masker(data[vstart:vend])
                if new is not None and len(new) == flen:
                    buf[vstart:vend] = new
                else:
                    changes.append((p, vend, new))
            else:
                vend = vstart
                new = mask.masker(None)
                if new is not None:
                    changes.append((p, vend, new))
            p = vend
            field += 1
        if changes:
            rebuilt.append((pos, end, _rebuild_row(buf, pos, end, changes)))
        pos = end
    else:
        _refuse_short_row(data, pos, max_size)
    for (_index, mask), count in zip(columns, seen, strict=True):
        if count:
            counts[mask.column] = counts.get(mask.column, 0) + count
    return pos, _splice_rows(buf, first, pos, rebuilt)


def walk_one_column_py(data: bytes, pos: int, index: int, mask: ColumnMask,
                       counts: dict[str, int], max_size: int = 0x7FFFFFFF
                       ) -> tuple[int, bytes]:
    """`walk_columns` in Python for one column. Once per row, so every call counts: a
    row's type, length, field count and first field's length come from one unpack."""
    try:
        return _walk_py(data, pos, index, mask, counts, max_size)
    except struct.error as e:  # a field length pointing past the buffer
        raise ValueError("DataRow field runs past its message") from e


def _walk_py(data: bytes, pos: int, index: int, mask: ColumnMask,
             counts: dict[str, int], max_size: int) -> tuple[int, bytes]:
    masker = mask.masker
    last4_16 = mask.method == "pan_last4"
    stars = _TWELVE_STARS
    buf = bytearray(data)  # rewritten in place: one copy, offsets shared with `data`
    first = pos
    rebuilt: list[tuple[int, int, bytes]] = []
    unpack_i = _I32.unpack_from
    unpack_head = _ROW_HEAD.unpack_from
    between = index - 1  # fields between the first and the masked one
    seen = 0
    n = len(data)
    row_type = _D
    while n - pos >= 11:  # 11: the shortest DataRow with a field
        kind, mlen, nfields, flen = unpack_head(data, pos)
        if kind != row_type:
            break
        end = pos + 1 + mlen
        if end > n:
            if mlen > max_size:
                raise ValueError("DataRow with an invalid length")
            break  # incomplete: the caller holds it for the next read
        if mlen < 10 or nfields <= index or mlen > max_size:
            raise ValueError("a DataRow the masks do not fit, or over the size limit")
        p = pos + 7
        if index:
            p += 4 + flen if flen > 0 else 4
            k = between
            while k:
                (flen,) = unpack_i(data, p)
                p += 4 + flen if flen > 0 else 4
                k -= 1
            (flen,) = unpack_i(data, p)
        vstart = p + 4
        if flen >= 0:
            vend = vstart + flen
            if vend > end:
                raise ValueError("DataRow field runs past its message")
            value = data[vstart:vend]
            seen += 1
            if last4_16 and flen == 16 and value.isdigit():
                # pan_last4 of the usual 16-digit PAN is 12 stars and its last four: in
                # place, without calling the masker (the same bytes; tests compare)
                buf[vstart : vend - 4] = stars
                pos = end
                continue
            new = masker(value)
            if new is not None and len(new) == flen:
                buf[vstart:vend] = new
                pos = end
                continue
        else:
            vend = vstart
            if vend > end:
                raise ValueError("DataRow field runs past its message")
            new = masker(None)
            if new is None:
                pos = end
                continue
        rebuilt.append((pos, end, _rebuild_row(buf, pos, end, [(p, vend, new)])))
        pos = end
    else:
        _refuse_short_row(data, pos, max_size)
    if seen:
        counts[mask.column] = counts.get(mask.column, 0) + seen
    return pos, _splice_rows(buf, first, pos, rebuilt)


def _refuse_short_row(data: bytes, pos: int, max_size: int) -> None:
    """Where a row walk stopped with fewer than 11 bytes left: a whole DataRow there is
    too short to hold any field (or its length is over the limit) — refuse it; anything
    else is another message or the start of one still arriving."""
    n = len(data)
    if n - pos >= 5 and data[pos] == _D:
        (mlen,) = _I32.unpack_from(data, pos + 1)
        if pos + 1 + mlen <= n or mlen > max_size:
            raise ValueError("a DataRow the masks do not fit, or over the size limit")


def _splice_rows(buf: bytearray, start: int, stop: int,
                 rebuilt: list[tuple[int, int, bytes]]) -> bytes:
    """buf[start:stop] with the rebuilt rows in place of theirs."""
    if not rebuilt:
        return bytes(memoryview(buf)[start:stop])
    out: list[bytes | bytearray] = []
    last = start
    for row_start, row_end, message in rebuilt:
        out += [buf[last:row_start], message]
        last = row_end
    out.append(buf[last:stop])
    return b"".join(out)


def _rebuild_row(buf: bytearray, pos: int, end: int,
                 changes: list[tuple[int, int, bytes | None]]) -> bytes:
    """One DataRow with fields [start, end) replaced (None: SQL NULL)."""
    parts: list[bytes | bytearray] = []
    last = pos + 5
    for start, stop, new in changes:
        parts += [buf[last:start],
                  b"\xff\xff\xff\xff" if new is None else _I32.pack(len(new)) + new]
        last = stop
    parts.append(buf[last:end])
    body = b"".join(parts)
    return b"D" + _I32.pack(len(body) + 4) + body


class UnsupportedCopy(Exception):
    """COPY options the masker cannot parse faithfully: end the statement instead."""


_BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


class CopyOutMasker:
    """Masks columns of a COPY TO STDOUT stream; `feed` takes one CopyData payload and
    returns the payload to send (possibly empty while a row is incomplete)."""

    def __init__(self, masks: Mapping[int, ColumnMask], options: Mapping[str, str],
                 binary: bool, counts: dict[str, int]) -> None:
        self.masks = dict(masks)
        self.counts = counts
        self.binary = binary
        fmt = options.get("format", "binary" if binary else "text").lower()
        if binary != (fmt == "binary"):
            raise UnsupportedCopy(f"COPY format {fmt!r} does not match the server's stream")
        self.csv = fmt == "csv"
        default_delim = "," if self.csv else "\t"
        delim = options.get("delimiter", default_delim)
        quote = options.get("quote", '"')
        escape = options.get("escape", quote)
        if any(len(x.encode()) != 1 for x in (delim, quote, escape)):
            raise UnsupportedCopy("COPY delimiter, quote and escape must be single bytes")
        self.delim = delim.encode()
        self.quote = quote.encode()
        self.escape = escape.encode()
        self.null = options.get("null", "" if self.csv else "\\N").encode()
        header = options.get("header", "false").lower()
        self.skip_lines = 1 if header in ("true", "on", "1", "match") else 0
        self._buf = b""
        self._binary_header_done = False

    def feed(self, payload: bytes) -> bytes:
        data = self._buf + payload if self._buf else payload
        if self.binary:
            out, rest = self._binary(data)
        else:
            out, rest = self._lines(data)
        self._buf = rest
        return out

    def pending(self) -> bool:
        return bool(self._buf)

    # -- text / csv --------------------------------------------------------------------------

    def _lines(self, data: bytes) -> tuple[bytes, bytes]:
        out: list[bytes] = []
        pos = 0
        n = len(data)
        while pos < n:
            end = self._line_end(data, pos)
            if end < 0:
                break
            line = data[pos:end]
            if self.skip_lines:
                self.skip_lines -= 1
                out.append(line + b"\n")
            else:
                out.append(self._mask_line(line) + b"\n")
            pos = end + 1
        return b"".join(out), data[pos:]

    def _line_end(self, data: bytes, pos: int) -> int:
        if not self.csv:
            return data.find(b"\n", pos)  # text format escapes newlines inside values
        return self._csv_scan(data, pos, None)

    def _split(self, line: bytes) -> list[bytes]:
        cuts: list[int] = []
        if self.csv:
            self._csv_scan(line, 0, cuts)
        else:
            i, n, d = 0, len(line), self.delim[0]
            while i < n:
                c = line[i]
                if c == 0x5C:  # backslash escapes the next byte (including the delimiter)
                    i += 2
                    continue
                if c == d:
                    cuts.append(i)
                i += 1
        fields, start = [], 0
        for cut in cuts:
            fields.append(line[start:cut])
            start = cut + 1
        fields.append(line[start:])
        return fields

    def _csv_scan(self, data: bytes, pos: int, cuts: list[int] | None) -> int:
        """Walk csv from `pos` honouring quotes and escapes. Without `cuts`: the index of
        the newline ending the row (-1 if it has not arrived). With `cuts`: collect the
        positions of delimiters outside quotes in the whole of `data`; returns -1."""
        q, e, d = self.quote[0], self.escape[0], self.delim[0]
        quoted = False
        i, n = pos, len(data)
        while i < n:
            c = data[i]
            if quoted:
                if c == e and e != q and i + 1 < n and data[i + 1] in (q, e):
                    i += 2
                    continue
                if c == q:
                    if e == q and i + 1 < n and data[i + 1] == q:
                        i += 2
                        continue
                    quoted = False
            elif c == q:
                quoted = True
            elif cuts is not None and c == d:
                cuts.append(i)
            elif cuts is None and c == 0x0A:
                return i
            i += 1
        return -1

    def _mask_line(self, line: bytes) -> bytes:
        cr = line.endswith(b"\r")
        if cr:
            line = line[:-1]
        fields = self._split(line)
        for i, m in self.masks.items():
            if i >= len(fields):
                raise UnsupportedCopy("a COPY row has fewer columns than its statement")
            raw = fields[i]
            if raw == self.null:
                continue  # NULL stays NULL (csv: an unquoted empty field)
            self.counts[m.column] = self.counts.get(m.column, 0) + 1
            new = m.masker(self._unquote(raw))
            fields[i] = self.null if new is None else self._quote(new)
        out = self.delim.join(fields)
        return out + b"\r" if cr else out

    def _unquote(self, raw: bytes) -> bytes:
        if not self.csv or not raw.startswith(self.quote):
            return raw
        inner = raw[1:-1]
        return inner.replace(self.escape + self.quote, self.quote).replace(
            self.escape + self.escape, self.escape)

    def _quote(self, value: bytes) -> bytes:
        # Masked values are ASCII without delimiters, quotes or backslashes; quote csv
        # values that could still collide with the null marker or the delimiter.
        if self.csv and (value == self.null or self.delim in value or self.quote in value):
            return self.quote + value.replace(self.quote, self.escape + self.quote) + self.quote
        if not self.csv and (b"\\" in value or self.delim in value or value == self.null):
            return value.replace(b"\\", b"\\\\").replace(self.delim, b"\\" + self.delim)
        return value

    # -- binary ------------------------------------------------------------------------------

    def _binary(self, data: bytes) -> tuple[bytes, bytes]:
        out: list[bytes] = []
        pos = 0
        n = len(data)
        if not self._binary_header_done:
            if n < 19:
                return b"", data
            if data[:11] != _BINARY_SIGNATURE:
                raise UnsupportedCopy("binary COPY stream without its signature")
            (ext,) = _I32.unpack_from(data, 15)
            if ext < 0 or n < 19 + ext:
                return b"", data
            out.append(data[: 19 + ext])
            pos = 19 + ext
            self._binary_header_done = True
        while n - pos >= 2:
            (count,) = _I16.unpack_from(data, pos)
            if count == -1:  # trailer
                out.append(data[pos:pos + 2])
                pos += 2
                continue
            row_end = self._binary_row_end(data, pos, count)
            if row_end < 0:
                break
            out.append(self._mask_binary_row(data, pos, count))
            pos = row_end
        return b"".join(out), data[pos:]

    @staticmethod
    def _binary_row_end(data: bytes, pos: int, count: int) -> int:
        p = pos + 2
        n = len(data)
        for _ in range(count):
            if n - p < 4:
                return -1
            (length,) = _I32.unpack_from(data, p)
            p += 4 + max(length, 0)
            if p > n:
                return -1
        return p

    def _mask_binary_row(self, data: bytes, pos: int, count: int) -> bytes:
        parts = [data[pos:pos + 2]]
        p = pos + 2
        for i in range(count):
            (length,) = _I32.unpack_from(data, p)
            start = p + 4
            end = start + max(length, 0)
            m = self.masks.get(i)
            if m is None:
                parts.append(data[p:end])
            else:
                value = None if length < 0 else data[start:end]
                new = m.masker(value)
                if value is not None:
                    self.counts[m.column] = self.counts.get(m.column, 0) + 1
                parts.append(b"\xff\xff\xff\xff" if new is None else _I32.pack(len(new)) + new)
            p = end
        return b"".join(parts)
