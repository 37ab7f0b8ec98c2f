"""The per-statement decision point: analyze, ask the policy, forward or deny.

Runs on every client batch the relay frames. Decision points are Query (every statement
of the string, decided whole before any of it runs), Parse (extended protocol, decided
before the server sees it) and FunctionCall (always refused: it runs a function by OID,
which no policy can describe). A denied message is replaced by a unique unparsable
marker; the relay swaps the server's syntax error for the gateway's 42501.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from gateway import logs
from gateway.admin import metrics
from gateway.audit import records
from gateway.audit.template import TemplateCache
from gateway.catalog.classification import classification_of
from gateway.catalog.model import EVERY_RELATION, FIRST_NORMAL_OID, Catalog
from gateway.config.model import PolicyConfig
from gateway.masking.plan import MaskPlan, MaskRefused, plan_masks, with_row_limit
from gateway.masking.results import StatementTag
from gateway.policy.decision import Decision
from gateway.policy.engine import PolicyEngine, input_digest
from gateway.proxy.relay import Split
from gateway.sql import (
    SessionSqlState,
    SqlParseError,
    StatementInfo,
    TooManyStatements,
    analyze,
)
from gateway.sql.parse import CACHE_MAX_TEXT as PARSE_CACHE_MAX_TEXT
from gateway.sql.session_state import MAX_NAMES, may_set_path
from gateway.wire import backend as be
from gateway.wire.codec import cstr, frame
from gateway.wire.errors import ProtocolViolation
from gateway.wire.framing import Frame
from gateway.wire.frontend import (
    MAX_NAME,
    Bind,
    Close,
    Describe,
    Execute,
    Parse,
    Query,
    bind_names,
    decode_frontend,
    execute_portal,
    long_name,
    parse_statement,
    parse_type_oids,
    query_text,
)
from gateway.wire.pipeline import SYNCING

from .catalog_cache import CatalogCache
from .input_doc import SessionFacts, reported_name
from .roles import WRAPPED_AT, PortalRoles
from .roles import encode as role_frames
from .shapes import Shape, kept_by_shape, restate, reusable, shape_of

if TYPE_CHECKING:
    from gateway.approvals import ApprovalRequest, ApprovalService
    from gateway.audit import AuditContext, AuditWriter
    from gateway.proxy.relay import Relay

_Q, _P, _F, _C, _B, _D, _E = (ord(c) for c in "QPFCBDE")
_COPY_DONE = ord("c")
_DECIDED = frozenset((_Q, _P, _F, _C))
_AUDIT_DOWN = "the audit trail cannot be written: statements are refused until it recovers"
_ROLE_TRACKED = frozenset(b"BEC")  # messages that bind, run or close a db_role portal
_ANALYSIS_CACHE_MAX = 4096
# Texts longer than the parser's own cache takes are analyzed afresh each time rather
# than kept as cache keys: the caches are bounded in entries, and this bounds them in
# bytes (thousands of distinct megabyte statements must not all stay in memory).
_CACHED_TEXT_MAX = PARSE_CACHE_MAX_TEXT


@dataclass
class _Analysis:
    """What analyze() said about one text, with per-policy input documents memoized."""

    infos: tuple[StatementInfo, ...]
    memo: dict[Any, tuple[dict[str, Any], str]]
    restated: bool  # reused from another text of the same shape: only `sql` differs
    #: the one statement's text as the audit trail records it, when the lexer pass that
    #: found the shape already redacted it
    redacted: str | None = None


#: (statement, its decision, its input document, the document's digest, redacted SQL)
_Decided = tuple[StatementInfo, Decision, dict[str, Any], str, "str | None"]

_ANALYSES: OrderedDict[tuple[Any, ...], _Analysis] = OrderedDict()
_SHAPES: OrderedDict[Any, _Analysis] = OrderedDict()
_REPEATS_MAX = 256  # per session, and per table
# a NamedTuple (a tag, a repeat's verdict) in one C call, not through its Python
# constructor: once per statement
_new_tuple = tuple.__new__
# `replaced` of a batch forwarded as it came (read only: one shared dict, not one per batch)
_NONE_REPLACED: dict[int, bytes] = {}
_REPEAT_TEXT_MAX = 4096  # per session: at most ~2 MB of kept texts
# PostgreSQL's identifiers are at most 63 bytes; a protocol name is any string
_NAME_SHOWN = 63


@dataclass(slots=True)
class _Repeat:
    """A plain allow this session may give again without analysis or policy (see
    `StatementGate._repeat`)."""

    verdict: Verdict
    outcomes: tuple[str, ...]
    decided: tuple[_Decided, ...]  # when auditing: what the records are made of
    #: when auditing one statement by template: what `_record` would append for it
    record: _RecordPlan | None = None
    #: the names of the relations it reads (a protocol statement's, see register_parse)
    reads: frozenset[str] = frozenset()
    #: the seq of the decision record it was recorded under (0: none yet): a repeat is
    #: no new decision, and its statement record links to that one (see _linked)
    decision_seq: int = 0


class _RecordPlan(NamedTuple):
    """A repeat's decision record: `_record`'s template key and builder, worked out once."""

    key: tuple[Any, ...]  # see _template_key: its third member is the redacted text
    build: Callable[[], dict[str, Any]]
    decision: Decision
    command: str
    #: a read that changes nothing (_changes_nothing): its record may be written once its
    #: result is due, not before it runs (see _finish_batch)
    deferrable: bool = False


def _template_key(ctx: AuditContext, decision: Decision, doc: dict[str, Any], digest: str,
                  redacted: str | None) -> tuple[Any, ...] | None:
    """The template key of a decision record the gateway did not refuse, or None when it
    cannot share a template: records equal but for their envelope have equal keys (same
    statement document, decision, text and approval; the session's part is the same
    objects)."""
    if redacted is None or not ctx.shares_session_input(doc):
        return None
    approval = doc.get("approval") or {}
    return (digest, id(decision), redacted, approval.get("granted"), approval.get("id"))


def _changes_nothing(info: StatementInfo) -> bool:
    """Whether running the statement changes nothing anywhere: a read with no function
    call (any function may write, take a lock, advance a sequence), no row lock at any
    level (a subquery's, a view's), and nothing through which the server runs code the
    statement does not name (`may_change`: a cast or named type, a table under row
    security, a foreign table, a column of a type defined in the database). Its only
    effect is its result."""
    return info.kind == "read" and not info.functions and not info.details.get("locking") \
        and not info.effects and not info.may_change


def _ends_alone(info: StatementInfo) -> bool:
    """A COMMIT, END or ROLLBACK alone in its query string: its one effect, the end of
    the transaction, is followed from the server's ReadyForQuery, and observe() does
    nothing with it (only a later statement of the same string would see it ended). So
    a kept allow of it skips nothing the full path does: every transaction's end would
    otherwise be analyzed, decided and given a decision record of its own."""
    return info.count == 1 and all(e.op == "end_transaction" for e in info.effects)


def _declares_defined_types(body: bytes) -> bool:
    """Whether a Parse declares a parameter of a type defined in the database: binding a
    value to it may run that type's code, a domain's CHECK."""
    return any(t >= FIRST_NORMAL_OID for t in parse_type_oids(body))


def _record_builder(ctx: AuditContext, decision: Decision, doc: dict[str, Any], digest: str,
                    redacted: str | None, refused: bool = False,
                    error: be.ErrorResponse | None = None) -> Callable[[], dict[str, Any]]:
    """What builds a decision record (called only when no template can seal it): the
    policy's decision, recorded as denied (with `error`) when the gateway refused it."""
    return functools.partial(
        records.decision_record, ctx, decision=decision, input_doc=doc,
        statement_digest=digest, redacted_sql=redacted,
        outcome="denied" if refused else None,
        reasons=[error.message] if refused and error is not None else None,
        sqlstate=error.code if refused and error is not None else None)


def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    cache[key] = value
    if len(cache) > _ANALYSIS_CACHE_MAX:
        cache.popitem(last=False)


# Client encodings whose multibyte characters can end in an ASCII quote or backslash: the
# server would read a statement differently from the gateway's UTF-8 parse.
_UNSAFE_ENCODINGS = frozenset({"SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030",
                               "JOHAB"})


class Verdict(NamedTuple):
    """What the gate does with a statement. (A NamedTuple, not a dataclass: a repeat's
    verdict is copied with its own tag once per statement, see _with_tags.)"""

    allowed: bool
    error: be.ErrorResponse | None = None
    #: per statement: how to mask its results (None: nothing to mask)
    plans: tuple[MaskPlan | None, ...] = ()
    #: per statement: what follows it to its results (mask plan, audit record)
    tags: tuple[StatementTag | None, ...] = ()
    #: the policy holds the statement for a human (require_approval)
    hold: Hold | None = None
    #: the upstream role the statement runs as (the decision's db_role), if any
    role: str | None = None
    #: how many statements the query string holds
    statements: int = 1


# A query string with no statement (empty, blanks, a comment, ';'): the server answers
# EmptyQueryResponse and runs nothing, so there is no decision to record.
_NOTHING_TO_RUN = Verdict(True, statements=0)


