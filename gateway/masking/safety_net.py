"""The content safety net: find and mask Luhn-valid PANs in arbitrary outgoing bytes.

It runs over whole network buffers (many PostgreSQL messages, framing included) on the
way to the client and catches what lineage cannot: a PAN in an error DETAIL, in
``pg_stats``, in a function's output. A buffer is classified byte by byte (one C-level
``bytes.translate``) and searched for the two shapes every PAN hit contains (13 digits
in a row, or 4 digits + separator + 4 digits) with C substring search; only the runs
holding one are matched by the compiled run regex and looked at in Python. A buffer
without such a shape costs about 2 ms per MB and is returned as is (no copy).

What is a hit (the exact rules; tests pin each one)
---------------------------------------------------
* A **run** is a maximal sequence of ASCII digits and ``*`` in which two of them may be
  separated by one space or one dash. Two separators in a row, or any other byte, end
  the run. A run splits into **groups** at its separators.
* A **candidate** is either
  - a **segment**: a maximal sequence of 13-19 ASCII digits (any non-digit byte bounds
    it: ``ref4111111111111111x``, ``"pan":"..."``, ``<pan>...</pan>``, ``*4111...``), or
  - consecutive all-digit groups in a common PAN grouping: 4-4-4-n (n = 1..4),
    4-4-4-4-n (n = 1..3), 4-4-5, 4-6-4 (Diners), 4-6-5 (Amex ``3782-822463-10005``).
    Separators may be mixed. The groups around it do not matter
    (``2024-01-15 4111 1111 1111 1111`` holds a candidate).
* A candidate is a **hit** when its digits are Luhn-valid and still number at least 13
  once leading zeros are dropped (a PAN never starts with 0; ``0000000000000000`` and
  ``0000000000004111`` are Luhn-valid but not PANs; a PAN behind one ``0`` is found).
* A digit sequence is never split: digits directly before or after a 13-19 digit
  window make it part of a longer number, not a PAN. So a sequence of 20 or more digits
  is never a hit, even when a Luhn-valid PAN sits inside it
  (``12345678904111111111111111``): scanning every 13-19 window would flag about 97%
  of 20-digit numbers (each window passes Luhn one time in ten) and corrupt every long
  numeric value in the stream. Likewise a 14-19 digit sequence that is not Luhn-valid as
  a whole is left alone even if a sub-window is, and a group of a grouping glued to
  other digits (``14111 1111 1111 1111``) or holding a ``*`` is not that group. These,
  and deliberate encodings (reversed, spelled out, interleaved), which no content scan
  can catch, are the blind spots.

``*`` belongs to runs and groups (but never to a candidate) so that masking, which only
turns digits into ``*``, never moves a group or segment boundary: a masked hit holds a
``*``, every other candidate keeps its bytes, so the output of `mask_in_place` never
holds a hit (masking is idempotent) and already-masked values (``************1111``,
``411111******1111``) are never flagged.

What is masked
--------------
Every digit of a hit becomes ``*`` except its last four and except the first three
digits of the run that contains it; separators and every other byte stay. The length
of the buffer never changes. The *framing guard* (first three digits of a run) is there
because a run can begin with the low-order bytes of a binary length: a DataRow field
or CopyData payload of length 0x31 is preceded by the byte ``1``, one of length 0x3131
by ``11``, and a NotificationResponse channel by its process id. Changing such a byte
would re-frame the stream under attacker-chosen content (message injection into the
client). In a PostgreSQL backend stream (after startup) such binary bytes are always
among the first three bytes of a run, for fields shorter than 0x2A000000 bytes (704 MB;
the byte before them is then a length byte outside ``[0-9*]``); the trailing side of a
field is always followed by a byte outside runs (0x00/0xFF of the next length, a message
type letter, a NUL terminator). A hit that starts its run thus shows at most its first
three and last four digits (``411*********1111``), within what PCI DSS 3.4.1 allows to be
displayed (first six and last four); a hit inside a run keeps only its last four.

Length bytes
------------
A PAN at the very start of a field whose length has digits as low bytes is seen glued
to them: a 49-byte field ``4111111111111111 exp 12/27 ...`` is framed ``00 00 00 31``
and the run reads ``14111111111111111``, which by the no-split rule is no PAN. Where a
run follows three zero bytes (a length of 48-57 bytes) it is also read without its first
digit, and where it follows two zero bytes (0x3030-0x3939 bytes) without its first two;
no text can put those bytes there (text values hold no NUL), so this costs no false hits
on text. The framing guard keeps the length digits. Still missed: lengths whose high
byte is not zero (304-313, 560-569, ... bytes), where the bytes before the run are those
of any short field's length, and a grouped PAN glued to such a digit.

Bytes 0x30-0x39 are ASCII digits in every client encoding the gateway accepts (UTF-8,
the single-byte and EUC encodings; SJIS, BIG5, GBK, UHC, GB18030 and JOHAB are refused at
startup), so a byte-level scan is exact and ``*`` is valid everywhere. Masking digits
inside a number of a typed text value (JSON, numeric) makes that value invalid for its
type: the client gets an error rather than a PAN. Scan only post-startup traffic.
"""

