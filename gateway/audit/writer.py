"""The audit writer: chains records on the caller's thread, writes them in batches on its own.

    writer = AuditWriter(FileSink(dir, "gw1"), instance="gw1", signer=signer)
    writer.start()                                  # resume the chain, open a new segment
    seq = writer.append(records.decision_record(...))   # never waits on disk
    if not writer.is_durable(seq):
        await writer.wait_durable(seq)              # raises AuditUnavailable (58030)
    ...
    writer.close()                                  # final checkpoint, flush, stop

Group commit
------------
:meth:`append` seals the record (seq, prev, hash: a few microseconds, under a lock) and
queues its line; it wakes the writer thread only when the queue was empty. The thread
takes the whole queue, writes it with one ``write()`` per segment, and with
``durability="fsync"`` one ``fsync()`` per batch, then marks everything up to the last
seq durable and resolves the waiters of each event loop with one
``call_soon_threadsafe``. While it writes, new records pile up for the next batch, so
the cost of a sync is shared by every statement that arrived meanwhile.

Failure and recovery (fail closed)
----------------------------------
When the sink fails (disk full, permissions, the PostgreSQL sink unreachable) the writer
turns unhealthy: :attr:`healthy` is False, :meth:`check` and every pending and new
:meth:`wait_durable` raise :class:`AuditUnavailable` (SQLSTATE 58030), and the gate must
refuse new statements. The records already sealed stay queued, in order; the writer
retries every ``retry_seconds`` and, once the whole backlog is written, turns healthy
again. A file write cut short by the disk resumes at the first unwritten byte, so no
record is lost or written twice. Appends beyond ``max_backlog`` records not yet durable
raise AuditUnavailable: the chain is never given a record it cannot keep.

Checkpoints and segments
------------------------
Every ``checkpoint_every`` records, every ``checkpoint_seconds`` (when records were
added since the last one), before each segment rotation and at :meth:`close` (with
``final: true``) the writer appends a signed checkpoint. Sinks with segments (files)
rotate when a segment holds ``segment_bytes`` or has been open ``segment_seconds``; each
segment starts with a ``segment`` record naming the previous segment and chain head,
then restates every session open then (``session.update``, ``restated: "segment"``):
a log whose older segments retention removed still holds the facts each later decision
was made under, for ``policy replay``, ``audit explain`` and ``audit show``. A sink
without segments (a table, whose rows retention removes by age) gets the same every
``segment_seconds`` (``restated: "interval"``). The writer follows which sessions are
open by the ``session.start``/``session.update``/``session.end`` records it appends.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from gateway import logs

from .canonical import GENESIS
from .chain import Chain, Sealed
from .checkpoint import Signer
from .ledger import new_ledger
from .template import RecordTemplate, TemplateMismatch

__all__ = [
    "AuditError",
    "AuditUnavailable",
    "AuditWriter",
    "ResumeState",
    "Sink",
    "WriterOptions",
]

DURABILITY = ("os", "fsync")


class AuditError(Exception):
    """The audit log cannot be opened (bad settings, another writer holds the instance,
    a damaged last record): the gateway must not start."""


class AuditUnavailable(Exception):
    """The audit trail cannot record right now: refuse the statement with this SQLSTATE."""

    sqlstate = "58030"

    def __init__(self, reason: str) -> None:
        super().__init__(f"the audit trail is unavailable ({reason}): "
                         "statements are refused until it recovers")
        self.reason = reason


class ResumeState(NamedTuple):
    """Where a sink's chain for this instance stands (None from ``acquire`` when empty)."""

    seq: int
    hash: str
    next_segment: int
    previous_segment: str | None  # where the last record is (a file name), if anywhere
    torn_bytes: int = 0  # a partial last line removed (a crash mid-write)
    sealed: bool = True  # the last record is a final checkpoint (or there is none)


class Sink(Protocol):
    """Where lines go. After acquire(), by whoever holds the writer's write lock (its
    thread, or write_through() on an event loop); retire() by the writer thread alone."""

    kind: str
    segments: bool  # rotate into segments (files) or not (a table)

    def acquire(self) -> ResumeState | None: ...
    def location(self, n: int) -> str: ...
    def open_segment(self, n: int) -> None: ...
    def write(self, batch: Sequence[Sealed]) -> None: ...
    def sync(self) -> None: ...
    def retire(self) -> None: ...  # finish with what open_segment() closed; may block
    def close(self) -> None: ...


