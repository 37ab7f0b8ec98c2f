"""Builders for every audit record type (schema in docs/audit.md).

Each builder returns a plain dict holding ``type`` and the record's own fields; the
writer adds the envelope (``v``, ``instance``, ``seq``, ``prev``, ``ts``, ``hash``) and
masks any PAN left anywhere. Builders redact what they know is SQL (literals become
``$n``) and never take a token. Session-scoped records start from an
:class:`AuditContext` (who and where, computed once per session).

Outcomes: ``allowed``, ``denied``, ``masked`` (allowed with masked columns), ``held``
(waiting for approval), and for statement completion also ``error`` (the server or the
gateway failed it, see ``sqlstate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .canonical import Fragment
from .redact import redact_sql, redact_statement, scrub

__all__ = [
    "APPROVAL_EVENTS",
    "OUTCOMES",
    "TYPES",
    "AuditContext",
    "SessionTotals",
    "admin_action",
    "approval_record",
    "auth_failure",
    "bundle_activated",
    "bundle_rejected",
    "decision_outcome",
    "decision_record",
    "gateway_start",
    "gateway_stop",
    "replay_input",
    "rows_from_complete",
    "rows_from_tag",
    "session_end",
    "session_start",
    "session_update",
    "statement_record",
]

TYPES = (
    "gateway.start", "gateway.stop", "session.start", "session.update", "session.end",
    "auth.failure", "decision", "statement", "approval.requested", "approval.granted",
    "approval.denied", "approval.expired", "approval.withdrawn", "approval.vote",
    "approval.grant_used", "approval.grant_revoked", "admin.session_terminated",
    "admin.bundle_reload", "bundle.activated", "bundle.rejected", "checkpoint", "segment",
)
OUTCOMES = ("allowed", "denied", "masked", "held", "error")
APPROVAL_EVENTS = ("requested", "granted", "denied", "expired", "withdrawn", "vote",
                   "grant_used", "grant_revoked")

if TYPE_CHECKING:  # the policy package loads regopy: not needed to build records
    from gateway.policy.decision import Decision

_MAX_CLIENT_TEXT = 256  # startup values and other client-chosen strings are cut here


def _client_text(value: Any) -> str | None:
    if value is None:
        return None
    return scrub(str(value)[:_MAX_CLIENT_TEXT])


def _us(value: float | int | None) -> int | None:
    return None if value is None else round(value)


_SESSION_PARTS = ("identity", "connection", "session")


@dataclass(frozen=True, slots=True)
class AuditContext:
    """Who and where for one session: merged into each of its records as ``session``,
    ``who`` (subject, issuer, groups) and ``where`` (client_addr, application_name,
    connection, database, db_user, tls), encoded once.

    Built with :meth:`from_input`, it also keeps the session's part of the policy input
    (identity, connection, session): ``session.start`` archives it once, and decision
    records whose input shares those very objects (``SessionFacts.input_for`` does) only
    archive their own statement and approval.
    """

    session: str
    who: Mapping[str, Any]
    where: Mapping[str, Any]
    fields: Mapping[str, Any]
    session_input: Mapping[str, Any] | None = None

    @classmethod
    def build(cls, *, session: str, subject: str | None, issuer: str | None,
              groups: Sequence[str] = (), client_addr: str | None = None,
              application_name: str | None = None, connection: str | None = None,
              database: str | None = None, db_user: str | None = None,
              tls: bool | None = None,
              session_input: Mapping[str, Any] | None = None) -> AuditContext:
        who = {"subject": subject, "issuer": issuer, "groups": list(groups)}
        where = {"client_addr": client_addr, "application_name": _client_text(application_name),
                 "connection": connection, "database": database, "db_user": db_user,
                 "tls": tls}
        fields = {"session": session, "who": Fragment(who), "where": Fragment(where)}
        return cls(session, who, where, fields, session_input)

    @classmethod
    def from_input(cls, input_doc: Mapping[str, Any]) -> AuditContext:
        """From a policy input document (e.g. ``SessionFacts.input_for({})``)."""
        ident = input_doc.get("identity") or {}
        conn = input_doc.get("connection") or {}
        sess = input_doc.get("session") or {}
        return cls.build(
            session=str(sess.get("id", "")), subject=ident.get("subject"),
            issuer=ident.get("issuer"), groups=ident.get("groups") or (),
            client_addr=conn.get("client_addr"), application_name=conn.get("application_name"),
            connection=conn.get("name"), database=conn.get("database"),
            db_user=conn.get("user"), tls=conn.get("tls"),
            session_input={k: input_doc.get(k) for k in _SESSION_PARTS},
        )

    def shares_session_input(self, input_doc: Mapping[str, Any]) -> bool:
        """Whether `input_doc` holds this session's own identity/connection/session objects."""
        mine = self.session_input
        # three lookups written out: this runs once per statement
        return mine is not None and input_doc.get("identity") is mine.get("identity") \
            and input_doc.get("connection") is mine.get("connection") \
            and input_doc.get("session") is mine.get("session")


