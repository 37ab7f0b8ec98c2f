"""Applies mask plans to the upstream's answers. Sans-IO.

The relay reports every client message it forwards (`forwarded`, with the gate's plans)
and every observed backend message (`message`); this class follows which request each
answer belongs to (`ResponseTracker`) and returns the replacement for messages that carry
masked values: RowDescription (masked fields declared ``text``), DataRow, CopyData.

Plans reach results by the protocol's own names: a Query's plans are per statement; a
Parse's plan belongs to its prepared statement, a Bind hands it to its portal, and
Describe / Execute of that statement or portal use it — including Executes resumed after
PortalSuspended. SQL-level cursors and EXECUTE are statements of a Query and carry their
own plans.

While no request with a plan is outstanding, DataRow and CopyData need not be observed
at all (`needs_rows` is False): unmasked results cost no per-row work.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from gateway.wire.backend import NoticeResponse
from gateway.wire.codec import frame
from gateway.wire.errors import ProtocolViolation
from gateway.wire.framing import RUN, WALKED, Frame
from gateway.wire.frontend import (
    Close,
    Describe,
    bind_names,
    decode_frontend,
    execute_portal,
    single_run,
)
from gateway.wire.pipeline import REQUEST_TYPES, RUN_REST, SYNCING, ResponseTracker

from .plan import MaskPlan
from .rows import (
    CopyOutMasker,
    FieldMasks,
    UnsupportedCopy,
    field_masks,
    rewrite_data_row,
    rewrite_data_rows,
    rewrite_row_description,
    walk_columns,
)

__all__ = ["SKIPPED", "UNFINISHED", "WATCH_ANSWERS", "WATCH_ENDS", "WATCH_IDLE", "WATCH_ROWS",
           "ResultMasker", "StatementTag"]

# What `ResultMasker.message` must be shown (`watch`), from least to most: ReadyForQuery
# and errors only; also the ends of a Query's statements (QUERY_ENDS); every answer but
# rows; rows too.
WATCH_IDLE, WATCH_ENDS, WATCH_ANSWERS, WATCH_ROWS = 0, 1, 2, 3

#: The message type `on_result` gets for a statement the server will not run (an earlier
#: statement of its Query string, or of its extended-protocol run up to Sync, failed).
SKIPPED = 0
#: ... and the one a caller passes for a statement whose result never ended (see
#: :meth:`ResultMasker.unfinished`): whether the server ran it is not known.
UNFINISHED = -1

_Q, _P, _B, _D, _E, _C, _SYNC = (ord(c) for c in "QPBDECS")
_T, _DATA, _H, _COPY, _COPYDONE = (ord(c) for c in "TDHdc")
_COMMAND_COMPLETE = ord("C")
_ERROR = ord("E")
_PARSE_COMPLETE, _BIND_COMPLETE, _CLOSE_COMPLETE = (ord(c) for c in "123")
# effects besides a Parse's, Bind's or Close's of a statement (keyed by message type)
_PORTAL, _EXEC, _EXEC_CHECKED, _BOTH = -1, -2, -3, -4
_BEFORE_EXECUTE = frozenset((_P, _B, _D))
_FOLLOWED_BEFORE_EXECUTE = frozenset((_P, _D))  # those that can carry a tag
_INTERNAL_ANSWERS = frozenset(b"123")
_I32 = struct.Struct("!i")
_DATA_RUN = RUN | _DATA  # consecutive DataRows as one event (BackendObserver.coalesce)

Lookup = Callable[[int, int], "tuple[str, str, str] | None"]


class StatementTag(NamedTuple):
    """What the gateway knows about one decided statement while its results stream: how
    to mask them, and which audit record decided it. (A tuple: one is made per statement,
    and the gate makes it with ``tuple.__new__``, without a Python-level constructor.)"""

    plan: MaskPlan | None = None
    decision_seq: int | None = None
    started: float = 0.0  # time.perf_counter() at the decision
    command: str | None = None
    #: a statement the gateway added (SET ROLE / RESET ROLE around a db_role statement):
    #: its CommandComplete is not the client's and is dropped
    internal: bool = False
    #: set only on the tag `on_result` gets for a result whose row limit withheld rows
    withheld: bool = False


def _has_plan(tag: Any) -> bool:
    if type(tag) is list:  # a Query's: once per statement, so a loop, not a generator
        for t in tag:
            if t is not None and t.plan is not None:
                return True
        return False
    return tag is not None and tag.plan is not None


class ResultMasker:
    def __init__(self, lookup: Lookup,
                 on_result: Callable[..., None] | None = None) -> None:
        self.tracker = ResponseTracker()
        self.lookup = lookup
        # Called when a statement's result ends (CommandComplete, EmptyQueryResponse,
        # PortalSuspended or ErrorResponse): the tag, that message's type and body, and
        # the values masked per protected column; type SKIPPED (body b"") for a statement
        # an earlier error made the server skip. A result under a row limit adds the rows
        # the client got (the others were withheld).
        self.on_result = on_result
        # Prepared statements by name, with the tag of the Parse that defined them: as
        # forwarded (what a Bind behind the Parse in the same batch binds, if the server
        # takes the Parse), and as the server confirmed (ParseComplete, CloseComplete).
        # A Parse or Close the server does not carry out (an error, or skipped behind one)
        # brings the first back to the second; a Bind forwarded meanwhile is checked at
        # its BindComplete against the statement the server bound, before any row.
        self._statements: dict[str, StatementTag] = {}
        self._confirmed: dict[str, StatementTag] = {}
        self._inflight: dict[str, int] = {}  # Parses and Closes of a name not yet answered
        # ... forwarded while the server skips to a Sync: settled at that Sync, so the
        # rest of their run is followed as it was sent
        self._deferred: list[tuple[Any, ...]] = []
        #: told the name of a statement whose Parse or Close the server did not carry out
        #: (what else the gateway keeps per statement name must not trust it either)
        self.on_unapplied: Callable[[str], None] | None = None
        self._portals: dict[str, StatementTag] = {}
        # Portals the server may still have a planned one under: a Bind or Close P of a
        # name whose portal had a plan, not answered yet. The server keeps the old portal
        # when it refuses or skips one (a name in use, no such statement, an error ahead
        # of it), and a savepoint rolled back to keeps the transaction usable: name →
        # [the tag the server has now (None: none), changes not answered yet].
        self._portal_held: dict[str, list[Any]] = {}
        self._tracked = 0  # outstanding requests carrying a tag
        self._planned = 0  # ... of which carry a mask plan
        self._rows: FieldMasks | None = None  # masks for the DataRows of the current result
        self._rows_plan: MaskPlan | None = None
        self._copy: CopyOutMasker | None = None
        self.masked_values = 0
        # the current result's, under a row limit: rows let through, and whether any
        # were withheld
        self._returned = 0
        self._withheld = False

    @property
    def idle(self) -> bool:
        """True while only ReadyForQuery, ErrorResponse and the relay's own messages need
        to be shown to `message`: nothing outstanding is masked or recorded."""
        return self.watch() == WATCH_IDLE

    @property
    def needs_rows(self) -> bool:
        """True while DataRow / CopyData must be shown to `message`."""
        return self.watch() == WATCH_ROWS

    def watch(self) -> int:
        """What `message` must be shown now, as one answer (asked twice per statement):
        WATCH_ROWS when :attr:`needs_rows`, WATCH_IDLE when :attr:`idle`, WATCH_ENDS
        when nothing but Queries is pending (with no plan, their other answers change
        nothing: an audited simple-protocol statement is followed by its end alone),
        else WATCH_ANSWERS (every answer but rows)."""
        if self._planned or self._rows is not None or self._copy is not None:
            return WATCH_ROWS
        tracker = self.tracker
        if not self._tracked and tracker.idle:
            return WATCH_IDLE
        return WATCH_ENDS if tracker.only_queries() else WATCH_ANSWERS

    def empty(self) -> bool:
        """True when nothing is pending or being masked, and what is forwarded now will be
        answered: the answers to an untagged Query forwarded now come before any other,
        so a caller may count them itself (ReadyForQuery by ReadyForQuery) instead of
        showing them here, as long as it calls :meth:`owe` before forwarding anything else."""
        return not self._tracked and self._rows is None and self._copy is None \
            and self.tracker.empty()

    def owe(self, syncs: int) -> None:
        """Untagged Queries forwarded since :meth:`empty` whose `syncs` ReadyForQuery answers
        are still to come: they answer first (a barrier ahead of what is forwarded next)."""
        self.tracker.barrier(syncs)

    # -- client side -------------------------------------------------------------------------

    def forwarded(self, frames: list[Frame], tags: Mapping[int, Any]) -> None:
        """Client messages as forwarded upstream; `tags[i]` is frame i's `StatementTag` (a
        Query: a list with one tag or None per statement)."""
        # (a portal outlives the statement it was bound from: a Close of the statement
        # leaves its portal to run, and to mask)
        registry = bool(self._statements or self._confirmed or self._portals)
        tracker = self.tracker
        if not tags and not registry:
            # Nothing to follow (no plan, no audit record, no named statement with one):
            # while nothing is pending but barriers, the batch is one more barrier when
            # each of its extended-protocol runs ends with a Sync, as most batches do.
            # (After a run's error the server skips a Query or FunctionCall before the
            # Sync: those would be counted as answered, so such a batch is followed
            # message by message.)
            syncs, extended = 0, False
            for t, _ in frames:
                if t == _SYNC:
                    syncs, extended = syncs + 1, False
                elif t in SYNCING:
                    if extended:
                        break
                    syncs += 1
                elif t in REQUEST_TYPES:
                    extended = True
            else:
                if not extended and tracker.barrier_if_idle(syncs):
                    return
        for i, (t, body) in enumerate(frames):
            given = tags.get(i)
            tag: Any = None
            effect: Any = None
            if t == _Q or t == RUN_REST:
                if given is not None and given.count(None) != len(given):  # any tag
                    tag = given
            elif t == _P:
                name = _parse_name(body)
                if given is not None:
                    self._statements[name] = given
                    registry = True
                    # followed: an error answering the Parse is its outcome; and the
                    # ParseComplete of one the gateway added (db_role) is dropped
                    if given.decision_seq is not None or given.internal:
                        tag = given
                    if not given.internal:
                        effect = self._defining(_P, name, given)
                elif registry:
                    self._statements.pop(name, None)
                    effect = self._defining(_P, name, None)
            else:
                if registry and t in (_B, _D, _E, _C):
                    # (the gateway's own statements are not the client's: no effect)
                    tag, effect = self._registry(t, body, given is None or not given.internal)
                if given is not None:
                    tag = given  # e.g. a message the gateway added (internal)
            if t == _SYNC and self._deferred:
                deferred, self._deferred = self._deferred, []
                for one in deferred:
                    self._settle(one, None)
            self._track(t, tag, effect)

    def follow_alone(self, frames: list[Frame], tags: Mapping[int, Any]) -> StatementTag | None:
        """The tag of the one statement `frames` run, when its caller may follow that
        statement to its end itself instead of showing this masker the answers: an
        extended-protocol run ``[Parse,] Bind, [Describe,] Execute, Sync`` of one statement
        with an audit record and nothing to mask (drivers send one per statement), the
        Bind naming the statement just parsed or a registered one, the Execute its portal
        with no row limit. Every answer up to the run's ReadyForQuery is then that
        statement's, and its first CommandComplete, EmptyQueryResponse or error ends it,
        as here (an error answering the Parse, Bind or Describe included).

        Registers the statement and portal as :meth:`forwarded` would, and returns the
        tag; else None, and nothing changed. Only while :meth:`empty`: the caller owes
        this masker the rest of the run (``RUN_REST``) if it forwards anything before
        the run's ReadyForQuery."""
        found = self._alone(frames, tags)
        if found is None:
            return None
        name, portal, tag = found
        if name is not None:
            # (as if confirmed: alone, nothing is pending before it to make the server
            # skip it, and a Parse that fails leaves no statement for a Bind to find)
            self._statements[name] = self._confirmed[name] = tag
        self._portals[portal] = tag
        return tag

    def _alone(self, frames: list[Frame], tags: Mapping[int, Any]
               ) -> tuple[str | None, str, StatementTag] | None:
        """follow_alone's check: (the Parse's name or None, the portal, the tag). (A
        malformed message is left to forwarded(), as it was before this.)"""
        if not self.empty():
            return None
        found = single_run(frames)
        if found is None:
            return None
        name, portal, statement = found
        if len(tags) != (name is not None):
            return None
        if name and (name in self._statements or name in self._confirmed):
            return None  # a name defined before: followed here, to its ParseComplete
        prev = self._portals.get(portal)
        if prev is not None and prev.plan is not None:
            return None  # a masked portal's name bound again: followed to its BindComplete
        tag = tags.get(0) if name is not None else self._statements.get(statement)
        if tag is None or tag.decision_seq is None or tag.plan is not None or tag.internal:
            return None
        return name, portal, tag

    def _registry(self, t: int, body: bytes, own: bool = True
                  ) -> tuple[StatementTag | None, Any]:
        """The tag a Bind, Describe, Execute or Close follows, and its effect (a Bind's
        statement check, a Close's undefining) as _settle takes it; none for one the
        gateway added (not `own`)."""
        if t == _B:  # the names only: decoding the parameters cost ~5 us per Bind
            portal, statement = bind_names(body)
            tag = source = self._statements.get(statement)
            prev = self._portals.get(portal)
            if tag is not None:
                plan = tag.plan
                if plan is not None and plan.row_limit is not None:
                    tag = tag._replace(plan=plan.bound())
                self._portals[portal] = tag
            else:
                self._portals.pop(portal, None)
            changing = self._changing(portal, prev, tag) if own and (
                self._portal_held or (prev is not None and prev.plan is not None)) else None
            # checked at its BindComplete, unless the server cannot hold another
            # statement under this name (confirmed as forwarded, nothing pending)
            if own and (self._inflight or self._confirmed.get(statement) is not source):
                checked = (_B, statement, source)
                return None, checked if changing is None else (_BOTH, checked, changing)
            return None, changing
        if t == _E:
            portal = execute_portal(body)
            tag = self._portals.get(portal)
            if self._portal_held and portal in self._portal_held:  # known at its answer
                return tag, (_EXEC, portal, tag)
            return tag, None
        msg = decode_frontend(t, body)
        if isinstance(msg, Describe):
            table = self._statements if msg.kind == "S" else self._portals
            return table.get(msg.name), None
        if isinstance(msg, Close):
            if msg.kind == "S":
                self._statements.pop(msg.name, None)
                return None, self._defining(_C, msg.name, None) if own else None
            prev = self._portals.pop(msg.name, None)
            return None, self._changing(msg.name, prev, None) if own else None
        return None, None

    def knows_portal(self, name: str) -> bool:
        """Whether `name` is a protocol portal this masker follows (or may be, pending)."""
        return name in self._portals or name in self._portal_held

    def _changing(self, portal: str, prev: StatementTag | None, tag: StatementTag | None
                  ) -> tuple[Any, ...] | None:
        """A Bind (giving `portal` `tag`) or Close P (`tag` None) forwarded, when the
        server may keep a planned portal under the name if it does not carry it out:
        its effect, settled at its answer (see _portal_held); None when there is none."""
        held = self._portal_held.get(portal)
        if held is None:
            if not _has_plan(prev):
                return None
            held = self._portal_held[portal] = [prev, 0]
        held[1] += 1
        return _PORTAL, portal, tag

    def _defining(self, t: int, name: str, tag: StatementTag | None) -> tuple[Any, ...]:
        """The effect of a Parse (`tag`: its own, or None) or Close of statement `name`."""
        self._inflight[name] = self._inflight.get(name, 0) + 1
        return t, name, tag

    def _settle(self, effect: tuple[Any, ...], answer: int | None) -> None:
        """What the server did with a Parse, Bind or Close: `answer` its completion, an
        ErrorResponse, or None (skipped behind an error, never run). Raises
        ProtocolViolation for a Bind of another statement than the one its rows would be
        followed for (an earlier Parse or Close of the name did not take effect)."""
        t = effect[0]
        if t < 0:
            self._settle_other(effect, answer)
            return
        t, name, tag = effect
        if t == _B:
            if answer == _BIND_COMPLETE and self._confirmed.get(name) is not tag:
                raise ProtocolViolation(
                    f"the server bound another prepared statement {name!r} than the gateway "
                    "decided for: a Parse or Close of it did not take effect")
            return
        if answer == _PARSE_COMPLETE and tag is not None:
            self._confirmed[name] = tag
        elif answer == _PARSE_COMPLETE or answer == _CLOSE_COMPLETE:
            self._confirmed.pop(name, None)
        elif answer == _ERROR and t == _P and not name:
            self._confirmed.pop(name, None)  # the server drops the unnamed one first
        left = self._inflight[name] - 1
        if left:
            self._inflight[name] = left
            return
        del self._inflight[name]
        if answer is None or answer == _ERROR:  # not carried out: the server keeps its own
            confirmed = self._confirmed.get(name)
            if confirmed is not None:
                self._statements[name] = confirmed
            if self.on_unapplied is not None:
                self.on_unapplied(name)
            # (none: no statement this masker follows is left under the name; a Bind of
            # it fails, or binds a plain one, which the BindComplete check catches)

    def _settle_other(self, effect: tuple[Any, ...], answer: int | None) -> None:
        t = effect[0]
        if t == _BOTH:
            self._settle(effect[1], answer)
            self._settle(effect[2], answer)
        elif t == _PORTAL:
            _, portal, tag = effect
            held = self._portal_held[portal]
            if answer == _BIND_COMPLETE or answer == _CLOSE_COMPLETE:
                held[0] = tag
            held[1] -= 1
            if not held[1]:  # nothing pending: what was forwarded is what the server has
                del self._portal_held[portal]
                if held[0] is None:
                    self._portals.pop(portal, None)
                else:
                    self._portals[portal] = held[0]
        else:  # _EXEC, _EXEC_CHECKED: its rows were shown to message() (see _track)
            self._planned -= 1

    def _check_portal(self, req: Any) -> None:
        """An Execute forwarded while a change of its portal was not answered: at its
        first answer every earlier Bind and Close of the name is, and the portal it ran
        must be the one its rows were followed for (else the session ends, fail closed,
        before any of them is passed on)."""
        _, portal, tag = req.effect
        req.effect = (_EXEC_CHECKED, portal, tag)
        held = self._portal_held.get(portal)
        has = held[0] if held is not None else self._portals.get(portal)
        if has is not tag:
            raise ProtocolViolation(
                f"the server ran another portal {portal!r} than the gateway followed: a "
                "Bind or Close of it did not take effect")

    def _track(self, t: int, tag: Any, effect: Any = None) -> None:
        req = self.tracker.request(t, tag)
        if req is None:  # forwarded while the server skips to a Sync
            if effect is not None and effect[0] != _EXEC:  # (no answer to check)
                self._deferred.append(effect)
            if tag is not None:
                self._skipped_request(t, tag)
        elif tag is not None or effect is not None:
            req.effect = effect
            self._tracked += 1
            if _has_plan(tag):
                self._planned += 1
            if effect is not None and effect[0] == _EXEC:
                self._planned += 1  # its rows are shown: checked before any goes on

    def _untrack(self, tag: Any) -> None:
        """A request `_track` counted will get no more answers."""
        self._tracked -= 1
        if _has_plan(tag):
            self._planned -= 1

    # -- upstream side -----------------------------------------------------------------------

    def message(self, mtype: int, body: bytes) -> bytes | None:
        """Accounts for one backend message (or a run of DataRows, raw, as type
        ``RUN | 'D'``); returns its replacement, or None to keep it.
        Raises ProtocolViolation when the stream cannot be followed (fail closed).

        A run of type ``RUN | WALKED | 'D'`` was rewritten by :meth:`walk_rows` already
        (the relay sends the event's bytes in its place): only the bookkeeping is left."""
        if mtype & WALKED:
            self.tracker.response(_DATA)
            return None
        if not self._tracked and self._rows is None and self._copy is None:
            self.tracker.response(mtype)  # nothing to mask or record: keep the queue in step
            return None
        run = mtype == _DATA_RUN
        answer = self.tracker.response(_DATA if run else mtype)
        if answer is None:
            return None
        req = answer.request
        tag = answer.tag
        if req.type == _E and req.effect is not None and req.effect[0] == _EXEC:
            self._check_portal(req)
        if tag is not None and tag.internal and mtype in _INTERNAL_ANSWERS:
            if answer.done:
                self._tracked -= 1
            return b""  # ParseComplete/BindComplete/CloseComplete of the gateway's own
        plan = tag.plan if tag is not None else None
        out: bytes | None = None
        if run or mtype == _DATA:
            if self._rows is None and plan is not None and req.type == _E:
                self._rows, self._rows_plan = self._portal_masks(plan), plan
            if plan is not None and plan.left is not None:
                kept = self._within_limit(plan, body, run)
                if kept is not body:  # rows withheld: what is left of them is the answer
                    if not kept:
                        return b""
                    body = out = kept  # (a run the budget ends in: its first rows)
            if self._rows:
                rows_plan = self._rows_plan
                assert rows_plan is not None
                if run:
                    out = rewrite_data_rows(body, self._rows, rows_plan.counts)
                else:
                    out = rewrite_data_row(body, self._rows, rows_plan.counts)
        elif mtype == _T:
            # (a row limit alone masks nothing: no fields to find, nothing to cross-check)
            if plan is not None and (plan.by_column or plan.positions):
                masks = field_masks(plan, body, self.lookup)
                plan.field_masks = masks
                if req.type == _Q:
                    self._rows, self._rows_plan = masks, plan
                out = rewrite_row_description(body, masks)
        elif mtype == _H:
            if plan is not None and plan.positions:
                try:
                    self._copy = CopyOutMasker(plan.positions, plan.copy or {},
                                               binary=body[:1] == b"\x01", counts=plan.counts)
                except UnsupportedCopy as e:
                    raise ProtocolViolation(f"cannot mask this COPY: {e}") from None
                self._rows_plan = plan
        elif mtype == _COPY and self._copy is not None:
            try:
                payload = self._copy.feed(body)
            except UnsupportedCopy as e:
                raise ProtocolViolation(f"cannot mask this COPY: {e}") from None
            out = frame(b"d", payload) if payload else b""
        elif mtype == _COPYDONE and self._copy is not None and self._copy.pending():
            raise ProtocolViolation("COPY ended inside a row")
        if answer.ends_result:
            if tag is not None and tag.internal:
                if mtype == _COMMAND_COMPLETE:
                    out = b""  # the gateway's own SET/RESET ROLE: not the client's result
            elif plan is not None and plan.row_limit is not None:
                out = self._end_limited(tag, plan, mtype, body)
            else:
                self._end_result(tag, mtype, body)
        if answer.done:
            effect = req.effect
            if effect is not None:
                self._settle(effect, mtype)
            if req.tag is not None or effect is not None:
                self._untrack(req.tag)
        if mtype == _ERROR:
            self._skip_after(req, body)
        return out

    def unfinished(self) -> list[StatementTag]:
        """The statements forwarded whose results have not ended (a session ending now
        leaves them so): the current and later statements of pending Queries, pending
        Executes; not the gateway's own."""
        out: list[StatementTag] = []
        for req in self.tracker.pending():
            tag = req.tag
            if tag is None:
                continue
            if req.type == _Q or req.type == RUN_REST:
                if req.failed:  # its error ended the statement running, skipped the rest
                    continue
                out += [t for t in tag[req.statement :] if t is not None and not t.internal]
            elif req.type == _E and not tag.internal:
                out.append(tag)
        return out

    def _skip_after(self, req: Any, error: bytes) -> None:
        """An error: what the server will not run after it — the rest of a Query string,
        the extended-protocol requests up to the next Sync — ends here, as skipped. An
        error answering a Parse, Bind or Describe (a constant folded at Bind, say) is the
        failure of the statement the next Execute would have run: that one ends with it."""
        if (req.type == _Q or req.type == RUN_REST) and req.tag is not None:
            for tag in req.tag[req.statement + 1 :]:
                self._skipped(tag)
        # A followed Parse's or Describe's error was that statement's outcome already (its
        # Executes in the run say nothing more); an unfollowed one's, or a Bind's, is the
        # next Execute's.
        failed = req.tag if req.type in _FOLLOWED_BEFORE_EXECUTE else None
        owner = req.type in _BEFORE_EXECUTE and failed is None
        for skipped in self.tracker.take_skipped():
            tag = skipped.tag
            self._untrack(tag)
            if skipped.effect is not None:
                self._settle(skipped.effect, None)
                if tag is None:
                    continue
            if failed is not None and (tag is failed or _bound_from(tag, failed)):
                continue
            if owner and skipped.type == _E:
                self._skipped(tag, _ERROR, error)
                owner = False
                continue
            owner = owner and skipped.type != _Q
            self._skipped_request(skipped.type, tag)

    def _skipped_request(self, t: int, tag: Any) -> None:
        if t == _Q or t == RUN_REST:
            for one in tag:
                self._skipped(one)
        elif t == _E:
            self._skipped(tag)

    def _skipped(self, tag: StatementTag | None, mtype: int = SKIPPED,
                 body: bytes = b"") -> None:
        """A statement that never ran ends here: skipped, or with the error (`mtype`,
        `body`) that stopped it before its Execute; not the gateway's own statements."""
        if tag is not None and not tag.internal and self.on_result is not None:
            self.on_result(tag, mtype, body, {})

    def walk_rows(self, data: bytes, pos: int, max_size: int) -> tuple[int, bytes] | None:
        """`BackendObserver.walk_run`: the current result's DataRows from `pos` on, masked
        as they are walked (one pass over the rows instead of two), or None to let the
        observer find the run and `message` rewrite it (no masks known yet, or a row
        limit: `message` cuts the run first)."""
        rows, plan = self._rows, self._rows_plan
        if not rows or plan is None or plan.row_limit is not None:
            return None
        try:  # sorted per call (once per read, not per row): nothing cached to go stale
            return walk_columns(data, pos, sorted(rows.items()), plan.counts, max_size)
        except ValueError as e:
            raise ProtocolViolation(f"cannot mask this result: {e}") from None

    def _within_limit(self, plan: MaskPlan, body: bytes, run: bool) -> bytes:
        """What of these rows (a DataRow's body, or a run of whole DataRows) the plan's
        row budget lets through: `body` itself when all of it; the budget and this
        result's counts are updated."""
        left = plan.left
        assert left is not None
        if not run:
            if left:
                plan.left = left - 1
                self._returned += 1
                return body
            self._withheld = True
            return b""
        pos, n, kept = 0, len(body), 0
        while kept < left and pos < n:
            (length,) = _I32.unpack_from(body, pos + 1)
            pos += 1 + length
            kept += 1
        plan.left = left - kept
        self._returned += kept
        if pos >= n:
            return body
        self._withheld = True
        return body[:pos]

    def take_partial_counts(self) -> dict[str, int]:
        """The values masked so far in the result still streaming (a session that ends
        mid-result): counted in `masked_values` now, as its end would have."""
        plan = self._rows_plan
        if plan is None or not plan.counts:
            return {}
        counts, plan.counts = plan.counts, {}
        self.masked_values += sum(counts.values())
        return counts

    def take_returned(self) -> int | None:
        """The rows a row limit let through of the result still streaming, when it
        withheld some (the relay counted those too); else None."""
        returned, withheld = self._returned, self._withheld
        self._returned, self._withheld = 0, False
        return returned if withheld else None

    def _end_limited(self, tag: StatementTag | None, plan: MaskPlan, mtype: int,
                     body: bytes) -> bytes | None:
        """`_end_result` for a result under a row limit: the rows it returned are the
        statement's (its command tag says so when rows were withheld, and the client is
        told once why). Returns the end message's replacement, or None."""
        returned, withheld = self._returned, self._withheld
        self._returned, self._withheld = 0, False
        out = None
        if withheld and mtype == _COMMAND_COMPLETE:
            body = _with_count(body, returned)
            out = frame(b"C", body)
        if withheld and not plan.told and mtype != _ERROR:  # (an error says enough, and
            # the relay may swap it for a denial's)
            plan.told = True
            notice = NoticeResponse.build(
                "01000", f"the result was cut at {plan.row_limit} rows: the policy's "
                "row_limit; the gateway withheld the rest", "WARNING",
                hint="add LIMIT to the query to spare the server the rows it computes "
                     "for nothing").encode()
            out = notice + (out if out is not None else frame(bytes((mtype,)), body))
        if withheld and tag is not None:
            tag = tag._replace(withheld=True)
        self._end_result(tag, mtype, body, returned)
        return out

    @staticmethod
    def _portal_masks(plan: MaskPlan) -> FieldMasks:
        # An Execute's rows follow a Describe of the statement or portal (cross-checked
        # masks) or none at all (the analysis's positions).
        return plan.field_masks if plan.field_masks is not None else dict(plan.positions)

    def _end_result(self, tag: StatementTag | None, mtype: int, body: bytes,
                    returned: int | None = None) -> None:
        plan = self._rows_plan
        self._rows = None
        self._rows_plan = None
        self._copy = None
        counts: dict[str, int] = {}
        if plan is not None:
            counts, plan.counts = plan.counts, {}
            self.masked_values += sum(counts.values())
        if tag is not None and self.on_result is not None:
            if returned is None:
                self.on_result(tag, mtype, body, counts)
            else:  # (the rows the client got: the relay counted those withheld too)
                self.on_result(tag, mtype, body, counts, returned)


def _bound_from(tag: Any, statement: StatementTag) -> bool:
    """Whether `tag` (an Execute's, or a Query's list) is a portal's own copy of
    `statement`'s (a row-limited plan's)."""
    plan = statement.plan
    return plan is not None and isinstance(tag, StatementTag) and tag.plan is not None \
        and tag.plan.of is plan


def _with_count(complete: bytes, rows: int) -> bytes:
    """A CommandComplete body ("SELECT 20\0", "FETCH 20\0") giving `rows` instead."""
    head, _, count = complete.rstrip(b"\0").rpartition(b" ")
    if not head or not count.isdigit():
        return complete
    return b"%s %d\0" % (head, rows)


def _parse_name(body: bytes) -> str:
    end = body.find(b"\0")
    return body[:end].decode("utf-8", "replace")