@dataclass(frozen=True)
class WriterOptions:
    durability: str = "os"  # os: written to the OS; fsync: on disk (or committed)
    checkpoint_every: int = 10_000  # records; 0 = only by time and at shutdown
    checkpoint_seconds: float = 60.0  # 0 = only by count and at shutdown
    segment_bytes: int = 64 * 1024 * 1024
    segment_seconds: float | None = 86_400.0
    retry_seconds: float = 1.0
    max_backlog: int = 100_000
    close_timeout: float = 10.0
    #: records queued with wake=False past which admit() has the thread write them
    #: rather than wait for its timer: large writes cost the kernel less per byte
    batch_records: int = 8192

    def __post_init__(self) -> None:
        if self.durability not in DURABILITY:
            raise ValueError(f"audit durability must be one of {', '.join(DURABILITY)}, "
                             f"not {self.durability!r}")
        if self.checkpoint_every < 0 or self.checkpoint_seconds < 0:
            raise ValueError("checkpoint intervals must be >= 0")
        if self.segment_bytes < 4096:
            raise ValueError("segment_bytes must be at least 4096")
        if self.max_backlog < 1 or self.retry_seconds <= 0:
            raise ValueError("max_backlog must be >= 1 and retry_seconds > 0")
        if self.batch_records < 1:
            raise ValueError("batch_records must be >= 1")