from __future__ import annotations

import re

from gateway import native

__all__ = [
    "GROUPINGS",
    "HOLD_BACK",
    "StreamScanner",
    "luhn_valid",
    "mask_in_place",
    "scan",
]

_PAN_MIN, _PAN_MAX = 13, 19

# A run of at least 13 digits or stars with single optional separators, matched where a
# run starts (the caller finds the start); the possessive repeat never backtracks, and
# greediness makes it maximal.
_RUN = re.compile(rb"[0-9*](?:[ -]?[0-9*]){12,}+")

# Trailing bytes of a buffer whose decision may still depend on the bytes to come: the
# digits and separators after the last star or other byte. (A group holding a star can
# no longer be part of a grouping, and a star ends a segment.)
_OPEN_TAIL = re.compile(rb"[0-9](?:[ -]?[0-9])*[ -]?\Z")

GROUPINGS = frozenset({
    (4, 4, 4, 1), (4, 4, 4, 2), (4, 4, 4, 3), (4, 4, 4, 4),
    (4, 4, 4, 4, 1), (4, 4, 4, 4, 2), (4, 4, 4, 4, 3),
    (4, 4, 5), (4, 6, 4), (4, 6, 5),
})
_GROUPING_SIZES = tuple(sorted({len(g) for g in GROUPINGS}))

# The longest candidate in bytes: 4-4-4-4-3 is 19 digits and 4 separators.
_MAX_SPAN = max(max(sum(g) + len(g) - 1 for g in GROUPINGS), _PAN_MAX)
#: Bytes `StreamScanner` may hold back at the end of a chunk.
HOLD_BACK = _MAX_SPAN
# Original bytes StreamScanner keeps before the held ones, so that a run, its groups and
# its candidates look the same as in the whole stream (must exceed _MAX_SPAN).
_CONTEXT = 32

_FRAMING_DIGITS = 3

_VAL = bytes.maketrans(b"0123456789", bytes(range(10)))
_DBL = bytes.maketrans(b"0123456789", bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))
_STAR = bytes.maketrans(b"0123456789", b"*" * 10)
_DIGIT_BYTES = frozenset(b"0123456789")
# Byte classes for the prefilter: digit "d", separator "s", star "a", anything else "x".
_CLASS = bytes(0x64 if 0x30 <= b <= 0x39 else 0x73 if b in (0x20, 0x2D)
               else 0x61 if b == 0x2A else 0x78 for b in range(256))
_S, _X = 0x73, 0x78
_OPEN_CLASSES = frozenset(b"ds")
_NEEDLE_LONG = b"d" * _PAN_MIN
_NEEDLE_GROUPED = b"dddds" + b"dddd"
# The prefilter in one pass (gateway/masking/_prefilter.c); None: `quiet` below.
_native = native.load("gateway.masking._prefilter")


def luhn_valid(digits: bytes) -> bool:
    """Whether `digits` (ASCII digits only, at least one) pass the Luhn check."""
    if not digits.isdigit():
        return False
    r = digits[::-1]
    return (sum(r[0::2].translate(_VAL)) + sum(r[1::2].translate(_DBL))) % 10 == 0


def _is_pan(d: bytes) -> bool:
    return (_PAN_MIN <= len(d) <= _PAN_MAX and len(d.lstrip(b"0")) >= _PAN_MIN
            and luhn_valid(d))


def _segment_hits(group: bytes, at: int, hits: list[tuple[int, int]]) -> None:
    """Hits among the digit segments of a group that holds a star."""
    for seg in group.split(b"*"):
        if _is_pan(seg):
            hits.append((at, at + len(seg)))
        at += len(seg) + 1


def _run_hits(buf: bytes, s: int, e: int) -> list[tuple[int, int]]:
    """Hits (start, end) inside the run buf[s:e], possibly overlapping."""
    hits = _hits_in(buf, s, e)
    for k in _length_digits(buf, s):
        if buf[s : s + k + 1].isdigit():
            hits += _hits_in(buf, s + k, e)
    return hits