def _with_tags(verdict: Verdict, tags: tuple[StatementTag | None, ...]) -> Verdict:
    """`verdict` with `tags` (``_replace`` without its keyword parsing: this is once per
    statement)."""
    allowed, error, plans, _, hold, role, statements = verdict
    return _new_tuple(Verdict, (allowed, error, plans, tags, hold, role, statements))


@dataclass(frozen=True)
class Hold:
    """A statement waiting for approval: what an approver is shown and what a grant covers."""

    sql: str
    command: str
    fingerprint: str
    approvers: tuple[str, ...]
    grant_ttl: float | None
    reasons: tuple[str, ...]
    min_approvals: int = 1
    #: the seq of the held decision's record (None: no audit trail), which the
    #: approval.requested record links
    decision_seq: int | None = None


def _named(name: str) -> str:
    """A client-chosen statement or portal name as a refusal's record describes it:
    quoted, and cut (the error the client gets has it whole)."""
    if len(name) > _NAME_SHOWN:
        name = name[:_NAME_SHOWN] + "..."
    return '"' + name.replace('"', '""') + '"'


def _run_at(relay: Relay, frames: list[Frame], i: int) -> int:
    """The ordinal, among the session's requests answered by a ReadyForQuery, of the first
    at or after frame `i` of a batch not forwarded yet: once its answers are in, the
    server has answered (or skipped) frame `i` too."""
    return relay.syncs_forwarded + 1 + sum(1 for t, _ in frames[:i] if t in SYNCING)


def _denial(code: str, message: str, detail: str | None = None,
            hint: str | None = None) -> Verdict:
    return Verdict(False, be.ErrorResponse.build(code, message, detail=detail, hint=hint))