# -- gateway -------------------------------------------------------------------------------


def gateway_start(*, version: str, pid: int, workers: int | None = None,
                  worker: int | None = None, config: str | None = None,
                  bundle_revision: str | None = None, bundle_hash: str | None = None,
                  settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "gateway.start", "version": version, "pid": pid, "workers": workers,
            "worker": worker, "config": config, "bundle_revision": bundle_revision,
            "bundle_hash": bundle_hash, "settings": dict(settings or {})}


def gateway_stop(*, reason: str, sessions_open: int = 0,
                 uptime_us: int | None = None) -> dict[str, Any]:
    return {"type": "gateway.stop", "reason": reason, "sessions_open": sessions_open,
            "uptime_us": _us(uptime_us)}


# -- sessions ------------------------------------------------------------------------------


def session_start(ctx: AuditContext, *, networks: Sequence[str] | None = None,
                  method: str | None = None, token_expires_at: str | None = None
                  ) -> dict[str, Any]:
    """``input`` archives the session's part of the policy input (for replays)."""
    si = ctx.session_input or {}
    conn = si.get("connection") or {}
    ident = si.get("identity") or {}
    if networks is None:
        networks = conn.get("networks") or ()
    return {"type": "session.start", **ctx.fields, "networks": list(networks),
            "method": method or ident.get("method") or "jwt",
            "token_expires_at": token_expires_at,
            "input": {k: si.get(k) for k in _SESSION_PARTS} if si else None}


def session_update(ctx: AuditContext, *, changed: Sequence[str]) -> dict[str, Any]:
    """The session's facts changed (`changed` names them: the server reported a new
    ``application_name``, as after pgJDBC's ``SET application_name``): ``who``/``where``
    and ``input`` as they are from here on, ``input`` archived for replays as
    ``session.start``'s is."""
    si = ctx.session_input or {}
    return {"type": "session.update", **ctx.fields, "changed": list(changed),
            "input": {k: si.get(k) for k in _SESSION_PARTS} if si else None}


# outcome -> the SessionTotals counter it adds to
_COUNTED = {"allowed": "allowed", "denied": "denied", "masked": "masked", "held": "held",
            "error": "errors", "errors": "errors", "skipped": "skipped",
            "unfinished": "unfinished", "limited": "limited"}


@dataclass(slots=True)
class SessionTotals:
    """Running totals for ``session.end``; :meth:`count` once per statement record."""

    statements: int = 0
    allowed: int = 0
    denied: int = 0
    masked: int = 0
    held: int = 0
    errors: int = 0
    skipped: int = 0
    unfinished: int = 0
    limited: int = 0
    rows: int = 0
    masked_values: int = 0
    safety_net_hits: int = 0

    def count(self, outcome: str, *, rows: int | None = None, masked_values: int = 0,
              safety_net_hits: int = 0) -> None:
        self.statements += 1
        attr = _COUNTED.get(outcome)
        if attr is not None:
            setattr(self, attr, getattr(self, attr) + 1)
        self.rows += rows or 0
        self.masked_values += masked_values
        self.safety_net_hits += safety_net_hits

    def to_dict(self) -> dict[str, int]:
        return {"statements": self.statements, "allowed": self.allowed, "denied": self.denied,
                "masked": self.masked, "held": self.held, "errors": self.errors,
                "skipped": self.skipped, "unfinished": self.unfinished,
                "limited": self.limited, "rows": self.rows,
                "masked_values": self.masked_values, "safety_net_hits": self.safety_net_hits}


