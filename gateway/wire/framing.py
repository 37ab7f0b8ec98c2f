"""Splitting a byte stream of typed messages (1-byte type, int32 length, body).

Two shapes, because the two directions have different costs:

* `MessageFramer` buffers whole messages; the gateway must see every client message
  before it decides what reaches the database.
* `BackendObserver` never holds the stream: the caller forwards the bytes as they are,
  except the few small message types the session must react to (and may replace), which
  are held until whole. A large DataRow or CopyData passes through without being
  buffered or copied.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable
from types import ModuleType

from .errors import ProtocolViolation

_LEN = struct.Struct("!i")


def _load_native() -> ModuleType | None:
    """The compiled loops (`_framing.c`), or None: the Python loops below.
    gateway.native.load's rule written out, as wire/ imports nothing else from gateway
    (DESIGN §1)."""
    if os.environ.get("PGWARDEN_PURE_PYTHON"):
        return None
    try:
        from . import _framing  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _framing


_native = _load_native()

Frame = tuple[int, bytes]
RUN = 0x100  # event type flag: a run of whole messages of one type, raw (see coalesce)
WALKED = 0x200  # with RUN: the run as `walk_run` rewrote it (see walk_run)

#: walk_run(data, pos, max_size) -> (end of the run, its replacement) or None
RunWalker = Callable[[bytes, int, int], "tuple[int, bytes] | None"]
#: type, body, start and end offsets, and the rows passed since the previous event
#: (stepped over, or in this event's run)
Event = tuple[int, bytes, int, int, int]
DATA_ROW = 0x44  # 'D'
COPY_DATA = 0x64  # 'd': a row of a COPY TO (the server sends one per row)
#: the messages counted in an event's last member: a result's rows, a COPY TO's
ROWS = frozenset({DATA_ROW, COPY_DATA})


@functools.lru_cache(maxsize=8)  # one set per kind of framer: built once, not per session
def _allowed_table(allowed: frozenset[int]) -> bytes:
    """For the compiled framer, per type byte: 1 allowed, 0 not."""
    return bytes(1 if b in allowed else 0 for b in range(256))


class MessageFramer:
    def __init__(self, allowed_types: frozenset[int], max_size: int) -> None:
        self._allowed = allowed_types
        self._max = max_size
        self._buf: bytearray = bytearray()
        self._frames = _native.frames if _native is not None else None
        self._table = _allowed_table(allowed_types)

    def feed(self, data: bytes) -> tuple[bytes, list[Frame]]:
        """Returns the bytes of every message completed by `data`, and those messages."""
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data
        n = len(buf)
        pos = 0
        frames: list[Frame] = []
        if self._frames is not None and type(buf) is bytes:
            # whole messages in C; it stops where the loop below raises or waits for more
            pos = self._frames(buf, 0, self._table, self._max, frames)
        unpack = _LEN.unpack_from
        while n - pos >= 5:
            mtype = buf[pos]
            (length,) = unpack(buf, pos + 1)
            if mtype not in self._allowed:
                raise ProtocolViolation(f"unexpected message type 0x{mtype:02x}")
            if length < 4:
                raise ProtocolViolation("invalid message length")
            if length > self._max:
                raise ProtocolViolation("message exceeds the gateway's size limit", "54000")
            end = pos + 1 + length
            if end > n:
                break
            frames.append((mtype, bytes(buf[pos + 5 : end])))
            pos = end
        if pos == n:  # the usual case: whole messages only, nothing left over
            if buf is data:
                return data, frames
            self._buf = bytearray()
            return bytes(buf), frames
        if 0 < n - pos < 5:
            # A partial header may already tell a bad type; fail before waiting for more.
            if buf[pos] not in self._allowed:
                raise ProtocolViolation(f"unexpected message type 0x{buf[pos]:02x}")
        complete = bytes(buf[:pos])
        # Keep the unfinished message where it is: copying it whole on every read made a
        # client that trickles in the end of a big message cost CPU per byte times size.
        if buf is not self._buf:
            self._buf = bytearray(buf[pos:])
        elif pos:
            del self._buf[:pos]
        return complete, frames

    def has_partial(self) -> bool:
        return bool(self._buf)

    def take_rest(self) -> bytes:
        """Hands over the bytes of an unfinished message, e.g. when another reader takes over."""
        out = bytes(self._buf)
        self._buf = bytearray()
        return out


@functools.lru_cache(maxsize=64)  # a handful of sets in practice; never unbounded
def _scan_table(known: frozenset[int], observed: frozenset[int],
                coalesce: frozenset[int]) -> bytes:
    """For the compiled step, per type byte: 0 unknown, 1 known and not observed,
    2 observed, 3 observed and coalesced (left to the Python loop)."""
    return bytes(0 if b not in known else 1 if b not in observed else
                 3 if b in coalesce else 2 for b in range(256))


@functools.lru_cache(maxsize=4)
def _run_table(mtype: int) -> bytes:
    """The compiled step's table that steps over messages of `mtype` only."""
    return bytes(1 if b == mtype else 0 for b in range(256))


