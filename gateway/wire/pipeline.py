"""Which client request each backend message answers. Sans-IO.

The frontend/backend protocol answers requests strictly in order, but not one message
per request: a simple Query yields a result per statement, an Execute streams rows, an
error in an extended-protocol batch makes the server skip everything up to Sync. A
layer that rewrites results (masking) or records per-statement outcomes (audit) must know,
for every RowDescription, DataRow, CopyData and CommandComplete, which request — and
which statement of a multi-statement Query — it belongs to. `ResponseTracker` keeps that
queue: `request()` for every message forwarded upstream, `response()` for every backend
message that answers one.

A backend message the queue cannot explain raises `ProtocolViolation`: a caller that
rewrites results must not guess. Requests nobody follows (no mask, no audit record) that
end with a Sync are kept as one `barrier()`, which explains everything up to its last
ReadyForQuery: while only barriers are pending, only ReadyForQuery needs to be shown.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import ProtocolViolation

__all__ = ["QUERY_ENDS", "REQUEST_TYPES", "RESPONSE_TYPES", "RUN_REST", "Answer", "Request",
           "ResponseTracker"]

# Client messages that the server answers (others — Flush, CopyData/Done/Fail, Terminate —
# get no response of their own).
REQUEST_TYPES = frozenset(b"QPBDECSF")
# Backend messages that answer a request. NoticeResponse, NotificationResponse and
# ParameterStatus are asynchronous and answer nothing.
RESPONSE_TYPES = frozenset(b"123ntTDCIsHGWdcEZV")
# The answers that move a Query along: a statement's end (CommandComplete,
# EmptyQueryResponse), an error, and ReadyForQuery. Its other answers (descriptions, rows,
# COPY) belong to the statement running and change nothing here (see only_queries()).
QUERY_ENDS = frozenset(b"CIEZ")

_Q, _P, _B, _D, _E, _C, _S, _F = (ord(c) for c in "QPBDECSF")
_COMPLETES = {_P: ord("1"), _B: ord("2"), _C: ord("3")}
SYNCING = frozenset((_Q, _S, _F))  # requests answered last by a ReadyForQuery
# A pseudo request: untagged requests that end with a Sync, compressed (see barrier()).
BARRIER = 0
# A pseudo request: what is left of an extended-protocol run of one statement ([Parse,]
# Bind, [Describe,] Execute, Sync) whose answers a caller followed itself so far (the
# relay does, for an audited statement with nothing to mask). Its tag is a Query's (a
# list, of that one statement); any answer of those requests may come, up to the run's
# ReadyForQuery; the first CommandComplete, EmptyQueryResponse or error ends the statement.
RUN_REST = 1
_QUERY_LIKE = (_Q, RUN_REST)
# what else may answer a Query (a RowDescription, rows, COPY) or, also, the rest of a run
_QUERY_ANSWERS = frozenset(b"TDHGWdc")
_RUN_ANSWERS = _QUERY_ANSWERS | frozenset(b"12tn")


@dataclass(slots=True)
class Request:
    """One request awaiting its responses. `tag` is the caller's (e.g. a mask plan; for a
    Query, a list with one entry per statement)."""

    type: int
    tag: Any = None
    #: Query: statements finished so far (CommandComplete / EmptyQueryResponse)
    statement: int = 0
    failed: bool = False
    #: the caller's, for a request whose effect on the session (a statement parsed,
    #: bound or closed) it follows to the server's answer; kept like a tag when skipped
    effect: Any = None

    @property
    def current_tag(self) -> Any:
        """The tag of what is running now: the statement's for a Query."""
        if self.type == _Q or self.type == RUN_REST:
            tags = self.tag
            if tags is not None and self.statement < len(tags):
                return tags[self.statement]
            return None
        return self.tag


class Answer(NamedTuple):
    """What a backend message means for the request it answers.

    ``ends_result`` is set on the message that completes one statement's result (C, I, s,
    or an error); ``done`` when the request gets no more responses.
    """

    request: Request
    ends_result: bool
    done: bool
    #: the caller's tag for what this message belongs to (a Query: its statement's)
    tag: Any


def _answer(request: Request, ends_result: bool = False, done: bool = False,
            tag: Any = None) -> Answer:
    # Once per backend message: a bare tuple.__new__ costs a fraction of a constructor.
    return _new_answer(Answer, (request, ends_result, done,
                                request.tag if request.type not in _QUERY_LIKE else tag))


_new_answer = tuple.__new__