def session_end(ctx: AuditContext, *, reason: str, totals: SessionTotals | Mapping[str, int],
                duration_us: float | int | None = None, sqlstate: str | None = None
                ) -> dict[str, Any]:
    t = totals.to_dict() if isinstance(totals, SessionTotals) else dict(totals)
    return {"type": "session.end", **ctx.fields, "reason": reason, "sqlstate": sqlstate,
            "totals": t, "duration_us": _us(duration_us)}


def auth_failure(*, reason: str, sqlstate: str | None = None, client_addr: str | None = None,
                 application_name: str | None = None, connection: str | None = None,
                 db_user: str | None = None, session: str | None = None) -> dict[str, Any]:
    """A refused login. ``reason`` is a fixed class (``AuthError.reason``, ``no_tls``,
    ``unknown_connection``, ...), never token text. ``connection`` and ``db_user`` are
    what the client asked for (cut and scrubbed)."""
    return {"type": "auth.failure", "reason": reason, "sqlstate": sqlstate,
            "session": session, "who": None,
            "where": {"client_addr": client_addr,
                      "application_name": _client_text(application_name),
                      "connection": _client_text(connection), "db_user": _client_text(db_user)}}


# -- statements ----------------------------------------------------------------------------


def decision_outcome(decision: Decision) -> str:
    """``allowed`` / ``masked`` / ``held`` / ``denied`` for a policy decision."""
    o = decision.outcome
    if o == "hold":
        return "held"
    if o == "allow":
        return "masked" if decision.mask else "allowed"
    return "denied"


_FRAGMENT_CACHE_MAX = 4096
_statement_fragments: dict[str, Fragment] = {}


def _decision_doc(decision: Decision) -> dict[str, Any]:
    return {
        "allow": decision.allow, "mask": dict(decision.mask),
        "require_approval": decision.require_approval,
        "approvers": list(decision.approvers), "row_limit": decision.row_limit,
        "db_role": decision.db_role, "grant_ttl": decision.grant_ttl,
        "error": decision.error,
    }


@lru_cache(maxsize=1024)
def _decision_fragment(decision: Decision) -> Fragment:
    # Decisions are immutable and hashable; the engine's cache hands out the same ones.
    return Fragment(_decision_doc(decision))


def _statement_value(statement: Mapping[str, Any], digest: str | None) -> Any:
    if digest is None:
        return redact_statement(statement)
    frag = _statement_fragments.get(digest)
    if frag is None:
        if len(_statement_fragments) >= _FRAGMENT_CACHE_MAX:
            _statement_fragments.clear()
        frag = _statement_fragments[digest] = Fragment(redact_statement(statement))
    return frag


