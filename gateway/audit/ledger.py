"""The audit writer's hot state, and its one-call append.

A :class:`Ledger` holds what appending a record changes: the chain's head (through its
:class:`~gateway.audit.chain.Chain`), the queue of sealed records that no write has taken
yet, how far the sink has made records durable, and the counts that make a checkpoint or
a segment rotation due. Every change to it happens under the writer's lock.

:meth:`Ledger.append` is what a statement's records cost: two calls per statement, each
taking the lock, sealing a templated record onto the chain, queueing and counting it, and
calling ``on_due`` (still under the lock) when a checkpoint or rotation is due.
``gateway/audit/_seal.c`` has the same class compiled, used when it was built; this one is
its reference, held to it by ``tests/test_audit_ledger.py``, and the pure-Python path.

The compiled one also records a statement's usual end (``complete``) without sealing it:
it keeps the record's values and time, and seals every record so kept, in order, at the
next :meth:`settle` — which ``append``, ``fill`` and ``take`` do first, and which whoever
seals a record of their own (the writer's checkpoints, segment headers, Python-built
records) calls first, under the lock (``push`` refuses a record sealed past kept ones).
``pending`` counts the kept records; they count as appended (the backlog, ``admit``).
This one keeps none: ``pending`` is 0 and ``settle`` does nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from gateway import native

from .chain import _SHA256, Chain, Sealed
from .template import RecordTemplate, TemplateMismatch

__all__ = ["Ledger", "LedgerLike", "new_ledger"]

_native = native.load("gateway.audit._seal")


class LedgerLike(Protocol):
    chain: Chain
    durable: int  # the last seq the sink holds
    open: bool  # appends are refused until the writer opens the ledger, and after close
    max_backlog: int
    checkpoint_every: int  # 0: no checkpoint by count
    segment_limit: int  # 0: no rotation by size (a sink without segments)
    segment_bytes: int
    segment_records: int
    since_checkpoint: int

    @property
    def queue(self) -> list[Sealed]: ...
    @property
    def due(self) -> bool: ...
    @property
    def pending(self) -> int: ...  # records kept unsealed (see the module doc)
    def settle(self) -> None: ...
    def append(self, template: RecordTemplate, values: tuple[Any, ...]) -> int: ...
    def admit(self, batch_records: int) -> int: ...
    def refuses(self) -> bool: ...
    def fill(self, templates: dict[Any, tuple[object, RecordTemplate | None]], key: Any,
             values: tuple[Any, ...], pin: object) -> int: ...
    def push(self, sealed: Sealed) -> None: ...
    def take(self) -> list[Sealed]: ...


class Ledger:
    """The reference ledger. ``append`` returns the record's seq, ``0`` when a value does
    not fit the template (nothing appended: write the record the ordinary way) or ``-1``
    when the ledger refuses it (not open, or ``max_backlog`` records are not durable)."""

    __slots__ = ("_lock", "_on_due", "chain", "checkpoint_every", "durable", "max_backlog",
                 "open", "queue", "segment_bytes", "segment_limit", "segment_records",
                 "since_checkpoint")

    def __init__(self, chain: Chain, lock: threading.Lock, on_due: Callable[[], None], *,
                 max_backlog: int, checkpoint_every: int, segment_limit: int) -> None:
        self.chain = chain
        self._lock = lock
        self._on_due = on_due
        self.queue: list[Sealed] = []
        self.durable = chain.seq
        self.open = False
        self.max_backlog = max_backlog
        self.checkpoint_every = checkpoint_every
        self.segment_limit = segment_limit
        self.segment_bytes = self.segment_records = self.since_checkpoint = 0

    @property
    def pending(self) -> int:
        """Records kept unsealed: none here (see the module doc)."""
        return 0

    def settle(self) -> None:
        """Seal the records kept unsealed: none here."""

    @property
    def due(self) -> bool:
        """A checkpoint (by count) or a rotation (by size) is due."""
        return (0 < self.checkpoint_every <= self.since_checkpoint
                or 0 < self.segment_limit <= self.segment_bytes)

    def append(self, template: RecordTemplate, values: tuple[Any, ...]) -> int:
        with self._lock:
            if self.refuses():
                return -1
            try:
                sealed = self.chain.seal_template(template, values)
            except TemplateMismatch:
                return 0
            self.push(sealed)
            if self.due:
                self._on_due()
            return sealed.seq

    def admit(self, batch_records: int) -> int:
        """What :meth:`append` checks, appending nothing: ``-1`` when it would refuse,
        ``1`` when `batch_records` or more records are queued (to be written now), else
        ``0``. (Read without the lock, as an append's outcome would be a moment later.)"""
        if self.refuses():
            return -1
        return int(len(self.queue) >= batch_records)

    def refuses(self) -> bool:
        """An append is refused: not open, or ``max_backlog`` records not durable."""
        return not self.open or self.chain.seq - self.durable >= self.max_backlog

    def fill(self, templates: dict[Any, tuple[object, RecordTemplate | None]], key: Any,
             values: tuple[Any, ...], pin: object) -> int:
        """:meth:`append` of the template `templates` holds for `key` and `pin` (see
        :meth:`TemplateCache.fill <gateway.audit.template.TemplateCache.fill>`); ``0`` also
        when it holds none."""
        entry = templates.get(key)
        if entry is None or entry[0] is not pin or entry[1] is None:
            return 0
        return self.append(entry[1], values)

    def push(self, sealed: Sealed) -> None:
        """Queue and count a record sealed by the caller (under the lock)."""
        size = len(sealed.line)
        self.queue.append(sealed)
        self.segment_bytes += size
        self.segment_records += 1
        self.since_checkpoint += 1

    def take(self) -> list[Sealed]:
        """The queue, leaving it empty (under the lock)."""
        taken, self.queue = self.queue, []
        return taken


def new_ledger(chain: Chain, lock: threading.Lock, on_due: Callable[[], None], *,
               max_backlog: int, checkpoint_every: int, segment_limit: int,
               compiled: bool = True) -> LedgerLike:
    """The compiled ledger when it was built (and `compiled`), else the reference."""
    if compiled and _native is not None:
        ledger: LedgerLike = _native.Ledger(
            chain, lock, on_due, Sealed, _SHA256, max_backlog=max_backlog,
            checkpoint_every=checkpoint_every, segment_limit=segment_limit)
        return ledger
    return Ledger(chain, lock, on_due, max_backlog=max_backlog,
                  checkpoint_every=checkpoint_every, segment_limit=segment_limit)