class ResponseTracker:
    def __init__(self) -> None:
        self._queue: deque[Request] = deque()
        # After an extended-protocol error the server discards every message up to the
        # next Sync, also those it receives after the error: an error that emptied the
        # queue leaves the requests forwarded next unanswered until a Sync.
        self._discarding = False
        self._skipped: list[Request] = []  # tagged requests an error made the server skip

    def __len__(self) -> int:
        return len(self._queue)

    def request(self, mtype: int, tag: Any = None) -> Request | None:
        """Records a client message forwarded upstream (types outside REQUEST_TYPES are
        ignored and return None), or RUN_REST."""
        if mtype not in REQUEST_TYPES and mtype != RUN_REST:
            return None
        if self._discarding:
            if mtype != _S:
                return None  # the server skips it: no answer will come
            self._discarding = False
        req = Request(mtype, tag)
        self._queue.append(req)
        return req

    def barrier(self, syncs: int) -> None:
        """Records untagged requests whose answers nobody needs, ending with the last of
        `syncs` Syncs (or Queries / FunctionCalls): everything the server sends up to that
        many more ReadyForQuery answers them. A queue of nothing but barriers lets a caller
        stop showing this tracker any message but ReadyForQuery (see :attr:`idle`)."""
        if syncs <= 0:
            return
        if self._discarding:
            raise ValueError("no barrier while the server skips to a Sync")
        q = self._queue
        if q and q[-1].type == BARRIER:
            q[-1].statement += syncs
        else:
            q.append(Request(BARRIER, None, syncs))

    def barrier_if_idle(self, syncs: int) -> bool:
        """:meth:`barrier` when :attr:`idle` and not :attr:`discarding` (True), else
        nothing (False)."""
        q = self._queue
        if self._discarding or (q and (len(q) > 1 or q[0].type != BARRIER)):
            return False
        self.barrier(syncs)
        return True

    def empty(self) -> bool:
        """True when no request is pending and requests forwarded now will be answered
        (the server is not skipping to a Sync)."""
        return not self._queue and not self._discarding

    def only_queries(self) -> bool:
        """True when nothing but Queries (and barriers) is pending and the server is not
        skipping to a Sync: then only QUERY_ENDS move this tracker, and a caller with
        nothing to mask or rewrite may show it only those."""
        if self._discarding:
            return False
        for r in self._queue:
            if r.type != _Q and r.type != BARRIER:
                return False
        return True

    def pending(self) -> tuple[Request, ...]:
        """The requests still waiting for (the rest of) their answers, oldest first."""
        return tuple(self._queue)

    def take_skipped(self) -> list[Request]:
        """The requests with a tag or an effect that the last extended-protocol error made
        the server skip (it runs nothing up to the next Sync): they will get no answer.
        Cleared by the call."""
        skipped, self._skipped = self._skipped, []
        return skipped

    @property
    def discarding(self) -> bool:
        """True while requests forwarded now will be skipped by the server (an
        extended-protocol error, no Sync sent since)."""
        return self._discarding

    @property
    def idle(self) -> bool:
        """True when every pending request is untagged and ends at a known ReadyForQuery:
        only ReadyForQuery (and errors) need to be shown to :meth:`response`."""
        q = self._queue
        return not q or (len(q) == 1 and q[0].type == BARRIER)

    def response(self, mtype: int) -> Answer | None:
        """Accounts for one backend message; None for asynchronous ones."""
        q = self._queue
        if mtype not in RESPONSE_TYPES:
            return None
        if not q:
            if mtype == 0x45:  # a FATAL the server sends on its own (shutdown, termination)
                return None
            raise ProtocolViolation(f"upstream sent {chr(mtype)!r} with no request pending")
        head = q[0]
        t = head.type
        if t == BARRIER:  # `statement` counts the ReadyForQuery still to come
            if mtype != 0x5A:
                return _answer(head)
            head.statement -= 1
            if head.statement:
                return _answer(head)
            q.popleft()
            return _answer(head, done=True)
        if mtype == 0x5A:  # Z
            if t not in (_S, _Q, _F, RUN_REST):
                raise ProtocolViolation(f"upstream sent ReadyForQuery while {_waiting(t)} waits")
            q.popleft()
            return _answer(head, done=True)
        if mtype == 0x45:  # E
            return self._error(head)
        if t == _Q or t == RUN_REST:
            tag = head.current_tag
            if mtype in (0x43, 0x49):  # C, I: one statement done
                head.statement += 1
                return _answer(head, True, False, tag)
            if mtype in (_QUERY_ANSWERS if t == _Q else _RUN_ANSWERS):
                return _answer(head, False, False, tag)
            raise self._unexpected(mtype, head)
        if t == _E:
            if mtype in (0x43, 0x49, 0x73):  # C, I, s
                q.popleft()
                return _answer(head, ends_result=True, done=True)
            if mtype in (0x44, 0x48, 0x47, 0x57, 0x64, 0x63):  # D H G W d c
                return _answer(head)
            raise self._unexpected(mtype, head)
        if _COMPLETES.get(t) == mtype:  # ParseComplete, BindComplete, CloseComplete
            q.popleft()
            return _answer(head, done=True)
        if t == _D:
            if mtype == 0x74:  # t: a statement's parameters; T or n follows
                return _answer(head)
            if mtype in (0x54, 0x6E):  # T, n
                q.popleft()
                return _answer(head, done=True)
        if t == _F and mtype == 0x56:  # V; Z follows
            return _answer(head)
        raise self._unexpected(mtype, head)

    def _error(self, head: Request) -> Answer:
        head.failed = True
        if head.type in (_Q, _S, _F, RUN_REST):
            return _answer(head, True, False, head.current_tag)  # ReadyForQuery follows
        # Extended protocol: the server skips every message up to the next Sync, those
        # not forwarded yet included. (A barrier holds its own Sync; by construction one
        # never follows requests that are still open.)
        q = self._queue
        q.popleft()
        while q and q[0].type != _S and q[0].type != BARRIER:
            skipped = q.popleft()
            if skipped.tag is not None or skipped.effect is not None:
                self._skipped.append(skipped)
        if not q:
            self._discarding = True
        return _answer(head, ends_result=True, done=True)

    @staticmethod
    def _unexpected(mtype: int, head: Request) -> ProtocolViolation:
        return ProtocolViolation(
            f"upstream sent {chr(mtype)!r} while {_waiting(head.type)} waits for its answer")


def _waiting(t: int) -> str:
    """A pending request, for an error message: its type, or what a pseudo request is."""
    return "the rest of an extended-protocol run" if t == RUN_REST else repr(chr(t))