def _length_digits(buf: bytes, s: int) -> tuple[int, ...]:
    """How many leading digits of the run at `s` may be the low bytes of a binary length
    (see "Length bytes" in the module doc): 1 after three zero bytes (a field of 48-57
    bytes), 2 after two (0x3030-0x3939 bytes)."""
    if s < 2 or buf[s - 1] or buf[s - 2]:
        return ()
    if s >= 3 and not buf[s - 3]:
        return (1, 2)
    return (2,)


def _hits_in(buf: bytes, s: int, e: int) -> list[tuple[int, int]]:
    run = buf[s:e]
    if len(run) < _PAN_MIN:
        return []
    if run.isdigit():
        return [(s, e)] if _is_pan(run) else []
    groups = run.replace(b"-", b" ").split(b" ")
    n = len(groups)
    # A group holding a star gets a length no grouping uses, so windows skip it.
    lens = [len(g) if g.isdigit() else -1 for g in groups]
    hits: list[tuple[int, int]] = []
    at = s
    starts = []
    for g in groups:
        starts.append(at)
        at += len(g) + 1
    for i, ln in enumerate(lens):
        if ln >= _PAN_MIN:
            if _is_pan(groups[i]):
                hits.append((starts[i], starts[i] + ln))
        elif ln == 4:
            for k in _GROUPING_SIZES:
                j = i + k
                if j <= n and tuple(lens[i:j]) in GROUPINGS:
                    if _is_pan(b"".join(groups[i:j])):
                        hits.append((starts[i], starts[j - 1] + lens[j - 1]))
        elif ln < 0 and len(groups[i]) >= _PAN_MIN:
            _segment_hits(groups[i], starts[i], hits)
    return hits


def _analyze(buf: bytes) -> list[tuple[int, list[tuple[int, int]]]]:
    """For each run with hits: (end of its framing guard, its hits).

    Every hit contains 13 contiguous digits or ``dddd`` + separator + ``dddd``, so those
    two needles are searched (C substring search) in a copy of `buf` where each byte is
    replaced by its class; only the runs that hold one are matched with `_RUN`.
    """
    tb = buf.translate(_CLASS)
    found = []
    nxt_long = tb.find(_NEEDLE_LONG)
    nxt_grouped = tb.find(_NEEDLE_GROUPED)
    floor = 0  # no run holding a later needle starts before this
    while nxt_long >= 0 or nxt_grouped >= 0:
        if nxt_long < 0 or 0 <= nxt_grouped < nxt_long:
            p = nxt_grouped
        else:
            p = nxt_long
        # Back to the start of the run holding p: after the last other byte or "ss".
        start = max(floor, tb.rfind(b"x", floor, p) + 1)
        pair = tb.rfind(b"ss", start, p)
        if pair >= 0:
            start = pair + 2
        if tb[start] == _S:
            start += 1
        m = _RUN.match(buf, start)
        if m is None:  # a run of fewer than 13 digits or stars: later needles may be in it
            floor, resume = start, p + 1
        else:
            s, resume = m.span()
            floor = resume
            hits = _run_hits(buf, s, resume)
            if hits:
                g, seen = s, 0
                while seen < _FRAMING_DIGITS:  # a run with a hit has >= 13 digits
                    if buf[g] in _DIGIT_BYTES:
                        seen += 1
                    g += 1
                found.append((g, hits))
        if 0 <= nxt_long < resume:
            nxt_long = tb.find(_NEEDLE_LONG, resume)
        if 0 <= nxt_grouped < resume:
            nxt_grouped = tb.find(_NEEDLE_GROUPED, resume)
    return found


def _merge(hits: list[tuple[int, int]]) -> list[tuple[int, int]]:
    hits = sorted(hits)
    merged = [hits[0]]
    for s, e in hits[1:]:
        ms, me = merged[-1]
        if s < me:
            merged[-1] = (ms, max(me, e))
        else:
            merged.append((s, e))
    return merged


def scan(buf: bytes) -> list[tuple[int, int]]:
    """Byte spans (start, end) of the PAN hits in `buf`, sorted; overlapping hits merged."""
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    spans: list[tuple[int, int]] = []
    for _guard, hits in _analyze(buf):
        spans.extend(_merge(hits))
    return spans


def _mask(buf: bytes) -> tuple[bytes, list[tuple[int, int]]]:
    found = _analyze(buf)
    if not found:
        return buf, []
    out = bytearray(buf)
    spans: list[tuple[int, int]] = []
    for guard, hits in found:
        for s, e in hits:
            keep, seen = e, 0
            while seen < 4:  # back to the hit's fourth digit from the end
                keep -= 1
                if buf[keep] in _DIGIT_BYTES:
                    seen += 1
            lo = max(s, guard)
            if lo < keep:
                out[lo:keep] = out[lo:keep].translate(_STAR)
        spans.extend(_merge(hits))
    return bytes(out), spans