class AuditWriter:
    """One instance's chain, written to one sink. Thread-safe; one per gateway process."""

    # (slots: past 30 attributes CPython 3.11 gives instances unshared dicts, and the
    # attribute reads of append and write_through, once or more per statement, slow)
    __slots__ = (
        "_anchors", "_carry", "_chain", "_clock", "_closed", "_cond", "_error", "_flushing",
        "_fsync",
        "_io_lock", "_io_rotations", "_last_checkpoint", "_lock", "_open_sessions",
        "_retry_at", "_rotations",
        "_segment", "_segment_opened", "_started", "_stop_deadline", "_stopping", "_thread",
        "_tiebreak", "_waiters", "_wake", "healthy", "instance", "ledger", "on_health",
        "options", "resumed", "signer", "sink", "writes_through",
    )

    def __init__(self, sink: Sink, *, instance: str, signer: Signer | None = None,
                 options: WriterOptions | None = None,
                 on_health: Callable[[bool, str | None], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self.instance = instance
        self.signer = signer
        self.options = options or WriterOptions()
        self.on_health = on_health
        self._clock = clock
        self._fsync = self.options.durability == "fsync"
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._flushing = 0  # threads in flush(): only they wait on _cond
        # Held while taking the queue and writing it, by the writer thread or by
        # write_through() on an event loop: records reach the sink in seq order.
        self._io_lock = threading.Lock()
        self._carry: list[Sealed] = []  # taken from the queue, not written (sink failing)
        self._io_rotations: dict[int, int] = {}
        self._wake = threading.Event()
        self._chain = Chain(instance)
        # the chain's head, the queue, the durable seq and the counts: see ledger.py
        self.ledger = new_ledger(
            self._chain, self._lock, self._due_locked, max_backlog=self.options.max_backlog,
            checkpoint_every=self.options.checkpoint_every,
            segment_limit=self.options.segment_bytes if sink.segments else 0)
        # seq of a segment's header record -> the segment it opens (before it is written)
        self._rotations: dict[int, int] = {}
        # Checkpoints and run starts sealed but not written yet: each is logged once it is
        # durable, as an anchor kept off the host (see _log_anchors).
        self._anchors: collections.deque[tuple[Sealed, bool, str]] = collections.deque()
        # each open session's id -> the record restating it at a new segment's start
        self._open_sessions: dict[str, dict[str, Any]] = {}
        self._error: str | None = None
        # Plain attributes, not properties: the gate reads them once per statement.
        # Whether the sink writes now (no error); and whether write_through() writes on
        # the caller's thread now (durability: os and healthy): a record appended now
        # can be made durable later, at once, without waiting. (_set_error keeps them.)
        self.healthy = True
        self.writes_through = not self._fsync
        self._retry_at = 0.0
        self._waiters: list[tuple[int, int, asyncio.Future[None], asyncio.AbstractEventLoop]] = []
        self._tiebreak = itertools.count()
        self._last_checkpoint = 0.0
        self._segment = 0
        self._segment_opened = 0.0
        self._started = False
        self._closed = False
        self._stopping = False
        self._stop_deadline = 0.0
        self._thread: threading.Thread | None = None
        self.resumed: ResumeState | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Acquire the sink, resume the chain and start the writer thread.

        Raises AuditError when the sink cannot be opened at all (fail closed at startup).
        """
        if self._started:
            raise AuditError("audit writer already started")
        try:
            state = self.sink.acquire()
        except Exception as exc:
            try:
                self.sink.close()  # release what acquire() took (a lock, a connection)
            except Exception as close_exc:
                logs.error("audit.close_failed", instance=self.instance, error=str(close_exc))
            if isinstance(exc, AuditError):
                raise
            raise AuditError(f"cannot open the audit {self.sink.kind} sink: {exc}") from exc
        self.resumed = state
        if state is not None and not state.sealed:
            # the new run's checkpoints will cover what the last run left unsigned, as it
            # is now: `audit verify` names that run end until told it was a crash
            logs.warning("audit.resumed_unsealed", instance=self.instance, seq=state.seq,
                         reason="the previous run ended without its final checkpoint (it "
                         "crashed, or its end was removed)")
        now = self._clock()
        with self._lock:
            if state is not None:
                self._chain.seq, self._chain.head = state.seq, state.hash
                self.ledger.durable = state.seq
            n = state.next_segment if state is not None else 1
            self._last_checkpoint = now
            self._open_segment_locked(n, "start", previous=state.previous_segment if state
                                      else None, torn=state.torn_bytes if state else 0)
            if state is not None and not state.sealed:
                # After a crash, sign at once: the crashed run's unsigned tail is verify's to
                # count (each run end on its own), and this run's own records must not add
                # to it if it crashes too before its first checkpoint by count or time.
                self._checkpoint_locked("resume")
            self._started = True
            self.ledger.open = True
        self._thread = threading.Thread(target=self._run, name=f"audit-{self.instance}",
                                        daemon=True)
        self._thread.start()
        self._wake.set()

    def close(self, timeout: float | None = None) -> bool:
        """Append the final checkpoint, write everything, stop. True when nothing was lost.

        Blocks up to `timeout` (default ``close_timeout``) while the sink fails: call it at
        shutdown, or from an executor, not on a busy event loop."""
        with self._lock:
            if self._closed or not self._started:
                self._closed = True
                return True
            # closed first: a statement's end kept from now on would follow the final
            # checkpoint (complete() keeps records without the lock; see ledger.py)
            self.ledger.open = False
            self._checkpoint_locked("shutdown", final=True)
            self._closed = True
            self._stopping = True
            target = self._chain.seq
            deadline = self._clock() + (self.options.close_timeout if timeout is None
                                        else timeout)
            self._stop_deadline = deadline
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - self._clock()) + 1.5)
        if self._thread is None or not self._thread.is_alive():
            try:
                self.sink.close()
            except Exception as exc:  # closing never raises into shutdown
                logs.error("audit.close_failed", instance=self.instance, error=str(exc))
        lost = target - self.ledger.durable
        if lost > 0:
            logs.error("audit.records_lost", instance=self.instance, records=lost,
                       error=self._error)
            with self._lock:
                waiting = [(fut, loop) for _, _, fut, loop in self._waiters]
                self._waiters = []
            if waiting:
                _dispatch(waiting, self._error or "the audit log closed")
        return lost <= 0

    # -- the hot path --------------------------------------------------------------------

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def durable_seq(self) -> int:
        return self.ledger.durable

    @property
    def head(self) -> tuple[int, str]:
        with self._lock:
            self.ledger.settle()
            return self._chain.seq, self._chain.head

    def check(self) -> None:
        """Raise AuditUnavailable while the sink cannot write (the gate's pre-check)."""
        error = self._error
        if error is not None:
            raise AuditUnavailable(error)

    def append(self, record: Mapping[str, Any], *, wake: bool = True,
               owed: bool = False) -> int:
        """Chain `record` and queue it; returns its seq. Never waits on the sink.

        ``wake=False`` leaves the writer thread asleep: the record goes out with the next
        batch (the next write_through(), or the thread's timer within a second) — for
        records nothing waits on, so a busy loop does not hand every one to the thread.
        ``owed``: the record of something that happened already (a statement's end, a
        session's): a full backlog, which is there to stop new work, does not refuse it
        (there are at most as many as statements and sessions in flight).
        Raises AuditUnavailable when the writer is closed or the backlog is full.
        """
        ledger = self.ledger
        rtype = record.get("type")
        with self._lock:
            if rtype == "session.end":  # (closed or not: the session is over)
                self._open_sessions.pop(_session_key(record), None)
            if not ledger.open or (not owed and ledger.refuses()):
                raise self.refusal()
            ledger.settle()  # (the statement records kept before it go first)
            sealed = self._chain.seal(record)
            ledger.push(sealed)
            if rtype in _SESSION_FACTS:  # in the chain after what it restates
                self._open_sessions[_session_key(record)] = _restatement(record)
            if ledger.due:
                self._due_locked()
        if wake:
            self.wake()
        return sealed.seq

    def template(self, record: Mapping[str, Any], holes: tuple[str, ...] = ()
                 ) -> RecordTemplate | None:
        """A template of `record` for :meth:`append_template` (None: it cannot be one)."""
        with self._lock:
            return self._chain.template(record, holes)

    def append_template(self, template: RecordTemplate, values: tuple[Any, ...] = (),
                        *, wake: bool = True) -> int:
        """:meth:`append` for a record made from `template` with `values` in its holes
        (see :mod:`gateway.audit.template`): the same line, a fraction of the work.
        Raises TemplateMismatch (nothing appended) when a value does not fit a hole."""
        seq = self.ledger.append(template, values)
        if seq <= 0:
            if seq == 0:
                raise TemplateMismatch("a value does not fit the template's holes")
            raise self.refusal()
        if wake:
            self.wake()
        return seq

    def wake(self) -> None:
        """Have the writer thread write what is queued."""
        if not self._wake.is_set():
            self._wake.set()

    def admit(self) -> None:
        """What :meth:`append` checks, for work that appends nothing before it runs (a
        repeat answered by a kept allow: StatementGate._linked) but whose record will
        follow: raises AuditUnavailable when the log is closed or the backlog is full.
        With many records queued (``batch_records``) the thread is woken to write them
        now rather than at its timer, which bounds a batch."""
        due = self.ledger.admit(self.options.batch_records)
        if due:
            if due < 0:
                raise self.refusal()
            self.wake()

    def refusal(self) -> AuditUnavailable:
        """Why an append was refused: the log is not open, or the backlog is full."""
        ledger = self.ledger
        if not ledger.open:
            return AuditUnavailable("the audit log is not open")
        backlog = self._chain.seq + ledger.pending - ledger.durable
        return AuditUnavailable(self._error or f"{backlog} records wait for the sink")

    def is_durable(self, seq: int) -> bool:
        return seq <= self.ledger.durable

    def wait_durable(self, seq: int) -> asyncio.Future[None]:
        """A future of the running loop, done when record `seq` is durable; it fails with
        AuditUnavailable if the sink fails first."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if seq <= self.ledger.durable:
                fut.set_result(None)
            elif self._error is not None:
                fut.set_exception(AuditUnavailable(self._error))
            else:
                heapq.heappush(self._waiters, (seq, next(self._tiebreak), fut, loop))
        return fut

    async def append_durable(self, record: Mapping[str, Any]) -> int:
        seq = self.append(record)
        if seq > self.ledger.durable:
            await self.wait_durable(seq)
        return seq

    def flush(self, timeout: float | None = None) -> None:
        """Block until every record appended so far is durable.

        Raises AuditUnavailable if the sink is failing, TimeoutError after `timeout`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self.ledger.settle()
            target = self._chain.seq
            self._flushing += 1
            try:
                while self.ledger.durable < target:
                    if self._error is not None:
                        raise AuditUnavailable(self._error)
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"audit records up to seq {target} not durable yet")
                    self._cond.wait(remaining if remaining is not None else 1.0)
            finally:
                self._flushing -= 1

    def checkpoint(self, reason: str = "manual") -> int:
        """Append a signed checkpoint now; returns its seq."""
        with self._lock:
            if not self.ledger.open:
                raise AuditUnavailable("the audit log is not open")
            wake = not self._unwritten_locked()
            seq = self._checkpoint_locked(reason)
        if wake:
            self._wake.set()
        return seq

    def status(self) -> dict[str, Any]:
        with self._lock:
            self.ledger.settle()
            return {
                "instance": self.instance, "sink": self.sink.kind, "healthy": self.healthy,
                "error": self._error, "seq": self._chain.seq,
                "durable_seq": self.ledger.durable,
                "backlog": self._chain.seq - self.ledger.durable, "segment": self._segment,
                "durability": self.options.durability,
                "signing_key_id": self.signer.key_id if self.signer else None,
            }

    # -- under the lock ---------------------------------------------------------------------

    def _due_locked(self) -> None:
        """A checkpoint by count or a rotation by size is due (the ledger calls it)."""
        ledger = self.ledger
        if 0 < ledger.checkpoint_every <= ledger.since_checkpoint:
            self._checkpoint_locked("count")
        if 0 < ledger.segment_limit <= ledger.segment_bytes:
            self._rotate_locked("size")

    def _checkpoint_locked(self, reason: str, *, final: bool = False) -> int:
        self.ledger.settle()  # (a no-op when the ledger's own settle() made it due)
        chain = self._chain
        sealed = chain.seal({"type": "checkpoint", "head_seq": chain.seq,
                             "head_hash": chain.head, "final": final, "reason": reason},
                            signer=self.signer, sign=True)
        self.ledger.push(sealed)
        self.ledger.since_checkpoint = 0
        self._last_checkpoint = self._clock()
        self._anchors.append((sealed, final, reason))
        return sealed.seq

    def _open_segment_locked(self, n: int, reason: str, *, previous: str | None,
                             torn: int = 0) -> None:
        self.ledger.settle()
        chain = self._chain
        self._segment = n
        self.ledger.segment_bytes = self.ledger.segment_records = 0
        self._segment_opened = self._clock()
        header: dict[str, Any] = {
            "type": "segment", "segment": n, "reason": reason, "sink": self.sink.kind,
            "previous_segment": previous, "previous_seq": chain.seq,
            "previous_hash": chain.head if chain.seq else GENESIS,
        }
        if torn:
            header["torn_bytes"] = torn
        sealed = chain.seal(header)
        self._rotations[sealed.seq] = n
        self.ledger.push(sealed)
        if reason == "start":  # a run's start is anchored too: see _log_anchors
            self._anchors.append((sealed, False, reason))

    def _rotate_locked(self, reason: str) -> None:
        self._checkpoint_locked("rotation")
        previous = self.sink.location(self._segment)
        self._open_segment_locked(self._segment + 1, reason, previous=previous)
        self._restate_locked("segment")

    def _restate_locked(self, reason: str) -> None:
        """A session.update restating each open session (see the module doc)."""
        self.ledger.settle()
        for record in self._open_sessions.values():
            self.ledger.push(self._chain.seal({**record, "restated": reason}))

    # -- the writer thread ---------------------------------------------------------------

    def write_through(self) -> bool:
        """Write what is queued now on the caller's thread (an event loop), instead of
        handing it to the writer thread: with ``durability: os`` a record is durable once
        ``write()`` returned, and a thread handoff per statement would cost more than the
        write. Returns True when every record appended so far is durable. With ``fsync``,
        or while the sink is failing, it only reports (the thread owns syncs and retries)."""
        target = self._chain.seq + self.ledger.pending
        if not self.writes_through:
            self._wake.set()  # the thread syncs (or retries); the caller waits for it
            return self.ledger.durable >= target
        with self._io_lock:
            if self._error is not None or self._carry:
                self._wake.set()
                return self.ledger.durable >= target
            with self._lock:
                work = self.ledger.take()
                if self._rotations:
                    self._io_rotations.update(self._rotations)
                    self._rotations = {}
            if work:
                done = self._write(work, self._io_rotations)
                if done < len(work):
                    self._carry.extend(work[done:])  # the thread retries them
                    self._wake.set()
        return self.ledger.durable >= target

    def _run(self) -> None:
        carry = self._carry
        rotations = self._io_rotations
        while True:
            try:
                with self._io_lock:
                    stop = self._step(carry, rotations)
                # the segments a rotation closed (here or in write_through), within a
                # second: outside the lock, as syncing one must not hold up writes
                self.sink.retire()
                if stop:
                    return
            except Exception as exc:  # a bug must not end the thread silently: fail closed
                self._fail(exc)
                time.sleep(self.options.retry_seconds)

    def _step(self, carry: list[Sealed], rotations: dict[int, int]) -> bool:
        """One round: wait, take the queue, write, run the timers. True: stop."""
        self._io_lock.release()  # never sleep holding it: write_through() would wait
        try:
            self._wake.wait(self._next_timer(bool(carry)))
        finally:
            self._io_lock.acquire()
        self._wake.clear()
        with self._lock:
            if self._unwritten_locked():
                carry.extend(self.ledger.take())
            if self._rotations:
                rotations.update(self._rotations)
                self._rotations = {}
            stopping = self._stopping
        now = self._clock()
        if stopping and now >= self._stop_deadline:
            return True
        if carry and (self._error is None or now >= self._retry_at):
            done = self._write(carry, rotations)
            del carry[:done]
        if not stopping:
            self._timers(now)
            return False
        if not carry:
            with self._lock:
                return not self._unwritten_locked()
        return False

    def _unwritten_locked(self) -> bool:
        """Records queued or kept unsealed, that no write has taken yet."""
        return bool(self.ledger.queue) or self.ledger.pending > 0

    def _next_timer(self, backlog: bool) -> float:
        now = self._clock()
        due = [now + 1.0]
        if self._error is not None and backlog:
            due.append(self._retry_at)
        # Only timers that would do something: an idle writer sleeps (an append wakes it).
        if self.options.checkpoint_seconds and self.ledger.since_checkpoint:
            due.append(self._last_checkpoint + self.options.checkpoint_seconds)
        if (self.sink.segments and self.options.segment_seconds
                and self.ledger.segment_records > 1):
            due.append(self._segment_opened + self.options.segment_seconds)
        return max(0.0, min(due) - now)

    def _timers(self, now: float) -> None:
        opts = self.options
        with self._lock:
            if self._closed:
                return
            added = False
            if (opts.checkpoint_seconds and self.ledger.since_checkpoint
                    and now - self._last_checkpoint >= opts.checkpoint_seconds):
                self._checkpoint_locked("interval")
                added = True
            if (self.sink.segments and opts.segment_seconds
                    and self.ledger.segment_records > 1
                    and now - self._segment_opened >= opts.segment_seconds):
                self._rotate_locked("time")
                added = True
            elif (not self.sink.segments and opts.segment_seconds
                  and now - self._segment_opened >= opts.segment_seconds):
                # a table has no segments, and rows go by age: restate by the same clock
                self._segment_opened = now
                if self._open_sessions:
                    self._restate_locked("interval")
                    added = True
        if added:
            self._wake.set()

    def _write(self, work: list[Sealed], rotations: dict[int, int]) -> int:
        """Write `work` (consecutive seqs) in order, opening segments where a header
        starts one; returns how many records are done (all of them unless the sink failed)."""
        first, n, i = work[0].seq, len(work), 0
        try:
            while i < n:
                seq = first + i
                segment = rotations.get(seq)
                if segment is not None:
                    self.sink.open_segment(segment)
                    del rotations[seq]
                j = n
                for at in rotations:  # a handful at most: the next header ends the batch
                    if seq < at < first + j:
                        j = at - first
                # (the usual batch, no segment starting in it: the whole of it, uncopied)
                self.sink.write(work if i == 0 and j == n else work[i:j])
                if self._fsync:
                    self.sink.sync()
                self._advance(work[j - 1].seq)
                i = j
        except Exception as exc:
            self._fail(exc)
            return i
        if self._error is not None:
            self._recover()
        return n

    def _advance(self, seq: int) -> None:
        ready: list[tuple[asyncio.Future[None], asyncio.AbstractEventLoop]] = []
        anchors = self._anchors
        written = None
        with self._lock:  # _cond's own lock, without Condition's Python-level enter/exit
            self.ledger.durable = seq
            waiters = self._waiters
            while waiters and waiters[0][0] <= seq:
                _, _, fut, loop = heapq.heappop(waiters)
                ready.append((fut, loop))
            if self._flushing:  # notify_all() is not free: once per statement otherwise
                self._cond.notify_all()
            if anchors and anchors[0][0].seq <= seq:
                written = []
                while anchors and anchors[0][0].seq <= seq:
                    written.append(anchors.popleft())
        if ready:
            _dispatch(ready, None)
        if written:
            self._log_anchors(written)

    def _log_anchors(self, written: list[tuple[Sealed, bool, str]]) -> None:
        """Log each checkpoint, and each run's start, now in the sink. A chain cannot show
        that its newest records were removed whole (a run's segments, an instance's
        files): the log ends at an earlier checkpoint and verifies. Nor that a run was
        made up between two real ones (records chained by anyone, then signed by the
        next real run's checkpoints). These lines, shipped off the host, are what
        `audit verify --anchors` holds the log to. Logged only once written, so that an
        anchor never names a record a crash kept from the sink."""
        for sealed, final, reason in written:  # (evidence: whatever the log level)
            if sealed.type == "segment":
                logs.evidence("audit.run_started", instance=self.instance, seq=sealed.seq,
                              hash=anchor_hash(sealed.hash))
            else:
                logs.evidence("audit.checkpoint", instance=self.instance, seq=sealed.seq,
                              hash=anchor_hash(sealed.hash), final=final, reason=reason)

    def _fail(self, exc: BaseException) -> None:
        reason = _describe(exc)
        with self._cond:
            first = self._error is None
            self._set_error(reason)
            self._retry_at = self._clock() + self.options.retry_seconds
            failed = [(fut, loop) for _, _, fut, loop in self._waiters]
            self._waiters = []
            self._cond.notify_all()
        if failed:
            _dispatch(failed, reason)
        if first:
            logs.error("audit.unavailable", instance=self.instance, sink=self.sink.kind,
                       error=reason)
            self._notify(False, reason)

    def _recover(self) -> None:
        with self._cond:
            self._set_error(None)
            self._cond.notify_all()
        logs.warning("audit.recovered", instance=self.instance, sink=self.sink.kind,
                     durable_seq=self.ledger.durable)
        self._notify(True, None)

    def _set_error(self, reason: str | None) -> None:
        self._error = reason
        self.healthy = reason is None
        self.writes_through = reason is None and not self._fsync

    def _notify(self, healthy: bool, error: str | None) -> None:
        if self.on_health is not None:
            try:
                self.on_health(healthy, error)
            except Exception as exc:
                logs.error("audit.health_callback_failed", error=type(exc).__name__)


_SESSION_FACTS = frozenset({"session.start", "session.update"})


def _session_key(record: Mapping[str, Any]) -> str:
    # (the gateway's ids are strs; whatever else a caller passes keys by its repr
    # rather than failing an append)
    session = record.get("session")
    return session if isinstance(session, str) else repr(session)


def _restatement(record: Mapping[str, Any]) -> dict[str, Any]:
    """The ``session.update`` that restates the session facts of `record` (its
    ``session.start``, or its latest ``session.update``) at a new segment's start (its
    ``restated`` reason added then): who/where and the archived ``input`` as they are,
    nothing ``changed``."""
    kept = {k: v for k, v in record.items() if k not in _NOT_RESTATED}
    return {**kept, "type": "session.update", "changed": []}


# what a session.start or session.update says about the moment it was made, not the
# session's standing facts (the chain adds seq, ts, prev and hash anew)
_NOT_RESTATED = frozenset({"type", "changed", "restated", "networks", "method",
                           "token_expires_at", "seq", "ts", "prev", "hash"})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _settle(items: list[asyncio.Future[None]], reason: str | None) -> None:
    for fut in items:
        if fut.done():
            continue
        if reason is None:
            fut.set_result(None)
        else:
            fut.set_exception(AuditUnavailable(reason))


def _dispatch(ready: list[tuple[asyncio.Future[None], asyncio.AbstractEventLoop]],
              reason: str | None) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for fut, loop in ready:
        by_loop.setdefault(loop, []).append(fut)
    for loop, futs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, futs, reason)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


def anchor_hash(digest: str) -> str:
    """A record's hash as an anchor line carries it: in dot-separated groups of eight, as
    every log line passes the PAN scanner, which would mask a Luhn-valid run of 13 or more
    digits in the plain hex (about one hash in 300)."""
    return ".".join(digest[i:i + 8] for i in range(0, len(digest), 8))