def decision_record(ctx: AuditContext, *, statement: Mapping[str, Any] | None = None,
                    decision: Decision | None = None, input_doc: Mapping[str, Any] | None = None,
                    statement_digest: str | None = None, sql: str | None = None,
                    outcome: str | None = None, reasons: Sequence[str] | None = None,
                    sqlstate: str | None = None, duration_us: float | int | None = None,
                    entrypoint: str | None = None, cached: bool | None = None,
                    redacted_sql: str | None = None, command: str | None = None
                    ) -> dict[str, Any]:
    """A decision on one statement.

    The usual call: ``decision`` and ``input_doc`` (the policy input). Its statement is
    recorded redacted: ``sql`` (literals as ``$n``) and ``statement`` (the analysis, without
    ``sql``), with ``approval``; the session's part is archived by ``session.start``, or
    here as ``session_input`` when the input does not share the context's objects.
    ``statement_digest``: a digest that is equal only for equal statement documents apart
    from their ``sql`` (the gate's per-statement digest); equal documents then share one
    encoding (a cache), which is most of the cost of a record. ``redacted_sql``: the
    statement's text already redacted by :func:`redact_sql` (or the same lexer rules).

    For a statement refused before the policy ran (unparsable SQL, audit unavailable, no
    policy) pass ``sql`` (the raw text: it is redacted here), ``outcome="denied"``,
    ``reasons`` and the ``sqlstate`` the client got; and ``command``, if any: a protocol
    message refused as such (``FunctionCall``, ``Bind``, ...) is named by its message
    type, and a message with no SQL text is described by ``redacted_sql`` (what it asked
    for: names and OIDs, never a parameter value). ``outcome`` may also override what the
    gateway did with an allowing decision (e.g. ``denied`` when it cannot enforce a mask).
    """
    if statement is None and input_doc is not None:
        statement = input_doc.get("statement")
    if statement is not None:
        raw_sql = statement.get("sql")
        stmt: Any = _statement_value(statement, statement_digest)
        command = statement.get("command")
    else:
        raw_sql, stmt = sql, None
    rec: dict[str, Any] = {
        "type": "decision", **ctx.fields, "command": command,
        "sql": redacted_sql if redacted_sql is not None
        else redact_sql(raw_sql) if isinstance(raw_sql, str) else None,
        "statement": stmt,
        "approval": dict(input_doc.get("approval") or {}) if input_doc is not None else None,
        "sqlstate": sqlstate, "duration_us": _us(duration_us),
    }
    if input_doc is not None and not ctx.shares_session_input(input_doc):
        rec["session_input"] = {k: input_doc.get(k) for k in _SESSION_PARTS}
    if decision is not None:
        rec["outcome"] = outcome or decision_outcome(decision)
        rec["reasons"] = list(reasons if reasons is not None else decision.reasons)
        try:
            rec["decision"] = _decision_fragment(decision)
        except TypeError:  # an unhashable field: encode it with the record
            rec["decision"] = _decision_doc(decision)
        rec["bundle_revision"] = decision.bundle_revision
        rec["bundle_hash"] = decision.bundle_hash
    else:
        rec.update({"outcome": outcome or "denied", "reasons": list(reasons or ()),
                    "decision": None, "bundle_revision": None, "bundle_hash": None})
    if entrypoint is not None:
        rec["entrypoint"] = entrypoint
    if cached is not None:
        rec["cached"] = cached
    return rec