class BackendObserver:
    """Tracks message boundaries in a stream the caller forwards untouched."""

    def __init__(
        self, known_types: frozenset[int], observed: frozenset[int], max_observed_size: int
    ) -> None:
        self._known = known_types
        self.observed = observed
        #: observed types whose consecutive whole messages come as one event of type
        #: ``RUN | type`` with the raw messages (headers included) as its body: a caller
        #: that rewrites every row of a result pays one event per buffer, not per row.
        self.coalesce: frozenset[int] = frozenset()
        #: Optional, for a caller that rewrites every message of a run anyway: it finds the
        #: run's end itself while rewriting (one pass over the rows instead of two) and
        #: the event is ``(RUN | WALKED | type, replacement, start, end)``. It is asked
        #: only for a run met before any other event of the same `relay` call (the
        #: caller's state is then the one its previous call left, which is the run's own
        #: result), and returns None to decline. It must stop at a message of another
        #: type or an incomplete one, and raise ProtocolViolation where `relay` would.
        self.walk_run: RunWalker | None = None
        self._max = max_observed_size
        self._skip = 0
        #: rows (DataRows, COPY TO's CopyData) passed since the last event (the next
        #: event carries them): what an error's statement sent before it, with no Python
        #: per row
        self._rows = 0
        self._partial = b""
        self._scan = _native.scan if _native is not None else None
        self._table = b""  # the scan's table for the sets in _table_for
        self._table_for: tuple[frozenset[int] | None, frozenset[int] | None] = (None, None)

    def relay(self, data: bytes) -> tuple[bytes, list[Event]]:
        """Returns the bytes to forward now and the observed messages within them.

        Observed messages are forwarded only once whole (they are small: the caller may
        need to replace one), so each event's (start, end) lies inside the returned bytes.
        Unobserved messages stream through as they arrive. Each event also counts the
        rows (DataRows, a COPY TO's CopyData: ROWS) since the one before it, its own
        included (a row is counted once its header has passed: the rest of it goes out as
        it arrives).
        """
        pos = 0
        if self._skip:
            k = min(self._skip, len(data))
            self._skip -= k
            pos = k
            if self._skip:
                return data, []
        if self._partial:  # never together with a skip
            data = self._partial + data
            self._partial = b""
        n = len(data)
        forward_end = n
        events: list[Event] = []
        observed = self.observed
        unpack = _LEN.unpack_from
        scan = self._scan if type(data) is bytes else None
        table = self._table
        if observed is not self._table_for[0] or self.coalesce is not self._table_for[1]:
            table = self._table = _scan_table(self._known, observed, self.coalesce)
            self._table_for = (observed, self.coalesce)
        rows = self._rows
        while pos < n:
            if scan is not None:  # whole messages in C: no Python per row, one call per answer
                pos, rows = scan(data, pos, table, self._max, events, rows)
                if pos == n:
                    break
            if n - pos < 5:
                self._partial = data[pos:]
                forward_end = pos
                break
            mtype = data[pos]
            (length,) = unpack(data, pos + 1)
            if length < 4 or mtype not in self._known:
                raise ProtocolViolation("upstream sent an invalid message")
            end = pos + 1 + length
            if mtype in observed:
                if length > self._max:
                    raise ProtocolViolation("upstream message exceeds the size limit")
                if end > n:
                    self._partial = data[pos:]
                    forward_end = pos
                    break
                if mtype in self.coalesce:
                    walker = self.walk_run
                    if walker is not None and not events:
                        walked = walker(data, pos, self._max)
                        if walked is not None:
                            run_end, replacement = walked
                            if not pos < run_end <= n:
                                raise ProtocolViolation("a run walker went astray")
                            if mtype in ROWS:
                                rows += self._count_run(data, pos, run_end, mtype)
                            events.append((RUN | WALKED | mtype, replacement, pos, run_end,
                                           rows))
                            rows = 0
                            pos = run_end
                            continue
                    run_end, count = self._run_end(data, pos, mtype)
                    events.append((RUN | mtype, data[pos:run_end], pos, run_end,
                                   rows + count if mtype in ROWS else rows))
                    rows = 0
                    pos = run_end
                    continue
                events.append((mtype, data[pos + 5 : end], pos, end,
                               rows + 1 if mtype in ROWS else rows))
                rows = 0
                pos = end
                continue
            if mtype in ROWS:
                rows += 1
            if end > n:
                self._skip = end - n
                break
            pos = end
        self._rows = rows
        return (data if forward_end == n else data[:forward_end]), events

    def _count_run(self, data: bytes, pos: int, run_end: int, mtype: int) -> int:
        """How many messages a walker's run holds: one step in C (a walked run is a
        masked result's rows, which the walker did not count)."""
        if self._scan is not None and type(data) is bytes:
            end, count = self._scan(data, pos, _run_table(mtype), self._max, [], 0)
        else:
            end, count = self._run_end(data, pos, mtype)
        if end != run_end:
            raise ProtocolViolation("a run walker went astray")
        return count

    def _run_end(self, data: bytes, pos: int, mtype: int) -> tuple[int, int]:
        """End of the whole messages of type `mtype` that start at `pos`, and how many."""
        n = len(data)
        unpack = _LEN.unpack_from
        limit = self._max
        count = 0
        while n - pos >= 5 and data[pos] == mtype:
            (length,) = unpack(data, pos + 1)
            if length < 4:
                raise ProtocolViolation("upstream sent an invalid message")
            if length > limit:
                raise ProtocolViolation("upstream message exceeds the size limit")
            end = pos + 1 + length
            if end > n:
                break
            pos = end
            count += 1
        return pos, count

    def take_rows(self) -> int:
        """The rows passed since the last event (no event has counted them yet)."""
        rows, self._rows = self._rows, 0
        return rows

    def feed(self, data: bytes) -> list[Frame]:
        """The observed messages completed by `data` (for callers that forward nothing)."""
        return [(t, body) for t, body, *_ in self.relay(data)[1]]

    def forwarded_at_boundary(self) -> bool:
        """True when no message is half-forwarded, so another may be injected now."""
        return not self._skip

    def at_boundary(self) -> bool:
        return not self._skip and not self._partial