class StatementGate:
    def __init__(self, *, facts: SessionFacts, connection: str, catalogs: CatalogCache,
                 policy: Callable[[], PolicyEngine | None],
                 hash_key: bytes | None = None, audit: AuditWriter | None = None,
                 audit_ctx: AuditContext | None = None,
                 approvals: ApprovalService | None = None,
                 approval_timeout: float = 300.0,
                 max_statement_size: int = PolicyConfig.max_statement_size) -> None:
        self.facts = facts
        # Longer statement texts are refused unread: parsing and lexing one holds the
        # worker, every session of it, for about 0.6 s per MB.
        self.max_statement_size = max_statement_size
        self.hash_key = hash_key
        # Every decision is an audit record, durable before the statement is forwarded (a
        # read that changes nothing: before its answers go on, see _finish_batch).
        self.audit = audit
        self.audit_ctx = audit_ctx
        self._templates = TemplateCache(audit) if audit is not None else None
        # where the writer says how far records are durable (read once per statement)
        self._ledger = audit.ledger if audit is not None else None
        self._last_seq = 0
        # Whether every statement the batch at hand decided is an allowed read that changes
        # nothing (_changes_nothing): then its records may be written once its answers come
        # back, before the relay passes them on (see _finish_batch)
        self._reads_only = True
        # Just-in-time approval: a held statement waits here for a human's decision.
        self.approvals = approvals
        self.approval_timeout = approval_timeout
        self.held: str | None = None  # the approval request this session waits for
        # db_role over the extended protocol: statements/portals that run as a role, and
        # the Executes of this batch sent wrapped in SET ROLE / RESET ROLE.
        self.roles = PortalRoles()
        self._expanded: dict[int, list[Frame]] = {}
        self._background: set[asyncio.Future[Any]] = set()
        # frame index → mask plan(s) of the batch just reviewed (see take_plans)
        self._plans: dict[int, Any] = {}
        self.connection = connection
        self.catalogs = catalogs
        self.policy = policy
        self.state = SessionSqlState()
        self.decisions = 0
        self.denials = 0
        # Decision records of this session by outcome (denied, held): session.end's
        # totals, which count statement records for the rest.
        self.recorded: dict[str, int] = {"denied": 0, "held": 0}
        # of the statement _decide analyzed last: whether it runs a cursor or SQL
        # statement by name, and the names of the relations it reads (see register_parse)
        self._names_a_name = False
        self._reads: frozenset[str] = frozenset()
        # Set when the session's parsing settings drifted from the gateway's: fail closed.
        self.poisoned: str | None = None
        self._facts_digest: tuple[str, str] | None = None
        # Statements decided a plain allow, by text and by shape (other literal values):
        # clients repeat a handful of statements, and the full path (analysis lookups,
        # input document, policy cache) costs several times the repeat.
        # They hold while the policy engine, the catalog snapshot and the session's name
        # resolution are the ones they were decided under (identity, identity, version);
        # any other is a new start, so no stale entry keeps an old engine alive.
        self._by_text: dict[tuple[str, str], _Repeat] = {}
        self._by_shape: dict[tuple[Any, str], _Repeat] = {}
        self._repeats_under: tuple[PolicyEngine | None, Catalog | None, int] = (None, None, -1)
        self._hit: _Repeat | None = None  # the repeat the current decision came from
        self._kept: _Repeat | None = None  # the allow the current decision kept, if any
        # A session.update record not yet appended (the audit trail failed when the name
        # changed): the next decision appends it first, or is refused.
        self._update: dict[str, Any] | None = None
        # Told the session's new audit context and application_name (see _renamed).
        self.on_renamed: Callable[[AuditContext | None, str], None] | None = None

    # -- the relay's hook -----------------------------------------------------------------

    def review(self, raw: bytes, frames: list[Frame], relay: Relay
               ) -> bytes | Awaitable[bytes] | Split:
        single_query = len(frames) == 1 and frames[0][0] == _Q
        self._reads_only = True
        audit = self.audit
        if audit is not None and not audit.healthy:
            return self._while_unaudited(frames, relay)
        state = self.state
        if not single_query and long_name(frames):
            raise ProtocolViolation(
                f"statement and portal names longer than {MAX_NAME} bytes are not accepted "
                "through the gateway (PostgreSQL would cut them to their first "
                f"{MAX_NAME} bytes)", "42622")
        if not single_query and not any(t in _DECIDED for t, _ in frames) and not self.roles \
                and not state.sql_used and not state.path_moved and not state.cursor_used \
                and not state.bind_check:
            return raw
        catalog = self.catalogs.current(self.connection)
        if catalog is None:  # the connection's first statement: read it again once loaded
            return Split(0, b"", functools.partial(self.catalogs.get, self.connection))
        if single_query and not self.roles:
            # One Query and nothing else (pgbench, psql, most drivers' simple protocol):
            # an allow needs none of the batch machinery below.
            body = frames[0][1]
            if self._by_shape:
                out = self._kept_query(raw, frames, relay, catalog)
                if out is not None:
                    return out
            sql = query_text(body)
            verdict = self._decide_sql(sql, "simple", catalog)
            if not verdict.allowed or verdict.role is not None:
                return self._review(raw, frames, relay, catalog, verdict)
            if not verdict.tags and self.audit is None:
                return raw  # nothing follows it to its results, no record to wait for
            self._admit(0, _Q, None, sql, verdict, {})
            return self._finish_batch(raw, frames, _NONE_REPLACED, relay)
        return self._review(raw, frames, relay, catalog)

    async def end_hold(self, sqlstate: str | None) -> None:
        """The session ends while a statement is held: withdraw its request now, so that
        the withdrawal is recorded before the session's end."""
        from gateway.approvals import ApprovalError

        held, svc = self.held, self.approvals
        if held is not None and svc is not None:
            with contextlib.suppress(ApprovalError):  # (then it expires unanswered)
                await svc.withdraw(held, withdrawal_reason(sqlstate))

    def take_unsent(self) -> list[StatementTag]:
        """The statements decided (and recorded) in a batch the relay never forwarded (the
        session ended while it waited): each still needs an outcome."""
        plans, self._plans, self._expanded = self._plans, {}, {}
        out: list[StatementTag] = []
        for tag in plans.values():
            for one in tag if isinstance(tag, list) else (tag,):
                if isinstance(one, StatementTag) and not one.internal \
                        and one.decision_seq is not None:
                    out.append(one)
        return out

    def take_tags(self, frames: list[Frame]) -> tuple[list[Frame], dict[int, Any]]:
        """The batch `review` just decided as forwarded — with the messages the gateway
        added around db_role Executes — and its statement tags by index in that list: a
        list (one per statement) for a Query, a tag for a Parse, an internal tag for each
        added message. No tags when nothing follows the statements to their results."""
        tags = self._plans
        if tags:
            self._plans = {}
        expanded = self._expanded
        if not expanded:
            return frames, tags  # (an empty one is the gate's own: the caller only reads)
        self._expanded = {}
        out: list[Frame] = []
        out_tags: dict[int, Any] = {}
        for i, f in enumerate(frames):
            for sub in expanded.get(i, (f,)):
                if i in expanded and sub is not expanded[i][WRAPPED_AT]:  # added by the gateway
                    out_tags[len(out)] = StatementTag(internal=True)
                elif i in tags:
                    out_tags[len(out)] = tags[i]
                out.append(sub)
        return out, out_tags

    def _review(self, raw: bytes, frames: list[Frame], relay: Relay, catalog: Catalog,
                first: Verdict | None = None) -> bytes | Awaitable[bytes] | Split:
        """`first`: the verdict on frame 0 (a Query), when the caller decided it already."""
        replaced: dict[int, bytes] = {}
        holds: list[tuple[int, Any, str, str, Hold]] = []
        roles, state = self.roles, self.state
        if roles.unsettled:
            roles.settle(relay.syncs_answered)
        for i, (mtype, body) in enumerate(frames):
            if mtype not in _DECIDED or mtype == _C:
                if mtype == _B and roles.unsettled:
                    split = self._bind_waits(raw, frames, i, replaced, holds, relay, catalog)
                    if split is not None:
                        return split
                if ((state.sql_used or roles.lost or state.path_moved or state.bind_check)
                        and (mtype == _B or mtype == _D)) or (mtype == _E and state.cursor_used):
                    refused = self._unusable(relay, mtype, body)
                    if refused is not None:
                        replaced[i] = refused
                        continue
                if roles and mtype in _ROLE_TRACKED:
                    if mtype == _C:
                        closed = roles.closing(body)
                        if closed is not None:
                            roles.unsettled[closed] = _run_at(relay, frames, i)
                    expansion = roles.wrap(mtype, body)
                    if expansion is not None:  # an Execute that runs as a db_role
                        self._expanded[i] = expansion
                        replaced[i] = role_frames(expansion)
                if mtype != _C:
                    continue
            if mtype == _Q:
                msg: Any = Query(query_text(body))
            elif mtype == _P:  # its parameter types are the server's business
                msg = Parse(*parse_statement(body), ())
            else:
                msg = decode_frontend(mtype, body)
            if mtype == _C:
                assert isinstance(msg, Close)
                if msg.kind == "S" and not self.state.sql_prepared(msg.name):
                    # (one SQL PREPARE defined stays known: a Bind of it stays refused)
                    self.state.close_statement(msg.name)
                continue
            if mtype == _F:
                verdict = self._refused(
                    _denial("42501", "function calls by OID are not allowed through the "
                            "gateway; use a SQL statement instead"), "FunctionCall",
                    described=f"FunctionCall of function oid {msg.oid} "
                              f"(arguments: {len(msg.args)})")
                replacement = frame(b"Q", cstr(self._marker(relay, verdict)))
            elif mtype == _P and self.state.sql_prepared(msg.name):
                # the server refuses it too; here it also leaves what the gateway knows of
                # the name as the server does (the statement the name already has)
                verdict = self._refused(_denial(
                    "42P05", f'prepared statement "{msg.name}" already exists'), "Parse",
                    sql=msg.sql)
                replacement = self._refuse(relay, msg, verdict)
            else:
                sql = msg.sql  # type: ignore[union-attr]
                protocol = "simple" if mtype == _Q else "extended"
                verdict = first if i == 0 and first is not None else \
                    self._decide_sql(sql, protocol, catalog)
                if mtype == _P and _declares_defined_types(body):
                    self._reads_only = False  # a Bind may run its domain's CHECK
                if verdict.hold is not None and self.approvals is not None:
                    hold = verdict.hold
                    if self.audit is not None:  # _decide_sql just recorded it as held
                        hold = replace(hold, decision_seq=self._last_seq)
                    holds.append((i, msg, sql, protocol, hold))
                    continue
                if self._admit(i, mtype, msg, sql, verdict, replaced, (relay, frames)):
                    continue
                replacement = self._refuse(relay, msg, verdict)
            replaced[i] = replacement
        if holds:
            return self._after_holds(raw, frames, replaced, holds, relay, catalog)
        return self._finish_batch(raw, frames, replaced, relay)

    def _admit(self, i: int, mtype: int, msg: Any, sql: str, verdict: Verdict,
               replaced: dict[int, bytes], batch: tuple[Relay, list[Frame]] | None = None
               ) -> bool:
        """Note an allowed statement (prepared name, tags, db_role); False when refused.
        `batch`: the relay and the frames `i` indexes (for a Parse)."""
        if not verdict.allowed:
            return False
        if isinstance(msg, Parse):
            self.state.register_parse(msg.name, sql, names=self._names_a_name,
                                      reads=self._reads)
            roles = self.roles
            if (roles or verdict.role is not None) and roles.parsed(msg.name, verdict.role):
                assert batch is not None
                roles.unsettled[msg.name] = _run_at(*batch, i)
        tags: list[StatementTag | None] | None = None
        if verdict.tags.count(None) != len(verdict.tags):  # any tag (no generator per call)
            tags = list(verdict.tags)
        elif verdict.role is not None and mtype == _P:
            # followed to its ParseComplete: if the server does not take it, the name's
            # role is lost (unapplied), not left on the statement the server keeps
            tags = [StatementTag(command="PARSE")]
        if verdict.role is not None and mtype == _Q:
            # Least privilege for this statement only: the role is set before it and reset
            # after it in the same query string (an error rolls the SET back with the
            # implicit transaction); the client never sees the two extra results.
            role = '"' + verdict.role.replace('"', '""') + '"'
            wrapped = "SET ROLE " + role + ";\n" + sql + "\n;RESET ROLE"
            replaced[i] = frame(b"Q", cstr(wrapped))
            inner = tags or [None] * verdict.statements
            tags = [StatementTag(internal=True), *inner, StatementTag(internal=True)]
            logs.info("session.db_role", session=self.facts.session["id"], role=verdict.role)
        if tags is not None:
            self._plans[i] = tags if mtype == _Q else tags[0]
        return True

    def _bind_waits(self, raw: bytes, frames: list[Frame], i: int, replaced: dict[int, bytes],
                    holds: list[tuple[int, Any, str, str, Hold]], relay: Relay,
                    catalog: Catalog) -> Split | None:
        """For a Bind (frame `i`) of a statement whose db_role changed by a Parse or Close
        in an earlier run that is not answered yet: the batch split before it (None: no
        need). The server may not carry that Parse or Close out (an error skips the rest
        of its run; a Parse of a name in use fails), and keep the statement the name had:
        a Bind sent now would run that as the new one's role, or the new one as none.
        The Bind and what follows wait for the answer, then are decided on what the
        server did (a Bind of a statement whose role was lost is refused)."""
        _, name = bind_names(frames[i][1])
        run = self.roles.unsettled.get(name)
        if run is None or run <= relay.syncs_answered or run == _run_at(relay, frames, i):
            return None  # (in its own run: if the server skips the Parse, the Bind too)
        cut = sum(5 + len(body) for _, body in frames[:i])
        head = frames[:i]
        prefix = self._after_holds(raw[:cut], head, replaced, holds, relay, catalog) \
            if holds else self._finish_batch(raw[:cut], head, replaced, relay)
        return Split(i, prefix, functools.partial(relay.when_answered, run))

    def _unusable(self, relay: Relay, mtype: int, body: bytes) -> bytes | None:
        """A Bind or Describe of a statement the protocol may not use here, refused (None:
        it may): one SQL PREPARE defined (its decision and masks are EXECUTE's: a Bind
        would run it unfollowed), or one whose db_role the gateway lost track of; an
        Execute of a portal that may be a SQL cursor (its masks are FETCH's)."""
        if mtype == _E:
            portal = execute_portal(body)
            if not self.state.may_be_cursor(portal):
                return None
            verdict = self._refused(_denial(
                "42501", f'portal "{portal}" is a SQL cursor (its masks are FETCH\'s): read '
                "it with FETCH"), "Execute", described=f"Execute of portal {_named(portal)}")
            return Execute(self._marker(relay, verdict), 0).encode()
        if mtype == _B:
            portal, name = bind_names(body)
            # (its parameters may be card numbers: the record names, never values)
            described = f"Bind of statement {_named(name)} to portal {_named(portal)}"
        else:
            msg = decode_frontend(mtype, body)
            if not isinstance(msg, Describe) or msg.kind != "S":
                return None
            name = msg.name
            described = f"Describe of statement {_named(name)}"
        known = self.state.prepared.get(name)
        if self.state.sql_used and name and (known is None or known.origin != "protocol"):
            # (once SQL PREPARE is in use, a name the gateway does not know as a protocol
            # statement may be one a DEALLOCATE the server skipped left defined)
            why = (f'prepared statement "{name}" is not one prepared over the protocol in '
                   "this session: run a statement SQL PREPARE made with EXECUTE")
        elif name in self.roles.lost:
            why = (f'prepared statement "{name}" is not the one the gateway decided: a Parse '
                   "or Close of it did not take effect; prepare it again")
        elif mtype == _B and (stale := self.state.stale(name)) is not None:
            why = f'prepared statement "{name}" {stale}; prepare it again'
        else:
            return None
        verdict = self._refused(_denial("42501", why), "Bind" if mtype == _B else "Describe",
                                described=described)
        marker = self._marker(relay, verdict)
        # the server fails it on the marker's name, which the relay then swaps for this
        if mtype == _B:
            return Bind(portal, marker, (), (), ()).encode()
        return Describe("S", marker).encode()

    def _refused(self, verdict: Verdict, command: str | None, *, sql: str | None = None,
                 described: str | None = None) -> Verdict:
        """`verdict`, a refusal of a protocol message the policy never saw, once its
        decision record is appended (as `_record` does for a statement refused before the
        policy ran): the trail shows every refused attempt, not only the statements the
        policy decided. `command`: the message type (None: a statement text refused
        unread). `sql`: the message's SQL text (redacted here); `described`: for a
        message with none, what it asked for. The batch is then written before it is
        forwarded (`_finish_batch`), so the record is durable before the client sees the
        refusal; when it cannot be appended the refusal becomes 58030, as for any
        statement while the trail fails."""
        audit, ctx = self.audit, self.audit_ctx
        if audit is None or ctx is None:
            return verdict
        self._reads_only = False  # (a refusal is no read whose record may wait)
        if not audit.healthy:
            return _denial("58030", _AUDIT_DOWN)
        error = verdict.error
        assert error is not None
        try:
            if self._update is not None:  # (as in _decide_sql: the new facts come first)
                audit.append(self._update, wake=False)
                self._update = None
            self._last_seq = audit.append(records.decision_record(
                ctx, sql=sql, redacted_sql=described, command=command, outcome="denied",
                reasons=[error.message], sqlstate=error.code), wake=False)
        except Exception as e:
            return self._unrecorded(e)
        self.recorded["denied"] += 1
        return verdict

    def _refuse(self, relay: Relay, msg: Any, verdict: Verdict) -> bytes:
        marker = self._marker(relay, verdict)
        if isinstance(msg, Parse):
            return Parse(msg.name, marker, ()).encode()
        return frame(b"Q", cstr(marker))

    def _finish_batch(self, raw: bytes, frames: list[Frame], replaced: dict[int, bytes],
                      relay: Relay) -> bytes | Awaitable[bytes]:
        out = raw if not replaced else b"".join(
            replaced.get(i) or frame(bytes([t]), b) for i, (t, b) in enumerate(frames))
        audit = self.audit
        if audit is not None and self._last_seq > self._ledger.durable:  # type: ignore[union-attr]
            if self._reads_only and audit.writes_through:
                # Reads change nothing but their results: their records (with whatever
                # else is queued by then, every session's) are written when the first
                # answer comes back, before the relay passes any of it on: one write()
                # for the statements of every session answered meanwhile, not one each.
                relay.before_release = self._write_due
                return out
            if not audit.write_through():  # fsync, or the sink is failing: wait for it
                return self._when_durable(out, self._last_seq)
        return out

    # -- just-in-time approval ---------------------------------------------------------------

    async def _after_holds(self, raw: bytes, frames: list[Frame], replaced: dict[int, bytes],
                           holds: list[tuple[int, Any, str, str, Hold]], relay: Relay,
                           catalog: Catalog) -> bytes:
        """The batch once every held statement in it is approved (and re-decided with the
        approval in the input), denied, expired or withdrawn; nothing of it is forwarded
        before (the relay stops reading from this client meanwhile)."""
        for i, msg, sql, protocol, hold in holds:
            approval, refusal = await self._approval(hold, relay)
            if relay.done.done():
                return b""
            verdict = refusal if approval is None else \
                self._decide_sql(sql, protocol, catalog, approval)
            assert verdict is not None
            if verdict.hold is not None:  # approved, yet the policy holds it again
                verdict = _denial("42501", f"{hold.command} is still held by the policy after "
                                  "its approval; the policy must allow approved statements")
            if not self._admit(i, msg.TYPE[0], msg, sql, verdict, replaced, (relay, frames)):
                replaced[i] = self._refuse(relay, msg, verdict)
        audit = self.audit
        if audit is not None and not audit.healthy:
            # The batch was decided when it came, maybe minutes ago; the trail failed
            # since: what follows the held statement would now run without evidence.
            self._plans, self._expanded = {}, {}
            return self._while_unaudited(frames, relay)
        self._reads_only = False  # (held statements are written before they go)
        out = self._finish_batch(raw, frames, replaced, relay)
        return out if isinstance(out, bytes) else await out

    async def _approval(self, hold: Hold, relay: Relay
                        ) -> tuple[dict[str, Any] | None, Verdict | None]:
        """(approval input, None) when the statement may be re-decided as approved, else
        (None, the refusal)."""
        from gateway.approvals import ApprovalError
        from gateway.audit.redact import redact_sql, scrub

        svc = self.approvals
        assert svc is not None
        who = self.facts.identity
        grant = await svc.active_grant(who.subject, who.issuer, self.connection,
                                       hold.fingerprint)
        if grant is not None:  # an earlier approval's window covers this statement
            if self.audit is not None and self.audit_ctx is not None:
                from gateway.approvals.model import rfc3339

                # the session's own record of the use (the service's event knows no
                # session), written with the decision it is re-decided into
                try:
                    self._last_seq = self.audit.append(records.approval_record(
                        "grant_used", approval_id=grant.request_id, ctx=self.audit_ctx,
                        requester=who.subject, approvers=grant.approvers,
                        sql=hold.sql, decision_seq=hold.decision_seq,
                        expires_at=rfc3339(grant.expires_at)), wake=False)
                except Exception as e:
                    return None, self._unrecorded(e)
            return {"granted": True, "id": grant.request_id}, None
        try:
            req = await svc.request(
                subject=who.subject, issuer=who.issuer, groups=who.groups,
                connection=self.connection, session_id=self.facts.session["id"],
                sql_redacted=scrub(redact_sql(hold.sql)), fingerprint=hold.fingerprint,
                approvers=hold.approvers, min_approvals=hold.min_approvals,
                grant_ttl=hold.grant_ttl,
                timeout=self.approval_timeout)
        except ApprovalError as e:
            return None, _denial("42501", f"{hold.command} needs approval, but the approvals "
                                 f"service cannot take requests: {e}")
        if self.audit is not None:
            try:
                await self._record_request(req, hold)
            except Exception as e:  # no approver may act on a request the trail lacks
                with contextlib.suppress(ApprovalError):  # (then it expires unanswered)
                    await svc.withdraw(req.id, "the audit trail cannot be written")
                return None, self._unrecorded(e)
        approvers = ", ".join(hold.approvers) or "none named"
        relay.notify(be.NoticeResponse.build(
            "01000", f"{hold.command} is held for approval: request {req.id} "
            f"(approvers: {approvers}); waiting up to {self.approval_timeout:.0f} s",
            "NOTICE", hint=f"pgwarden approvals approve {req.id} --reason TEXT").encode())
        logs.info("approval.held", session=self.facts.session["id"], request=req.id,
                  command=hold.command, approvers=list(hold.approvers))
        self.held = req.id
        waiting = asyncio.ensure_future(svc.wait(req.id, timeout=self.approval_timeout))
        try:
            either: set[asyncio.Future[Any]] = {waiting, relay.done}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.held = None
        if not waiting.done():  # the session ended while held (the session withdrew it
            waiting.cancel()     # already, before its end record: then this is a no-op)
            await svc.withdraw(req.id, withdrawal_reason(relay.end_sqlstate))
            return None, _denial("57014", "the session ended while the statement was held")
        res = waiting.result()
        if res.approved:
            return {"granted": True, "id": req.id}, None
        if res.status == "denied":
            return None, _denial("42501", f"{hold.command} denied by approver {res.by}: "
                                 f"{res.reason or 'no reason given'}",
                                 detail=f"approval request {req.id}")
        if res.status == "expired":
            return None, _denial("42501", f"{hold.command} was not approved within "
                                 f"{self.approval_timeout:.0f} s; approval request {req.id} "
                                 "expired")
        return None, _denial("57014", "canceling statement due to user request "
                             f"(approval request {req.id} withdrawn)")

    async def _record_request(self, req: ApprovalRequest, hold: Hold) -> None:
        """Append the request's `approval.requested` record, with this session's who and
        where and the seq of the held decision, and write it (with that decision's) before
        the client is told the request id: the gateway's own record, not the approvals
        service's event (which the server, knowing no session, leaves alone). Raises
        AuditUnavailable when it cannot."""
        from gateway.approvals.model import rfc3339

        audit, ctx = self.audit, self.audit_ctx
        assert audit is not None and ctx is not None
        self._last_seq = seq = audit.append(records.approval_record(
            "requested", approval_id=req.id, ctx=ctx, requester=req.subject,
            approvers=req.approvers, sql=req.sql, decision_seq=hold.decision_seq,
            expires_at=rfc3339(req.expires_at)), wake=False)
        if not audit.write_through():  # fsync, or the sink is failing: wait for it
            await audit.wait_durable(seq)

    def cancel_hold(self) -> bool:
        """A client cancel while a statement is held withdraws its approval request."""
        if self.held is None or self.approvals is None:
            return False
        task = asyncio.ensure_future(self.approvals.withdraw(self.held, "canceled by the client"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return True

    async def _when_durable(self, out: bytes, seq: int) -> bytes:
        # Nothing runs before the record of its decision is written (durability: os|fsync).
        assert self.audit is not None
        await self.audit.wait_durable(seq)
        return out

    def _marker(self, relay: Relay, verdict: Verdict) -> str:
        self.denials += 1
        marker = f"PGWARDEN_DENIED_{secrets.token_hex(8)}"
        assert verdict.error is not None
        relay.deny_with_marker(marker.encode(), verdict.error)
        return marker

    # -- deciding ----------------------------------------------------------------------------

    def _analyze(self, sql: str, protocol: str, catalog: Catalog,
                 shape: Shape | None = None) -> tuple[_Analysis, Shape | None]:
        """The analysis of `sql`, and its shape when every text of that shape shares it."""
        # Shared by the sessions of a process: the resolution key carries the snapshot's
        # (process-unique) generation, search_path and user. A session with temp tables
        # resolves names differently from every other, so its entries are its own.
        scope = self.facts.session["id"] if self.state.temp_relations else ""
        key = (sql, protocol, scope, self.state.resolution_key(catalog))
        hit = _ANALYSES.get(key)
        if hit is not None:
            _ANALYSES.move_to_end(key)
            return hit, None
        if shape is None:
            shape = shape_of(sql)
        shape_key = (shape.key, protocol, scope, key[3]) if shape is not None else None
        if shape is not None:
            same_shape = _SHAPES.get(shape_key)
            if same_shape is not None:
                _SHAPES.move_to_end(shape_key)
                (info,) = same_shape.infos
                return _Analysis((restate(info, sql, shape),), same_shape.memo, True,
                                 shape.redacted), shape
        infos = tuple(analyze(sql, catalog, session=self.state, protocol=protocol))
        own = shape is not None and len(infos) == 1 \
            and infos[0].sql == sql[shape.span[0] : shape.span[1]]
        result = _Analysis(infos, {}, False, shape.redacted if own and shape else None)
        if all(i.cacheable for i in infos) and len(sql) <= _CACHED_TEXT_MAX:
            _remember(_ANALYSES, key, result)
        if shape is not None and len(infos) == 1 and reusable(infos[0], sql, shape) \
                and len(sql) <= _CACHED_TEXT_MAX:
            _remember(_SHAPES, shape_key, _Analysis(infos, {}, False))
            return result, shape
        return result, None

    def _statement_inputs(self, analysis: _Analysis, engine: PolicyEngine
                          ) -> list[tuple[dict[str, Any], str]]:
        """Each statement's input document and its digest, memoized with the analysis.

        A restated analysis (same shape, other constants) differs only in `sql`, so its
        memo holds when the policy does not read the text; otherwise it is recomputed.
        """
        classification = classification_of(engine.source.data)
        restated = analysis.restated
        memo_ok = not restated or ("statement", "sql") in engine.volatile_fields
        memo_key = (engine.hash, engine.volatile_fields)
        out = []
        for index, info in enumerate(analysis.infos):
            cached = analysis.memo.get((memo_key, index)) if memo_ok else None
            if cached is None:
                doc = info.to_input(classification)
                digest = input_digest({"statement": doc}, engine.volatile_fields)
                if not restated:
                    analysis.memo[(memo_key, index)] = (doc, digest)
                elif memo_ok:
                    analysis.memo[(memo_key, index)] = ({**doc, "sql": ""}, digest)
            else:
                doc, digest = cached
                if restated:
                    doc = {**doc, "sql": info.sql}
            out.append((doc, digest))
        return out

    def _decide_sql(self, sql: str, protocol: str, catalog: Catalog,
                    approval: dict[str, Any] | None = None) -> Verdict:
        limit = self.max_statement_size
        if len(sql) > limit // 4:  # (a character is at most 4 bytes: shorter texts fit)
            size = len(sql.encode("utf-8", "surrogatepass"))
            if size > limit:
                return self._too_large(size)
        audit = self.audit
        if audit is None:
            return self._decide(sql, protocol, catalog, None, approval)
        if not audit.healthy:
            self._reads_only = False
            return _denial("58030", _AUDIT_DOWN)
        if self._update is not None:
            try:  # before any decision under the new facts: a replay must find them
                audit.append(self._update, wake=False)
            except Exception as e:
                self._reads_only = False
                return self._unrecorded(e)
            self._update = None
        decided: list[_Decided] = []
        self._hit = self._kept = None
        verdict = self._decide(sql, protocol, catalog, decided, approval)
        if verdict is _NOTHING_TO_RUN:
            return verdict  # (nothing to record)
        try:
            hit = self._hit
            if hit is not None and hit.record is not None and len(decided) == 1 \
                    and decided[0][4] == hit.record.key[2]:  # (the same text as recorded)
                if not hit.record.deferrable:
                    self._reads_only = False
                return _with_tags(verdict, (self._linked(hit, hit.record),))
            if not decided or not verdict.allowed or verdict.role is not None \
                    or not all(_changes_nothing(d[0]) for d in decided):
                self._reads_only = False
            verdict = self._record(sql, verdict, decided)
            kept = self._kept
            if kept is not None and verdict.allowed:  # (one allow: _remember_repeat)
                kept.decision_seq = self._last_seq
            return verdict
        except Exception as e:
            self._reads_only = False
            return self._unrecorded(e)

    def _too_large(self, size: int) -> Verdict:
        """The refusal of a statement text of `size` bytes, longer than
        policy.max_statement_size, neither parsed nor lexed: recorded by its size."""
        return self._refused(_denial(
            "54000", f"a statement of {size} bytes is longer than this gateway analyzes "
            f"(policy.max_statement_size: {self.max_statement_size} bytes)",
            hint="send bulk data with COPY, or split the statement"),
            None, described=f"(a statement of {size} bytes, not read)")

    def _unrecorded(self, e: Exception) -> Verdict:
        """The refusal of a statement whose decision record could not be appended:
        AuditUnavailable (backlog full, closed) or a bug. Fail closed."""
        logs.error("audit.append_failed", session=self.facts.session["id"],
                   error=type(e).__name__)
        return _denial("58030", _AUDIT_DOWN)

    def _while_unaudited(self, frames: list[Frame], relay: Relay) -> bytes:
        """A batch while the audit trail cannot be written: nothing in it runs. A Query,
        Parse or FunctionCall would be refused for want of its decision record anyway; a
        Bind or Execute of a statement decided earlier would run with no completion record
        to show for it (and a Bind may run code already: a domain's CHECK on a
        parameter); a CopyDone becomes a CopyFail, so that a COPY FROM begun before the
        trail failed does not commit. Describe, Close, Sync, Flush and CopyData go on: they
        run nothing (the server ignores copy messages outside a COPY)."""
        verdict = _denial("58030", _AUDIT_DOWN)
        out: list[bytes] = []
        for t, body in frames:
            if t == _Q or t == _F:
                out.append(frame(b"Q", cstr(self._marker(relay, verdict))))
            elif t == _P:
                out.append(Parse(parse_statement(body)[0], self._marker(relay, verdict),
                                 ()).encode())
            elif t == _B:
                out.append(Bind(bind_names(body)[0], self._marker(relay, verdict), (), (),
                                ()).encode())
            elif t == _E:
                out.append(Execute(self._marker(relay, verdict), 0).encode())
            elif t == _COPY_DONE:  # a COPY FROM begun before: it must not commit now
                out.append(frame(b"f", cstr(_AUDIT_DOWN)))
            else:
                out.append(frame(bytes((t,)), body))
        return b"".join(out)

    def _linked(self, repeat: _Repeat, record: _RecordPlan) -> StatementTag:
        """The tag of a repeat answered by a kept allow: no new decision, so no decision
        record of its own. Its statement record links to the decision record the allow was
        kept under, as each Execute of a prepared statement links to its Parse's, and that
        record was written before the first answer it allowed (docs/audit.md). Only a kept
        allow not recorded yet (none of its own) gets one here, from the template its
        first decision worked out."""
        now = time.perf_counter()
        seq = repeat.decision_seq
        if seq <= 0:
            templates = self._templates
            assert templates is not None
            seq = templates.quick(record.key, (), record.decision)
            if seq <= 0:  # no template yet, or refused: append builds it, or raises why
                seq = templates.append(record.key, record.build, pin=record.decision,
                                       wake=False)
            self._last_seq = repeat.decision_seq = seq
        else:
            audit = self.audit
            assert audit is not None  # (a record plan is made only when auditing)
            audit.admit()  # raises AuditUnavailable where a decision's append would
        return _new_tuple(StatementTag, (None, seq, now, record.command, False, False))

    def _record(self, sql: str, verdict: Verdict,
                decided: list[_Decided]) -> Verdict:
        audit, ctx, templates = self.audit, self.audit_ctx, self._templates
        assert audit is not None and ctx is not None
        error = verdict.error
        if not decided:  # refused before the policy ran
            assert error is not None
            self._last_seq = audit.append(records.decision_record(
                ctx, sql=sql, outcome="denied", reasons=[error.message], sqlstate=error.code),
                wake=False)  # written by write_through() in _review
            self.recorded["denied"] += 1
            return verdict
        now = time.perf_counter()
        tags: list[StatementTag | None] = []
        for i, (info, decision, doc, digest, redacted) in enumerate(decided):
            # An allowing decision the gateway still refused (mask, role mix...), or a hold
            # with no approvals service to wait on, is recorded as denied.
            refused = not verdict.allowed and (
                decision.outcome == "allow"
                or (decision.outcome == "hold" and self.approvals is None))

            build = _record_builder(ctx, decision, doc, digest, redacted, refused, error)
            # written by write_through() in _review
            key = None if refused or templates is None else \
                _template_key(ctx, decision, doc, digest, redacted)
            if key is None or templates is None:
                seq = audit.append(build(), wake=False)
            else:
                seq = templates.append(key, build, pin=decision, wake=False)
            self._last_seq = seq
            outcome = "denied" if refused else records.decision_outcome(decision)
            if outcome in self.recorded:
                self.recorded[outcome] += 1
            plan = verdict.plans[i] if i < len(verdict.plans) else None
            tags.append(StatementTag(plan, seq, now, info.command))
        return _with_tags(verdict, tuple(tags)) if verdict.allowed else verdict

    def _decide(self, sql: str, protocol: str, catalog: Catalog,
                decided: list[_Decided] | None,
                approval: dict[str, Any] | None = None, as_role: str | None = None
                ) -> Verdict:
        """`as_role`: deciding again as the db_role the first decision granted (see
        _decide_as)."""
        self._names_a_name, self._reads = False, frozenset()
        if self.poisoned is not None:
            return _denial("42501", self.poisoned)
        engine = self.policy()
        if engine is None:
            return _denial("42501", "no policy is loaded: every statement is refused")
        shape = None
        if approval is None:
            again, shape = self._repeat(sql, protocol, catalog, engine, decided)
            if again is not None:
                return again
        try:
            analysis, shared = self._analyze(sql, protocol, catalog, shape)
        except SqlParseError as e:
            logs.info("decision.unparsable", session=self.facts.session["id"])
            return _denial("42601", f"the gateway could not parse this SQL: {e}")
        except TooManyStatements as e:
            return _denial("54000", str(e))
        except Exception as e:  # an analyzer bug must refuse the statement, not pass it
            logs.error("decision.analysis_failed", session=self.facts.session["id"],
                       error=type(e).__name__)
            return _denial("42501", "the gateway could not analyze this statement")
        infos = analysis.infos
        if not infos:
            return _NOTHING_TO_RUN
        # (a FETCH, MOVE or EXECUTE: what it runs is looked up by name at each Bind)
        self._names_a_name = any(not i.cacheable for i in infos)
        self._reads = frozenset(r.name for i in infos for r in i.relations)
        for info in infos:
            unsafe = _parsing_change(info)
            if unsafe is not None:
                return _denial("42501", unsafe)
        misnamed = _statement_names(infos, self.state, protocol == "simple")
        if misnamed is not None:
            return misnamed
        if self.state.schema_changes is not None:
            unseen = _unseen_names(infos, EVERY_RELATION in self.state.schema_changes)
            if unseen is not None:
                return unseen
        facts_key = self._facts_key(engine)
        decisions: list[tuple[StatementInfo, Decision]] = []
        t0 = time.perf_counter()
        for info, (stmt, digest) in zip(infos, self._statement_inputs(analysis, engine),
                                        strict=True):
            # The session's facts are digested once; per statement only its own document.
            doc = self.facts.input_for(stmt, approval)
            key = facts_key + ":" + digest
            if approval is not None:
                key += ":approved:" + str(approval.get("id"))
            decision = engine.decide(doc, cache_key=key)
            decisions.append((info, decision))
            if decided is not None:
                decided.append((info, decision, doc, digest,
                                analysis.redacted if len(infos) == 1 else None))
        verdict = _verdict(decisions)
        if verdict.allowed and verdict.role is not None and any(
                info.command in _READS_A_CURSOR
                and len(self.state.cursor_candidates(str(info.details.get("cursor")))) > 1
                for info in infos):
            # A FETCH is decided against every query its cursor name may run (masks can
            # only grow that way); a role granted for one of them would run the others too.
            verdict = _denial("42501", "the policy grants this FETCH a db_role, but its cursor "
                              "name has been declared over other queries in this session, "
                              "which would run as that role too; declare it under a new name")
        if verdict.allowed and (verdict.role is not None or as_role is not None) \
                and verdict.role != self.state.role:
            if as_role is not None:  # (here the state's role is as_role)
                verdict = _denial("42501", f"the policy grants db_role {as_role} to this "
                                  "statement, but as that role its names mean other "
                                  f"relations, which the policy does not grant {as_role}; "
                                  "qualify them with their schema")
            elif self.state.user_schema_differs(verdict.role, catalog):  # type: ignore[arg-type]
                return self._decide_as(verdict.role, sql, protocol, catalog,  # type: ignore[arg-type]
                                       decided, approval)
        self.decisions += len(infos)
        elapsed_us = round((time.perf_counter() - t0) * 1e6)
        if verdict.allowed and any(d.mask or d.row_limit is not None for _, d in decisions):
            planned = self._mask_plans(decisions, catalog)
            verdict = planned if not planned.allowed else verdict._replace(
                plans=planned.plans,
                tags=tuple(StatementTag(p) if p is not None else None for p in planned.plans))
        # Allowed statements are logged at debug: the audit trail is their durable record,
        # and a JSON line per statement on stderr is a measurable share of the hot path.
        for info, decision in decisions:
            metrics.STATEMENTS.count(decision.outcome)
            level = logging.DEBUG if decision.outcome == "allow" else logging.INFO
            if not logs.enabled(level):  # its fields alone cost as much as a cached decision
                continue
            logs.log(
                level, "decision", session=self.facts.session["id"],
                subject=self.facts.identity.subject, connection=self.connection,
                command=info.command, kind=info.kind, fingerprint=info.fingerprint,
                index=info.index, count=info.count, outcome=decision.outcome,
                reasons=list(decision.reasons), bundle_revision=decision.bundle_revision,
                bundle_hash=decision.bundle_hash, us=elapsed_us,
            )
        if verdict.allowed:
            # (a schema change is read into the catalog once the server shows it over:
            # see ready_for_query. Read now, over another connection, the catalog would
            # not show it, and would wait on the locks of the session's own transaction.)
            for info in infos:
                self.state.observe(info)
            if approval is None:
                self._remember_repeat(sql, protocol, catalog, engine, verdict, decisions,
                                      decided, shared, analysis)
        return verdict

    def _decide_as(self, role: str, sql: str, protocol: str, catalog: Catalog,
                   decided: list[_Decided] | None, approval: dict[str, Any] | None
                   ) -> Verdict:
        """A statement granted db_role `role` runs after SET ROLE, where "$user" in the
        search_path names the role's schema, not the session user's: decided again with
        its names resolved as the server will resolve them. Only those decisions are
        recorded; the statement is refused if, as the role, the policy would not grant
        it the same role."""
        if decided is not None:
            decided.clear()
        with self.state.acting_as(role):
            return self._decide(sql, protocol, catalog, decided, approval, as_role=role)

    def _remember_repeat(self, sql: str, protocol: str, catalog: Catalog,
                         engine: PolicyEngine, verdict: Verdict,
                         decisions: list[tuple[StatementInfo, Decision]],
                         decided: list[_Decided] | None, shared: Shape | None,
                         analysis: _Analysis) -> None:
        """Keep a plain allow for :meth:`_repeat`: only what the same input would decide
        the same way and what leaves nothing behind — no mask plan (plans count per
        statement), no db_role, no session effect (but a transaction's end alone in its
        string, whose effect is nothing then), no catalog change, a policy that caches its
        decisions (deterministic) and no approval in the input."""
        if verdict.role is not None or any(p is not None for p in verdict.plans) \
                or not engine.deterministic or not engine.cache.maxsize:
            return
        if len(sql) > _REPEAT_TEXT_MAX:
            return
        for info, _ in decisions:
            # (one that may set search_path unseen goes the full way: observe() each time)
            if (info.effects and not _ends_alone(info)) or info.catalog_changed \
                    or not info.cacheable or may_set_path(info):
                return
        if not self._repeats_hold(engine, catalog):
            self._by_text.clear()
            self._by_shape.clear()
            self._repeats_under = (engine, catalog, self.state._version)
        repeat = _Repeat(verdict, tuple(d.outcome for _, d in decisions),
                         tuple(decided) if decided is not None else (),
                         reads=frozenset(r.name for info, _ in decisions
                                         for r in info.relations))
        ctx = self.audit_ctx
        if decided is not None and len(decided) == 1 and self._templates is not None \
                and ctx is not None:
            info, decision, doc, digest, redacted = decided[0]
            key = _template_key(ctx, decision, doc, digest, redacted)
            if key is not None:  # the builder _record gives an allow it did not refuse
                repeat.record = _RecordPlan(
                    key, _record_builder(ctx, decision, doc, digest, redacted),
                    decision, info.command, _changes_nothing(info))
                self._kept = repeat  # _decide_sql gives it the seq it is recorded under
        # A text of the same shape only when the policy does not read the text itself and
        # the audit record's redacted text comes from the shape (then it is that text's).
        if shared is not None and analysis.redacted is not None \
                and ("statement", "sql") in engine.volatile_fields:
            if len(self._by_shape) >= _REPEATS_MAX:
                self._by_shape.clear()
            self._by_shape[(shared.key, protocol)] = repeat
        # by text too: the same text again (prepared statements, parameters) then needs
        # no shape, which for a text with $n parameters means pglast's lexer
        if len(self._by_text) >= _REPEATS_MAX:
            self._by_text.clear()
        self._by_text[(sql, protocol)] = repeat

    def _kept_query(self, raw: bytes, frames: list[Frame], relay: Relay, catalog: Catalog
                    ) -> bytes | Awaitable[bytes] | Split | None:
        """`review` of a one-Query batch whose text has the shape of a plain allow kept
        by this session, found by one compiled call from the message's bytes: what the
        full path would answer, without it. None when the full path has to look (no C
        module, a text the compiled lexer declines, a miss, anything `_repeat` would not
        reuse, a repeat with no single decision record, an audit trail that is failing)."""
        if kept_by_shape is None or self.poisoned is not None:
            return None
        engine = self.policy()
        if engine is None or not self._may_repeat(engine, catalog):
            return None
        repeat = kept_by_shape(frames[0][1], self._by_shape, "simple")
        if repeat is None:
            return None
        audit = self.audit
        if audit is None:
            self._reuse(repeat)  # (kept with no audit trail, an allow has no tags: no plan)
            return raw
        record = repeat.record
        if record is None or not audit.healthy:
            return None
        self._reuse(repeat)
        try:  # by shape: the record's redacted text is this text's (the same key)
            tag = self._linked(repeat, record)
        except Exception as e:
            self._reads_only = False  # (as _decide_sql's own failure)
            return self._review(raw, frames, relay, catalog, self._unrecorded(e))
        self._plans[0] = [tag]
        self._reads_only = record.deferrable
        # _finish_batch's first test, without its call: the usual repeat's decision record
        # (and every one before it) was written long ago, and nothing need wait for it
        ledger = self._ledger
        if ledger is not None and self._last_seq <= ledger.durable:
            return raw
        return self._finish_batch(raw, frames, _NONE_REPLACED, relay)

    def _write_due(self) -> bool:
        """Write the decision records appended so far, before answers go to the client:
        False when they cannot be written now (the relay then fails closed)."""
        audit = self.audit
        if audit is None:
            return True
        ledger = self._ledger  # (there with an audit trail)
        return (ledger is not None and self._last_seq <= ledger.durable) or audit.write_through()

    def _may_repeat(self, engine: PolicyEngine, catalog: Catalog) -> bool:
        # (at debug level every decision is logged: no shortcut)
        return self._repeats_hold(engine, catalog) and not logs.enabled(logging.DEBUG)

    def _reuse(self, repeat: _Repeat) -> None:
        """The bookkeeping of a decision answered by a kept allow."""
        self._hit = repeat
        self.decisions += len(repeat.outcomes)
        for outcome in repeat.outcomes:
            metrics.STATEMENTS.count(outcome)

    def _repeats_hold(self, engine: PolicyEngine, catalog: Catalog) -> bool:
        """Whether the kept allows were decided under this engine, this catalog snapshot
        and the session's current name resolution."""
        under = self._repeats_under
        return under[0] is engine and under[1] is catalog and under[2] == self.state._version

    def _repeat(self, sql: str, protocol: str, catalog: Catalog, engine: PolicyEngine,
                decided: list[_Decided] | None) -> tuple[Verdict | None, Shape | None]:
        """What :meth:`_decide` would answer again for a kept allow of `sql`, with its
        bookkeeping; else None. And the text's shape when it was needed."""
        if not self._may_repeat(engine, catalog):
            return None, None
        shape = None
        repeat = self._by_text.get((sql, protocol))
        if repeat is None:
            if not self._by_shape:
                return None, None
            shape = shape_of(sql)
            if shape is None:
                return None, None
            repeat = self._by_shape.get((shape.key, protocol))
            if repeat is None:
                return None, shape
        self._reuse(repeat)
        self._reads = repeat.reads
        if decided is not None:
            if shape is not None:  # by shape: this text's own redaction
                info, decision, doc, digest, _ = repeat.decided[0]
                decided.append((info, decision, doc, digest, shape.redacted))
            else:
                decided.extend(repeat.decided)
        return repeat.verdict, shape

    def _mask_plans(self, decisions: list[tuple[StatementInfo, Decision]],
                    catalog: Catalog) -> Verdict:
        def column_type(key: tuple[str, str, str]) -> int | None:
            rel = catalog.relation(key[0], key[1])
            if rel is None or key[2] not in rel.columns or not rel.type_oids:
                return None
            return rel.type_oids[rel.columns.index(key[2])]

        plans: list[MaskPlan | None] = []
        for info, d in decisions:
            try:
                plan = plan_masks(info, d.mask, hash_key=self.hash_key,
                                  column_type=column_type) if d.mask else None
                plans.append(plan if d.row_limit is None else
                             with_row_limit(plan, info, d.row_limit))
            except MaskRefused as e:
                logs.info("decision.mask_refused", session=self.facts.session["id"],
                          command=info.command, fingerprint=info.fingerprint,
                          reason=str(e), bundle_revision=d.bundle_revision)
                where = f" (statement {info.index + 1} of {info.count})" if info.count > 1 else ""
                return _denial("42501", f"{info.command} refused: {e}{where}",
                               hint="select the masked column itself, not an expression over "
                                    "it; it is returned masked")
        return Verdict(True, plans=tuple(plans))

    def _facts_key(self, engine: PolicyEngine) -> str:
        cached = self._facts_digest
        if cached is not None and cached[0] == engine.hash:
            return cached[1]
        digest = input_digest(self.facts.input_for({}), engine.volatile_fields)
        self._facts_digest = (engine.hash, digest)
        return digest

    # -- what the relay reports back -----------------------------------------------------------

    def unapplied(self, name: str) -> None:
        """The result tracker's word that a Parse or Close of statement `name` did not take
        effect at the server (which keeps what the name had before, or nothing)."""
        if name and not self.state.sql_prepared(name):  # (SQL PREPARE's stay known)
            self.state.close_statement(name)
        if self.roles:
            self.roles.lose(name)

    def follow_portals(self, knows: Callable[[str], bool]) -> None:
        """The result masker's `knows_portal`: a SQL FETCH of a portal it follows would
        read it unmasked, and is refused (_statement_names)."""
        self.state.protocol_portal = knows

    def startup(self, params: Mapping[str, str]) -> None:
        """The client's startup parameters the server was given. A search_path among them
        is where the session starts; a server before PostgreSQL 18 never reports it."""
        for name, value in params.items():
            if name.lower() == "search_path":  # (setting names are case-insensitive)
                self.state.startup_path(value)

    def parameter_status(self, name: str, value: str) -> None:
        self.state.parameter_status(name, value)
        if name == "application_name":
            self._renamed(reported_name(value))
        problem = _unsafe_setting(name, value)
        if problem is not None and self.poisoned is None:
            self.poisoned = problem
            logs.warning("session.parsing_settings_changed", session=self.facts.session["id"],
                         setting=name)

    def _renamed(self, name: str) -> None:
        """The server reports the session's application_name (at login, and after a SET:
        pgJDBC sets its own right after connecting): the policy input and the audit
        records from here on carry it, and a session.update record says so."""
        if name == self.facts.connection.get("application_name"):
            return
        self.facts = self.facts.renamed(name)
        self._facts_digest = None
        # kept allows were decided under the old facts, their record builders bound to them
        self._by_text.clear()
        self._by_shape.clear()
        if self.audit is not None:
            ctx = self.audit_ctx = records.AuditContext.from_input(self.facts.input_for({}))
            self._templates = TemplateCache(self.audit)
            self._update = records.session_update(ctx, changed=("application_name",))
            try:
                self.audit.append(self._update, wake=False)
                self._update = None
            except Exception as e:  # (the next decision tries again, or is refused)
                logs.error("audit.append_failed", session=self.facts.session["id"],
                           error=type(e).__name__)
        if self.on_renamed is not None:
            self.on_renamed(self.audit_ctx, name)

    def ready_for_query(self, status: str, idle: Callable[[], bool] | None = None) -> None:
        state = self.state
        changed = state.schema_changes is not None
        state.ready_for_query(status, idle)
        if changed and state.schema_changes is None:
            # committed (or not): what was read while they were pending may be stale
            self.catalogs.invalidate(self.connection)


def _unsafe_setting(name: str, value: str) -> str | None:
    lname = name.lower()
    if lname == "client_encoding" and value.upper().replace("-", "_") in _UNSAFE_ENCODINGS:
        return (f"client_encoding {value} is not supported through the gateway: "
                "it could make the server read a statement differently")
    if lname == "standard_conforming_strings" and value.lower() not in ("on", "true", "1"):
        return ("standard_conforming_strings must stay on through the gateway: "
                "it could make the server read a statement differently")
    return None


# Who the gateway is upstream is not the client's to change, whatever the policy says:
# the session would run with rights no decision granted.
_IDENTITY_SETTINGS = frozenset({"role", "session_authorization"})
# Settings that change how the server tokenizes a statement (checked in _unsafe_setting).
_PARSING_SETTINGS = frozenset({"client_encoding", "standard_conforming_strings"})


def _parsing_change(info: StatementInfo) -> str | None:
    """Statements the gateway refuses whatever the policy says: changes to the upstream
    identity, and SET statements that would change how the server tokenizes later ones."""
    settings = info.details.get("set_config")
    if settings and (_IDENTITY_SETTINGS.intersection(settings) or "?" in settings):
        return ("set_config() of role or session_authorization (or of a setting named by an "
                "expression) is not allowed through the gateway")
    if settings and _PARSING_SETTINGS.intersection(settings):
        # (its value may be any expression; and what the client sent behind it is read
        # before the server's report of the new value comes back)
        return ("set_config() of client_encoding or standard_conforming_strings is not "
                "allowed through the gateway: it could make the server read later "
                "statements differently; use SET")
    if info.command in ("ALTER ROLE", "ALTER DATABASE") \
            and str(info.details.get("setting")).lower() in _IDENTITY_SETTINGS:
        # (a default every later login starts with: the gateway's sessions included)
        return (f"{info.command} ... SET {info.details.get('setting')} is not allowed through "
                "the gateway: it would change the upstream identity of later sessions")
    if info.command not in ("SET", "RESET"):
        return None
    name = str(info.details.get("name") or "")
    if name.lower() in _IDENTITY_SETTINGS:
        return (f"{info.command} {name.upper()} is not allowed through the gateway: the "
                "upstream identity is the gateway's (a policy may grant a db_role instead)")
    value = info.details.get("value")
    if info.command == "RESET" or value in (None, "DEFAULT"):
        return None  # back to the server default, which the gateway checked at login
    return _unsafe_setting(name, str(value).strip("'"))


_READS_A_CURSOR = frozenset(("FETCH", "MOVE"))
_NAMED_DATA = frozenset(("relation", "column", "view"))


def _unseen_names(infos: tuple[StatementInfo, ...], everything: bool) -> Verdict | None:
    """While schema changes of the session's are not committed, the catalog (read over
    another connection) does not show them: a name it cannot resolve may be a table or
    column they renamed, and hold anything. Refused until the server shows them done;
    after one that may have moved any relation (`everything`: a schema renamed), so is
    every read."""
    for info in infos:
        if info.kind == "ddl" and not any("read" in r.access for r in info.relations):
            continue  # (more schema change, reading nothing: a migration's next step)
        if everything and info.relations:
            return _denial("42501", f"{info.command} reads relations a schema change of this "
                           "session's may have moved, which the gateway cannot see until "
                           "it is committed", hint="commit the schema change first")
        for kind, name in info.unresolved:
            if kind in _NAMED_DATA:
                return _denial("42501", f"{info.command} names {kind} {name}, which the "
                               "gateway cannot see: this session's schema changes are not "
                               "committed yet, and until they are, names they may have "
                               "made are refused", hint="commit the schema change first")
    return None


def _statement_names(infos: Sequence[StatementInfo], state: SessionSqlState, runs: bool
                     ) -> Verdict | None:
    """What the policy is not asked about, because the gateway would not know what runs:
    SQL PREPARE of a name already in use, in a query string (`runs`: decided as it runs;
    PostgreSQL refuses it too, and the gateway would take the new text for what the name
    runs); EXECUTE of a name it does not know as SQL PREPARE's (one it never saw, or a
    statement prepared over the protocol, decided at its Parse and followed by its Bind).
    (A Parse of a PREPARE is decided before it runs, if it ever does: drivers parse a text
    to describe it and again to run it, so its name may well be in use already.)"""
    origin: dict[str, str] | None = None  # (built for the rare string that needs it)
    for info in infos:
        if state.cursor_overflow and info.command in _READS_A_CURSOR | {"DECLARE CURSOR"} \
                and str(info.details.get("cursor")) in state.cursor_overflow:
            return _denial("54000", f'cursor "{info.details.get("cursor")}" was declared too '
                           "many times in this session for the gateway to tell which query "
                           "it runs: use another name")
        if info.command in _READS_A_CURSOR and state.protocol_portal is not None:
            name = str(info.details.get("cursor"))
            # (whatever the gateway remembers of cursors of the name: they may be gone)
            if state.protocol_portal(name):
                return _denial("42501", f'{info.command} from "{name}", a portal bound over '
                               "the protocol (its masks are its Execute's), is not allowed "
                               "through the gateway: execute it")
        if origin is None:
            if not info.effects and info.command != "EXECUTE":
                continue
            origin = {name: ps.origin for name, ps in state.prepared.items()}
        for effect in info.effects:
            if effect.op == "prepare":
                assert effect.name is not None  # (a PREPARE always names its statement)
                if runs and effect.name in origin:
                    return _denial("42P05",
                                   f'prepared statement "{effect.name}" already exists')
                if effect.name not in state.sql_texts and len(state.sql_texts) >= MAX_NAMES:
                    return _too_many_names("statements SQL PREPARE named")
                origin[effect.name] = "sql"
            elif effect.op == "declare" and effect.name not in state.cursor_history \
                    and len(state.cursor_history) >= MAX_NAMES:
                return _too_many_names("cursor names")
            elif effect.op == "deallocate" and effect.name is not None:
                origin.pop(effect.name, None)
            elif effect.op == "deallocate" or (effect.op, effect.name) == ("discard", "ALL"):
                origin.clear()
        if info.command == "EXECUTE":
            name = str(info.details.get("name"))
            if name not in origin:
                return _denial("26000", f'prepared statement "{name}" does not exist')
            if len(state.sql_texts.get(name, ())) > 1:
                return _denial("42501", f'prepared statement "{name}" may not be the one the '
                               "gateway knows: it was prepared with other texts before, and "
                               "a PREPARE or DEALLOCATE of it may not have run; prepare it "
                               "under a new name")
            if origin[name] != "sql":
                return _denial("42501", f'EXECUTE of "{name}", a statement prepared over the '
                               "protocol, is not allowed through the gateway: bind it")
    return None


def _too_many_names(what: str) -> Verdict:
    return _denial("54000", f"this session used more than {MAX_NAMES} {what}, which the "
                   "gateway keeps track of while the server may still have them: "
                   "reconnect to start afresh")


def _grant_key(info: StatementInfo) -> str:
    """What an approval's grant window is matched on: the statement as the approver saw
    it (its text with literals replaced) and the relations it touches, schema and all.
    (pglast's fingerprint, which it was, takes `where true` for `where false`, IN lists
    of any length alike, and a.t for b.t.)"""
    from gateway.audit.redact import redact_sql

    relations = sorted(f"{r.schema}.{r.name}:{','.join(sorted(r.access))}"
                       for r in info.relations)
    text = redact_sql(info.sql) + "\x00" + "\x00".join(relations)
    return "g1:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def withdrawal_reason(sqlstate: str | None) -> str:
    """Why a held statement's request is withdrawn, from how its session ended."""
    if sqlstate is None:
        return "the client disconnected"
    return {"57P01": "the gateway ended the session (a shutdown, or an administrator)",
            "28000": "the session's token expired",
            "08006": "the connection to the upstream database was lost"
            }.get(sqlstate, f"the session ended ({sqlstate})")


def _verdict(decisions: list[tuple[StatementInfo, Decision]]) -> Verdict:
    """One answer for a whole query string: the first statement that may not run decides."""
    for info, d in decisions:
        if d.allow and not d.require_approval and (d.row_limit is None or info.kind == "read"):
            continue
        where = f" (statement {info.index + 1} of {info.count})" if info.count > 1 else ""
        reasons = "; ".join(d.reasons) or d.error or "the policy did not allow it"
        if d.require_approval:
            if info.count > 1:
                # (an approver is shown one statement: an approval of it must not release
                # the others, nor open a grant they fit)
                return _denial("42501", f"{info.command} needs approval{where}: send it in "
                               "a query string of its own", detail=reasons)
            denial = _denial("42501", f"{info.command} needs approval{where}: {reasons}",
                             detail="no approvals service is configured on this gateway; "
                                    f"approvers: {', '.join(d.approvers) or 'none named'}")
            return Verdict(False, denial.error, hold=Hold(
                info.sql, info.command, _grant_key(info), tuple(d.approvers), d.grant_ttl,
                tuple(d.reasons), d.min_approvals))
        if not d.allow:
            return _denial("42501", f"{info.command} denied by policy{where}: {reasons}",
                           detail=f"policy revision {d.bundle_revision}")
        return _denial("42501", f"{info.command} refused: the policy's row_limit applies to "
                       f"queries that return rows, not to a {info.kind} statement{where}",
                       hint="a limited read is a SELECT (or FETCH, EXECUTE, TABLE, VALUES)")
    roles = {d.db_role for _, d in decisions}
    if len(roles) > 1:
        return _denial("42501", "the statements of this query string need different db_role "
                       "grants; send them one at a time")
    role = roles.pop() if roles else None
    return Verdict(True, role=role, statements=len(decisions))