def replay_input(rec: Mapping[str, Any],
                 session_input: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The policy input a decision record was decided on (redacted), or None when the
    policy did not run or the session's part is unknown (pass ``session.start``'s
    ``input`` as `session_input`)."""
    if rec.get("type") != "decision" or not rec.get("decision"):
        return None
    stmt = rec.get("statement")
    parts = rec.get("session_input") or session_input
    if not isinstance(stmt, Mapping) or not isinstance(parts, Mapping):
        return None
    doc = {k: parts.get(k) for k in _SESSION_PARTS}
    doc["statement"] = {**stmt, "sql": rec.get("sql")}
    doc["approval"] = rec.get("approval") or {"granted": False, "id": None}
    return doc


def statement_record(ctx: AuditContext, *, decision_seq: int | None, outcome: str,
                     command: str | None = None, sqlstate: str | None = None,
                     rows: int | None = None, masked_values: int = 0,
                     masked_columns: Sequence[str] = (), safety_net_hits: int = 0,
                     duration_us: float | int | None = None, error: str | None = None,
                     parameters: int | None = None) -> dict[str, Any]:
    """A statement's completion: what the client got. ``decision_seq`` links the decision
    record; ``error`` is the message sent to the client (scrubbed); ``parameters`` the
    number of bind parameters (their values are never recorded)."""
    return {
        "type": "statement", **ctx.fields, "decision_seq": decision_seq, "outcome": outcome,
        "command": command, "sqlstate": sqlstate, "rows": rows,
        "masked_values": masked_values, "masked_columns": list(masked_columns),
        "safety_net_hits": safety_net_hits, "duration_us": _us(duration_us),
        "error": scrub(error) if error is not None else None, "parameters": parameters,
    }


def rows_from_tag(tag: str) -> int | None:
    """Rows returned or affected from a CommandComplete tag (``SELECT 5``, ``INSERT 0 3``,
    ``UPDATE 2``, ``COPY 7``); None when the tag carries no count."""
    parts = tag.split()
    if len(parts) >= 2 and parts[-1].isdigit():
        return int(parts[-1])
    return None


_ROWS_SEEN: dict[bytes, int | None] = {}
_ROWS_SEEN_MAX = 1024


def rows_from_complete(body: bytes) -> int | None:
    """:func:`rows_from_tag` of a CommandComplete message's body (NUL-terminated): a
    session's statements end with a handful of tags (``SELECT 1`` again and again), so
    each is read once."""
    try:
        return _ROWS_SEEN[body]
    except KeyError:
        pass
    rows = rows_from_tag(body.rstrip(b"\0").decode("ascii", "replace"))
    if len(_ROWS_SEEN) >= _ROWS_SEEN_MAX:
        _ROWS_SEEN.clear()
    _ROWS_SEEN[body] = rows
    return rows


# -- approvals and bundles ----------------------------------------------------------------


def approval_record(event: str, *, approval_id: str, ctx: AuditContext | None = None,
                    requester: str | None = None, approvers: Sequence[str] = (),
                    approver: str | None = None, approver_issuer: str | None = None,
                    reason: str | None = None, sql: str | None = None,
                    decision_seq: int | None = None, expires_at: str | None = None
                    ) -> dict[str, Any]:
    """``approval.requested|granted|denied|expired``. ``approver`` is the identity that
    granted or denied; ``reason`` their free text (scrubbed); ``sql`` is redacted."""
    if event not in APPROVAL_EVENTS:
        raise ValueError(f"unknown approval event {event!r}")
    rec: dict[str, Any] = {"type": f"approval.{event}"}
    if ctx is not None:
        rec.update(ctx.fields)
    rec.update({
        "approval_id": approval_id, "requester": requester, "approvers": list(approvers),
        "approver": approver, "approver_issuer": approver_issuer,
        "reason": scrub(reason) if reason is not None else None,
        "sql": redact_sql(sql) if sql is not None else None,
        "decision_seq": decision_seq, "expires_at": expires_at,
    })
    return rec


def admin_action(action: str, *, by_subject: str | None, by_issuer: str | None,
                 target: str | None = None, reason: str | None = None,
                 status: str | None = None) -> dict[str, Any]:
    """An administrator's act through the admin API (``session_terminated``,
    ``bundle_reload``): who did it, to what, and why (scrubbed)."""
    return {"type": f"admin.{action}", "by": by_subject, "by_issuer": by_issuer,
            "target": target, "reason": scrub(reason) if reason is not None else None,
            "status": status}


def bundle_activated(*, revision: str | None, bundle_hash: str, source: str,
                     previous_revision: str | None = None,
                     previous_bundle_hash: str | None = None,
                     signed_by: str | None = None) -> dict[str, Any]:
    return {"type": "bundle.activated", "bundle_revision": revision, "bundle_hash": bundle_hash,
            "source": source, "previous_revision": previous_revision,
            "previous_bundle_hash": previous_bundle_hash, "signed_by": signed_by}


def bundle_rejected(*, source: str, reason: str, revision: str | None = None,
                    bundle_hash: str | None = None) -> dict[str, Any]:
    return {"type": "bundle.rejected", "bundle_revision": revision, "bundle_hash": bundle_hash,
            "source": source, "reason": scrub(reason)}