def mask_in_place(buf: bytes) -> tuple[bytes, int]:
    """`buf` with every hit masked (same length), and the number of hits.

    Returns `buf` itself when there is nothing to mask.
    """
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    out, spans = _mask(buf)
    return out, len(spans)


def quiet(chunk: bytes) -> bool:
    """Whether `chunk` holds neither needle and does not end in an open run: no hit can
    start in it (`_prefilter.c` answers the same in one pass when built)."""
    tb = chunk.translate(_CLASS)
    return (tb.find(_NEEDLE_LONG) < 0 and tb.find(_NEEDLE_GROUPED) < 0
            and (not tb or tb[-1] not in _OPEN_CLASSES  # an open tail ends in one of them
                 or _OPEN_TAIL.search(chunk, max(0, len(chunk) - HOLD_BACK)) is None))


class StreamScanner:
    """`mask_in_place` over a stream cut into arbitrary chunks.

    ``feed`` returns the bytes that are final now; when a chunk ends inside a possible
    run (a digit, or a separator after a digit) it holds back at most `HOLD_BACK` (23)
    bytes, the longest candidate. ``flush`` returns the rest at the end of the stream.
    The concatenated output always equals ``mask_in_place`` of the concatenated input,
    so a PAN split across chunks is masked, and the framing guard sees the same runs.
    ``hits`` counts the hits found so far, each once; ``ends`` lists where each hit the
    last ``feed``/``flush`` counted ends, as offsets into the bytes that call returned
    (so that a caller can tell whose message each hit was in).

    To decide the held bytes like the whole stream would, the scanner also keeps the
    last 32 original bytes it already returned: any candidate is at most 23 bytes long,
    so no candidate that touches a returned-but-remembered edge can reach a byte it
    still has to decide.
    """

    __slots__ = ("_ctx", "_held", "ends", "hits", "returned_held")

    def __init__(self) -> None:
        self._ctx = b""  # original bytes already returned, for context only
        self._held = b""  # original bytes not returned yet
        self.hits = 0
        self.ends: list[int] = []
        #: how many bytes the last feed() returned ahead of its chunk's (held from before)
        self.returned_held = 0

    def feed(self, chunk: bytes) -> bytes:
        if self.ends:
            self.ends = []
        self.returned_held = len(self._held)
        if not chunk:
            return b""
        if not self._held:
            # Fast path, the usual case: nothing held, so no PAN shape can straddle the
            # previous chunk (its output never ends in digits or a separator after one).
            # A chunk with neither needle and no open tail is returned as is.
            if _native.quiet(chunk) if _native is not None else quiet(chunk):
                ctx = self._ctx + chunk if len(chunk) < _CONTEXT else chunk
                self._ctx = bytes(ctx[-_CONTEXT:])
                return chunk
        ctx = self._ctx
        if self._held or (ctx and _CLASS[ctx[-1]] != _X):
            data = ctx + self._held + bytes(chunk)
        else:  # no run crosses into this chunk; only the zero bytes of a length before a
            ctx = ctx[-3:]  # run at its very start can change a decision (Length bytes)
            data = ctx + bytes(chunk)
        base = len(ctx)
        end = len(data)
        cut = end
        if _CLASS[data[-1]] in _OPEN_CLASSES:  # a digit or a separator: maybe open
            m = _OPEN_TAIL.search(data, max(base, end - HOLD_BACK))
            if m:
                cut = m.start()
        out, spans = _mask(data)
        self._count(spans, base, cut)
        self._ctx = data[max(0, cut - _CONTEXT):cut]
        self._held = data[cut:]
        return out[base:cut]

    def holding(self) -> bool:
        """True while bytes are held back (the output so far stops short of the input)."""
        return bool(self._held)

    def flush(self) -> bytes:
        """The held bytes, masked; the scanner is ready for a new stream afterwards."""
        if self.ends:
            self.ends = []
        data = self._ctx + self._held
        base = len(self._ctx)
        out, spans = _mask(data) if self._held else (data, [])
        self._count(spans, base, len(data))
        self._ctx = self._held = b""
        return out[base:]

    def _count(self, spans: list[tuple[int, int]], base: int, cut: int) -> None:
        # A hit is final and new when its last byte lies in the part returned now.
        for _s, e in spans:
            if base < e <= cut:
                self.hits += 1
                self.ends.append(e - base)
