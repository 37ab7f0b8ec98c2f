"""The pump between an authenticated client and its upstream connection.

Client bytes are framed whole and shown to a `Gate` (the per-statement decision point)
before anything is forwarded; upstream bytes are forwarded as they arrive while an
observer follows message boundaries, so an unmasked result costs no per-row Python work
beyond a header skip.

A denied statement is not answered by the gateway directly: it is replaced upstream by
a statement that fails to parse with a unique marker, and the server's error is swapped
for the gateway's on the way back. The server then does what PostgreSQL does for any
error — aborts the transaction block, skips to Sync — and every response stays in order
however deeply the client pipelines.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, Protocol

from gateway import logs
from gateway.masking.error_rows import withhold_row_values
from gateway.masking.results import (
    WATCH_ANSWERS,
    WATCH_ENDS,
    WATCH_IDLE,
    WATCH_ROWS,
    ResultMasker,
    StatementTag,
)
from gateway.masking.safety_net import StreamScanner
from gateway.wire import backend as be
from gateway.wire.errors import ProtocolViolation
from gateway.wire.framing import WALKED, BackendObserver, Frame, MessageFramer
from gateway.wire.pipeline import QUERY_ENDS, RESPONSE_TYPES, RUN_REST, SYNCING

from .endpoint import Endpoint

CLIENT_TYPES = frozenset(b"QPBDECSHXdcfF")
_Q, _X, _Z, _R, _K, _E, _S = (ord(c) for c in "QXZRKES")
# The small messages the relay reacts to: all it observes while no answer needs matching
# to its request.
OBSERVED_IDLE = frozenset((_Z, _R, _K, _E, _S))
# ... and the ends of statements, while only Queries with nothing to mask are pending.
OBSERVED_ENDS = OBSERVED_IDLE | QUERY_ENDS
# ... and every answer to a request except the rows themselves, so that results can be
# matched to the requests they answer.
OBSERVED = OBSERVED_IDLE | (RESPONSE_TYPES - frozenset(b"Dd"))
# ... plus DataRow and CopyData while a result with masked columns may be streaming.
OBSERVED_ROWS = OBSERVED | frozenset(b"Dd")
# What the observer shows for each of ResultMasker.watch()'s answers.
OBSERVE = {WATCH_IDLE: OBSERVED_IDLE, WATCH_ENDS: OBSERVED_ENDS, WATCH_ANSWERS: OBSERVED,
           WATCH_ROWS: OBSERVED_ROWS}
_ROWS = frozenset(b"D")  # consecutive DataRows reach the masker as one event
_NOTHING: frozenset[int] = frozenset()
_TERMINATE = b"X\0\0\0\4"
# What a client may send while its statement waits (for an approver, a catalog load)
# before reading from it pauses: bounded memory, and a client that leaves is noticed.
BACKLOG_LIMIT = 256 * 1024
# Requests forwarded and not answered yet past which reading from the client pauses: a
# client that pipelines without reading the answers holds the gateway's memory (a
# request's bookkeeping, its audit record) only this far; answers let it on again.
IN_FLIGHT_MAX = 4096


# A statement's result ended: its tag, the message that ended it (type, body), the values
# masked per protected column, the safety-net hits in its bytes, and the rows (DataRows,
# a COPY TO's CopyData) the client was sent for it.
OnResult = Callable[[StatementTag, int, bytes, dict[str, int], int, int], None]
# the masked-value counts of a statement the relay followed itself: none (read only)
_NONE_MASKED: dict[str, int] = {}
# A result that ended in the buffer at hand, to report: where its end message ends in
# that buffer, and OnResult's arguments but the hits (the rows sent last).
_Ended = tuple[int, StatementTag, int, bytes, dict[str, int], int]
# The messages after which a DataRow belongs to another statement's result.
_RESULT_ENDS = QUERY_ENDS | frozenset(b"s")


class Split(NamedTuple):
    """A gate's answer for a batch whose frames from `at` on must wait: the frames before
    `at` go out as `prefix` (or what it resolves to); the rest is shown to the gate again,
    as if just received, once what `until()` then returns is done."""

    at: int
    prefix: bytes | Awaitable[bytes]
    until: Callable[[], Awaitable[Any]]  # called once the prefix is forwarded


class Gate(Protocol):
    """Decides what of a batch of client messages reaches the upstream.

    Returns the bytes to forward (`raw` when nothing changes), or an awaitable of them when
    the decision needs I/O, or a `Split`; the relay stops reading from the client meanwhile.
    """

    def review(self, raw: bytes, frames: list[Frame], relay: Relay
               ) -> bytes | Awaitable[bytes] | Split:
        ...

    def parameter_status(self, name: str, value: str) -> None:
        ...

    def ready_for_query(self, status: str, idle: Callable[[], bool]) -> None:
        """A ReadyForQuery; `idle()`: whether nothing forwarded waits for an answer."""

    def take_tags(self, frames: list[Frame]) -> tuple[list[Frame], dict[int, Any]]:
        ...

    def unapplied(self, name: str) -> None:
        """The result masker's word that a Parse or Close of statement `name` did not
        take effect."""

    def follow_portals(self, knows: Callable[[str], bool]) -> None:
        """`knows(name)`: whether `name` is a protocol portal the result masker follows."""


class Relay:
    # Slots, not an instance dict: past 30 attributes CPython 3.11 stops sharing the
    # dict's keys between instances, and every attribute access on this hot path slows.
    __slots__ = (
        "_answered", "_at", "_backlog", "_backlog_bytes", "_blocked", "_carried_hits",
        "_client_at_boundary", "_denials", "_ended", "_holding", "_notices", "_on_result",
        "_outstanding", "_quiet", "_quiet_rest", "_quiet_tag", "_sent", "_watching",
        "before_release", "client", "done", "end_sqlstate", "framer", "gate",
        "messages_from_client", "observer", "on_client_gone", "results", "safety",
        "safety_error", "session_id", "syncs_answered", "syncs_forwarded", "transaction_status",
        "upstream",
    )

    def __init__(self, session_id: str, client: Endpoint, upstream: Endpoint,
                 max_message_size: int, gate: Gate | None = None,
                 safety_net: str = "mask", results: ResultMasker | None = None,
                 on_result: OnResult | None = None) -> None:
        self.session_id = session_id
        self.client = client
        self.upstream = upstream
        self.gate = gate
        self.framer = MessageFramer(CLIENT_TYPES, max_message_size)
        self.observer = BackendObserver(be.BACKEND_TYPES, OBSERVED_IDLE, max_message_size)
        self._watching = WATCH_IDLE  # what the observer shows `results` (see _observe)
        # ReadyForQuery answers owed to untagged one-Query batches forwarded while `results`
        # was empty: counted here, not shown to it, until something else is forwarded (the
        # steady state of a session whose statements nothing follows: see _forward)
        self._quiet = 0
        # The tag of the first of those batches when it is one statement with an audit
        # record and nothing to mask, until its result ends: the relay reports that end
        # itself (the steady state of a session of audited repeats)
        self._quiet_tag: StatementTag | None = None
        # ... and what is left of its batch while it has not ended: a Query (_Q), or an
        # extended-protocol run (RUN_REST): what the masker is given if that is handed over
        self._quiet_rest = _Q
        # Set by the gate when it forwarded a statement before its decision record was
        # written (reads: see StatementGate._finish_batch): called before any upstream
        # byte goes on to the client; False, the record cannot be written: fail closed.
        self.before_release: Callable[[], bool] | None = None
        # Called when the client leaves with a statement still running at the server (the
        # session cancels it there: a Terminate waits behind it).
        self.on_client_gone: Callable[[], None] | None = None
        self.end_sqlstate: str | None = None  # the SQLSTATE the gateway ended the session with
        self.transaction_status = "I"
        self.messages_from_client = 0
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._denials: dict[bytes, bytes] = {}  # marker -> ErrorResponse to show instead
        self._notices: list[bytes] = []  # the gateway's own messages, waiting for a boundary
        self._outstanding = 0  # ReadyForQuery messages the client still waits for
        # Requests answered last by a ReadyForQuery (SYNCING) forwarded so far, and the
        # ReadyForQuery messages that came back: the answers to the n-th such request are
        # all in once `syncs_answered` >= n.
        self.syncs_forwarded = 0
        self.syncs_answered = 0
        self._answered: list[tuple[int, asyncio.Future[None]]] = []  # see when_answered
        self._blocked = False
        self._backlog: list[bytes] = []
        self._backlog_bytes = 0
        self._holding = False  # reading paused for IN_FLIGHT_MAX
        # The content safety net: whatever lineage missed, no Luhn-valid PAN reaches the
        # client (masked in place, same length, so the framing is untouched).
        self.safety = StreamScanner() if safety_net != "off" else None
        # "error": a PAN that lineage masking missed ends the session instead of being
        # masked: for operators who would rather fail than guess.
        self.safety_error = safety_net == "error"
        self._client_at_boundary = True
        # Follows which request each answer belongs to; rewrites masked results.
        self.results = results
        if results is not None and gate is not None:
            # a statement name the server did not take: the gate's roles and names too
            results.on_unapplied = gate.unapplied
            gate.follow_portals(results.knows_portal)
        if results is not None:
            self.observer.walk_run = results.walk_rows
        # Statements whose results ended in the buffer at hand: reported to `on_result`
        # once the safety net has scanned that buffer, each with the hits in its result.
        self._on_result = on_result
        self._ended: list[_Ended] = []
        self._at = 0  # where the backend message being accounted for ends, in its buffer
        # rows (DataRows, CopyData) since the last result ended: the current result's,
        # told to on_result with its end (a statement that fails partway sent some)
        self._sent = 0
        self._carried_hits = 0  # hits after the last result that ended
        if results is not None and on_result is not None:
            results.on_result = self._result_ended

    def start(self, client_leftover: bytes = b"", upstream_leftover: bytes = b"") -> None:
        c, u = self.client, self.upstream
        c.peer, u.peer = u, c
        c.on_data, u.on_data = self.from_client, self.from_upstream
        c.on_error = u.on_error = self._unexpected
        c.on_close, u.on_close = self._client_gone, self._upstream_gone
        if upstream_leftover:
            self.from_upstream(upstream_leftover)
        if client_leftover:
            self.from_client(client_leftover)
        if c.closed:
            self._client_gone()
        elif u.closed:
            self._upstream_gone()

    # -- client → upstream ---------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        if self._blocked:
            self._backlog.append(data)
            self._backlog_bytes += len(data)
            if self._backlog_bytes > BACKLOG_LIMIT:
                self.client.hold_reading("backlog")
            return
        try:
            raw, frames = self.framer.feed(data)
        except ProtocolViolation as e:
            self._fail_client(e.sqlstate, str(e))
            return
        if not frames:
            return
        self.messages_from_client += len(frames)
        out: bytes | Awaitable[bytes] | Split = raw
        if self.gate is not None:
            try:
                out = self.gate.review(raw, frames, self)
            except ProtocolViolation as e:
                self._fail_client(e.sqlstate, str(e))
                return
        if type(out) is Split:
            self._split(out, raw, frames)
            return
        if type(out) is not bytes and inspect.isawaitable(out):
            self._wait_for(out, frames)
            return
        self._forward(out, frames)  # type: ignore[arg-type]

    def _forward(self, out: bytes, frames: list[Frame]) -> None:
        terminate = False
        for t, _ in frames:
            if t in SYNCING:  # each answered by one ReadyForQuery
                self._outstanding += 1
                self.syncs_forwarded += 1
            elif t == _X:
                terminate = True
        results = self.results
        if results is not None:
            sent, tags = self.gate.take_tags(frames) if self.gate is not None else (frames, {})
            one_query = len(sent) == 1 and sent[0][0] == _Q
            # One statement with an audit record to complete and nothing to mask, sent
            # while nothing is pending: the relay can follow it to its end itself. (A
            # Query, or an extended-protocol run of one statement: see follow_alone.)
            alone = None
            if not self._quiet and self._on_result is not None:
                if one_query:
                    statements = tags.get(0)
                    if len(tags) == 1 and statements is not None and len(statements) == 1:
                        alone = statements[0]
                        if alone is not None and (alone.plan is not None or alone.internal
                                                  or not results.empty()):
                            alone = None
                elif sent[-1][0] == _S:
                    alone = results.follow_alone(sent, tags)
            if one_query and not tags and (self._quiet or results.empty()):
                self._quiet += 1  # answered by one ReadyForQuery, ahead of anything else
            elif alone is not None:
                self._quiet = 1
                self._quiet_tag = alone
                self._quiet_rest = _Q if one_query else RUN_REST
                if self._watching < WATCH_ENDS:  # its end: CommandComplete, EmptyQuery, Error
                    self._observe(WATCH_ENDS)
            else:
                if self._quiet:  # their answers come first
                    self._hand_over(results)
                results.forwarded(sent, tags)
                watch = results.watch()
                if watch > self._watching:  # before any answer to what was just sent
                    self._observe(watch)
        if out:
            self.upstream.write(out)
        if self._outstanding >= IN_FLIGHT_MAX or (
                results is not None and len(results.tracker) >= IN_FLIGHT_MAX):
            self.client.hold_reading("in_flight")  # released in from_upstream
            self._holding = True
        if terminate:
            self._finish("client terminated")

    def _hand_over(self, results: ResultMasker) -> None:
        """Give `results` the counted batches, ahead of what is forwarded next: the first
        one's statement to follow if it has not ended yet, the rest as one barrier."""
        owed, tag = self._quiet, self._quiet_tag
        self._quiet, self._quiet_tag = 0, None
        if tag is not None:  # answers to it may have passed already; none was an end
            results.forwarded([(self._quiet_rest, b"")], {0: [tag]})
            owed -= 1
        results.owe(owed)

    def unfinished(self) -> list[StatementTag]:
        """The statements forwarded whose results have not ended, in order (a session
        ending now leaves them so): see :meth:`ResultMasker.unfinished`."""
        results = self.results
        rest = results.unfinished() if results is not None else []
        return [self._quiet_tag, *rest] if self._quiet_tag is not None else rest

    def _observe(self, watch: int) -> None:
        """Show `results` what its `watch()` asks for from the next upstream byte on (more
        before answers to what was just forwarded, less once answers were accounted for)."""
        self._watching = watch
        self.observer.observed = OBSERVE[watch]
        self.observer.coalesce = _ROWS if watch == WATCH_ROWS else _NOTHING

    def when_answered(self, n: int) -> asyncio.Future[None]:
        """A future done once the answers to the n-th SYNCING request forwarded are all in
        (see `syncs_answered`), nothing forwarded waits for an answer, or the session
        ended."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.syncs_answered >= n or self._all_answered() or self.done.done():
            fut.set_result(None)
        else:
            self._answered.append((n, fut))
        return fut

    def _split(self, split: Split, raw: bytes, frames: list[Frame]) -> None:
        """Forward frames before `split.at` (once `split.prefix` is ready), then stop
        reading until `split.until` is done; the rest of `raw` is read again after it,
        ahead of anything received meanwhile."""
        at = split.at
        cut = sum(5 + len(body) for _, body in frames[:at])
        self._backlog.insert(0, raw[cut:] + self.framer.take_rest())
        self.messages_from_client -= len(frames) - at  # (counted again when read again)
        self._wait_for(self._forward_then_wait(split.prefix, frames[:at], split.until), None)

    async def _forward_then_wait(self, prefix: bytes | Awaitable[bytes], frames: list[Frame],
                                 until: Callable[[], Awaitable[Any]]) -> bytes:
        out = prefix if type(prefix) is bytes else await prefix  # type: ignore[misc]
        if self.done.done():
            return b""
        if frames:
            self._forward(out, frames)  # type: ignore[arg-type]
        await until()
        return b""

    def _wait_for(self, pending: Awaitable[bytes], frames: list[Frame] | None) -> None:
        # Reading goes on (into the backlog, up to its limit): a client that leaves while
        # its statement waits, for an approver say, must end the session now, and a
        # paused transport would not see it go.
        self._blocked = True
        asyncio.get_running_loop().create_task(self._resume(pending, frames))

    async def _resume(self, pending: Awaitable[bytes], frames: list[Frame] | None) -> None:
        """Forward what `pending` resolves to (as `frames`; None: it forwarded its own), then
        read on: first what came in meanwhile."""
        try:
            out = await pending
        except Exception as e:  # the gate failed: end the session, fail closed
            # (a sqlstate: 58030, the audit trail failed meanwhile; 58000, no catalog)
            code = getattr(e, "sqlstate", None)
            logs.error("session.gate_error", session=self.session_id, error=type(e).__name__,
                       sqlstate=code)
            message = str(e) if code else "internal gateway error while deciding a statement"
            self._last_words(code or "XX000", message)
            self._finish(message)
            return
        if self.done.done():
            return
        if frames is not None:
            self._forward(out, frames)
        self._blocked = False
        backlog, self._backlog = self._backlog, []
        self._backlog_bytes = 0
        for i, chunk in enumerate(backlog):
            self.from_client(chunk)
            if self._blocked:  # blocked again: keep the rest in order (after what a Split of
                # this chunk put back), counted, and read no more while it is past the limit
                self._backlog += backlog[i + 1 :]
                self._backlog_bytes = sum(map(len, self._backlog))
                if self._backlog_bytes <= BACKLOG_LIMIT:
                    self.client.release_reading("backlog")
                return
        self.client.release_reading("backlog")

    def idle(self) -> bool:
        """Nothing forwarded waits for an answer (an unsynced run's included)."""
        return not self._outstanding and self._all_answered()

    def _all_answered(self) -> bool:
        # (also when the counts disagree: after an error PostgreSQL skips a Query sent
        # before the run's Sync, which then gets no ReadyForQuery of its own)
        # (without a result tracker nothing says so: the counts alone)
        results = self.results
        return results is not None and not self._quiet and results.empty()

    def _wake_answered(self) -> None:
        answered, waiting = self.syncs_answered, []
        idle = self._all_answered()
        for n, fut in self._answered:
            if n <= answered or idle or self.done.done():
                if not fut.done():
                    fut.set_result(None)
            else:
                waiting.append((n, fut))
        self._answered = waiting

    def notify(self, message: bytes) -> None:
        """Send the client a message of the gateway's own (a NoticeResponse) between two
        upstream messages: now if the stream is at a boundary, else once it is."""
        if self.observer.at_boundary() and not (self.safety and self.safety.holding()):
            self.client.write(message)
        else:
            self._notices.append(message)

    def deny_with_marker(self, marker: bytes, error: be.ErrorResponse) -> None:
        """Register a replacement: the upstream error naming `marker` becomes `error`."""
        self._denials[marker] = error.encode()

    # -- upstream → client ---------------------------------------------------------------

    def from_upstream(self, data: bytes) -> None:
        due = self.before_release
        if due is not None:
            self.before_release = None
            if not due():
                logs.error("session.result_withheld", session=self.session_id,
                           reason="audit trail unavailable")
                self._fail_internal("the audit trail cannot be written: the result of a "
                                    "statement without its record is withheld", "58030")
                return
        try:
            forward, events = self.observer.relay(data)
        except ProtocolViolation:
            self._fail_upstream("upstream sent an invalid message")
            return
        swaps: list[tuple[int, int, bytes]] = []
        reports: list[tuple[int, int, int]] = []  # ParameterStatus after an end: its result's
        results = self.results
        shown = False  # whether `results` was shown a message of this buffer
        follow = self._on_result is not None
        sent = self._sent
        for mtype, body, start, end, rows in events:
            if mtype & WALKED:  # rows the masker rewrote as the observer walked them
                swaps.append((start, end, body))
            if self._quiet:  # an answer to a batch `results` was not shown (see _forward)
                sent += rows
                if mtype == _Z:
                    self._quiet -= 1
                    self._quiet_tag = None
                    sent = 0
                elif self._quiet_tag is not None and mtype in QUERY_ENDS:  # (not Z: above)
                    # as ResultMasker ends it: nothing masked; after its end, an error
                    # (at commit) is the string's, not the statement's
                    self._ended.append((end, self._quiet_tag, mtype, body, _NONE_MASKED,
                                        sent))
                    self._quiet_tag = None
            elif results is not None:
                shown = True
                sent += rows
                if follow:
                    self._at = end
                    self._sent = sent  # the result that ends now takes them
                try:
                    replacement = results.message(mtype, body)
                except (ProtocolViolation, ValueError) as e:
                    # A result the gateway cannot follow or mask must not reach the client.
                    logs.error("session.result_untracked", session=self.session_id,
                               reason=str(e)[:200])
                    self._fail_internal("the gateway could not follow this result safely")
                    return
                if replacement is not None:
                    swaps.append((start, end, replacement))
                if mtype in _RESULT_ENDS:
                    sent = 0
            if mtype == _Z:
                self.transaction_status = chr(body[0]) if body else "?"
                if self._outstanding:
                    self._outstanding -= 1
                    self.syncs_answered += 1
                    if self._answered:
                        self._wake_answered()
                if not self._outstanding:
                    self._denials.clear()  # markers of statements the server skipped
                if self.gate is not None:
                    self.gate.ready_for_query(self.transaction_status, self.idle)
            elif mtype == _S:
                # The server reports a setting a statement changed once it completed:
                # a card number in the report is that statement's, not the next one's.
                if self._ended:
                    reports.append((start, end, len(self._ended) - 1))
                if self.gate is not None:
                    msg = be.decode_backend(mtype, body)
                    assert isinstance(msg, be.ParameterStatus)
                    self.gate.parameter_status(msg.name, msg.value)
            elif mtype == _E:
                swap = self._match_denial(body) if self._denials else None
                if swap is None and self.gate is not None:
                    swap = withhold_row_values(body)  # a constraint's row: any column
                if swap is not None:
                    swaps.append((start, end, swap))
            elif mtype == _R or mtype == _K:  # after login: not behaving like PostgreSQL
                self._fail_upstream("upstream sent an unexpected message")
                return
        self._sent = sent
        if self._holding and self._outstanding < IN_FLIGHT_MAX // 2 and (
                results is None or len(results.tracker) < IN_FLIGHT_MAX // 2):
            self._holding = False
            self.client.release_reading("in_flight")
        if shown:
            watch = results.watch()  # type: ignore[union-attr]
            if watch != self._watching:
                self._observe(watch)
        if swaps:
            forward = _splice(forward, swaps)
        safety = self.safety
        later = placed = None
        if safety is not None:
            hits = safety.hits
            forward = safety.feed(forward)
            ended = self._ended
            if ended:  # reported once the answer is on its way (below)
                self._ended = []
                later = ended
                if safety.ends or self._carried_hits:  # hits to place: rare
                    placed = self._place_hits(ended, swaps, safety.returned_held,
                                              safety.ends, reports)
            elif safety.ends:  # in a result still streaming: counted when it ends
                self._carried_hits += len(safety.ends)
            if self.safety_error and safety.hits != hits:
                if later:  # (the client gets none of this buffer)
                    self._deliver(later, placed)
                logs.warning("session.safety_net_stop", session=self.session_id)
                self._stop_on_pan()
                return
        elif self._ended:
            later, self._ended = self._ended, []  # (no net: no hit to place)
        try:
            if forward:
                self.client.write(forward)
        finally:  # a write that fails still leaves the ended statements their records
            if later:
                self._deliver(later, placed)
        if self._notices and self.observer.at_boundary() and not (
                self.safety and self.safety.holding()):
            notices, self._notices = self._notices, []
            self.client.write(b"".join(notices))
        if self.safety_error:
            # Whether what the client has received so far ends between two messages.
            # (safety_error: a safety net is there)
            self._client_at_boundary = self.observer.at_boundary() and not (
                self.safety is not None and self.safety.holding())

    def _result_ended(self, tag: StatementTag, mtype: int, body: bytes,
                      counts: dict[str, int], returned: int | None = None) -> None:
        sent, self._sent = self._sent, 0  # (a statement its error skips sent none)
        if returned is not None:  # a row limit's: the rows it withheld were counted too
            sent = returned
        self._ended.append((self._at, tag, mtype, body, counts, sent))

    def _deliver(self, ended: Sequence[_Ended], hits: list[int] | None = None) -> None:
        """Report results that ended, each with its safety-net hits (`hits`, in order;
        None: none). The relay calls it once the answer is passed on: the records are
        written later anyway, and the client's next statement need not wait for them."""
        deliver = self._on_result
        if deliver is None:
            return
        if hits is None:
            for _, tag, mtype, body, counts, sent in ended:
                deliver(tag, mtype, body, counts, 0, sent)
        else:
            for (_, tag, mtype, body, counts, sent), k in zip(ended, hits, strict=True):
                deliver(tag, mtype, body, counts, k, sent)

    def _place_hits(self, ended: Sequence[_Ended], swaps: Sequence[tuple[int, int, bytes]],
                    held: int, hit_ends: Sequence[int],
                    reports: Sequence[tuple[int, int, int]] = ()) -> list[int]:
        """The safety-net hits in each result that ended in this buffer, in its own
        bytes: a hit belongs to the result during or at whose end message it ends, or, in
        a ParameterStatus after an end (`reports`: its start, end and that result's
        index), to that result (`hit_ends` and those offsets are into what the client
        got: this buffer after the masks' splices, behind `held` bytes of the previous
        one); hits carried from earlier buffers go to the first, hits after the last are
        carried to the next."""
        def shifted(at: int) -> int:
            out = at + held
            for s, e, replacement in swaps:
                if e > at:
                    break
                out += len(replacement) - (e - s)
            return out

        bounds = [shifted(at) for at, *_ in ended]
        spans = [(shifted(start), shifted(end), k) for start, end, k in reports]
        placed = [0] * len(ended)
        placed[0], self._carried_hits = self._carried_hits, 0
        i = 0
        for hit in hit_ends:
            for start, end, k in spans:
                if start < hit <= end:
                    placed[k] += 1
                    break
            else:
                while i < len(bounds) and hit > bounds[i]:
                    i += 1
                if i < len(bounds):
                    placed[i] += 1
                else:
                    self._carried_hits += 1
        return placed

    def take_carried_hits(self) -> int:
        """Safety-net hits after the last result that ended (in one still streaming)."""
        hits, self._carried_hits = self._carried_hits, 0
        return hits

    def take_sent(self) -> int:
        """Rows sent since the last result ended (of one still streaming), also those
        no event has counted yet (rows of a followed result are stepped over in C); under
        a row limit that withheld rows, those the client got."""
        sent, self._sent = self._sent, 0
        sent += self.observer.take_rows()
        returned = self.results.take_returned() if self.results is not None else None
        return sent if returned is None else returned  # (a row limit's: not those withheld)

    def _stop_on_pan(self) -> None:
        if not self.upstream.closed:
            self.upstream.abort()
        if self._client_at_boundary:
            message = ("the result held a card number that the policy did not mask; "
                       "the gateway ended the session (masking.safety_net: error)")
            self.client.write(be.ErrorResponse.build("42501", message, "FATAL").encode())
        self._finish("safety net stop")

    def _match_denial(self, body: bytes) -> bytes | None:
        for marker in self._denials:
            if marker in body:
                return self._denials.pop(marker)
        return None

    # -- endings ---------------------------------------------------------------------------

    def _last_words(self, code: str, message: str) -> None:
        """A FATAL error for the client, after whatever it was already owed; skipped when a
        message is half-forwarded, since an error inside it would corrupt the framing."""
        if self.end_sqlstate is None:  # (what ended the session, for its end record)
            self.end_sqlstate = code
        if self.safety is not None and not self.client.closed:
            self.client.write(self.safety.flush())
        if self.observer.forwarded_at_boundary():
            self.client.write(be.ErrorResponse.build(code, message, "FATAL").encode())

    def terminate(self, code: str, message: str) -> None:
        """End the session from the gateway's side (shutdown, admin action)."""
        self._last_words(code, message)
        if not self.framer.has_partial():
            self.upstream.write(_TERMINATE)
        self._finish(message)

    def _fail_client(self, code: str, message: str) -> None:
        logs.warning("session.protocol_violation", session=self.session_id, sqlstate=code,
                     reason=message)
        self._last_words(code, message)
        self._finish("protocol violation")

    def _fail_internal(self, message: str, code: str = "XX000") -> None:
        """End the session: the bytes in hand must not be forwarded (fail closed)."""
        if self.end_sqlstate is None:
            self.end_sqlstate = code
        if not self.upstream.closed:
            self.upstream.abort()
        if self.observer.forwarded_at_boundary():
            self._last_words(code, message)
        self._finish(message)

    def _unexpected(self, exc: Exception) -> None:
        """An exception nothing expected while relaying: end this session, fail closed
        (the bytes in hand are dropped), and log where, never what (it may hold data)."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" \
            if tb is not None else "?"
        logs.error("session.internal_error", session=self.session_id,
                   error=type(exc).__name__, where=where)
        if not self.done.done():
            self._fail_internal("internal gateway error; the session was ended")

    def _fail_upstream(self, message: str) -> None:
        logs.error("upstream.protocol_violation", session=self.session_id, reason=message)
        self.upstream.abort()
        self._upstream_gone()

    def _client_gone(self) -> None:
        # (without a result tracker, idle() cannot tell: the ReadyForQuery count can)
        busy = not self.idle() if self.results is not None else self._outstanding > 0
        if self.on_client_gone is not None and busy:
            self.on_client_gone()
        if not self.upstream.closed and not self.framer.has_partial():
            self.upstream.write(_TERMINATE)
        self._finish("client disconnected")

    def _upstream_gone(self) -> None:
        self._last_words("08006", "connection to the upstream database was lost")
        self._finish("upstream disconnected")

    def _finish(self, reason: str) -> None:
        try:  # results that ended in the buffer at hand still get their records
            ended, self._ended = self._ended, []
            if ended:
                self._deliver(ended, self._place_hits(ended, (), 0, ()))
        except Exception as e:
            logs.error("session.result_report_failed", session=self.session_id,
                       error=type(e).__name__)
        if not self.done.done():
            self.done.set_result(reason)
        if self._answered:
            self._wake_answered()
        for ep in (self.client, self.upstream):
            ep.on_data = _discard
            ep.on_error = None
            ep.on_close = None
            ep.close()


def _splice(data: bytes, swaps: list[tuple[int, int, bytes]]) -> bytes:
    out, pos = [], 0
    for start, end, replacement in swaps:
        out += [data[pos:start], replacement]
        pos = end
    out.append(data[pos:])
    return b"".join(out)


def _discard(_data: bytes) -> None:
    pass
