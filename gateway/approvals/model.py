"""Approval requests, votes, resolutions and grants: plain immutable values.

Times are wall-clock epoch seconds (floats): they are shared between gateways on
different machines through the store, so a monotonic clock would not do.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

__all__ = [
    "ACTIVE",
    "RESOLVED",
    "STATUSES",
    "ApprovalError",
    "ApprovalRequest",
    "ApproverIdentity",
    "Grant",
    "Resolution",
    "Vote",
    "new_id",
    "rfc3339",
]

PENDING = "pending"
APPROVED = "approved"
DENIED = "denied"
EXPIRED = "expired"
WITHDRAWN = "withdrawn"
STATUSES = (PENDING, APPROVED, DENIED, EXPIRED, WITHDRAWN)
ACTIVE = (PENDING,)
RESOLVED = (APPROVED, DENIED, EXPIRED, WITHDRAWN)

REQUEST_PREFIX = "apr_"
GRANT_PREFIX = "grt_"


def new_id(prefix: str) -> str:
    """``prefix`` + 16 base32 characters (80 random bits): unguessable, easy to type."""
    return prefix + base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class ApproverIdentity(Protocol):
    """What approve/deny need of an identity (gateway.identity.model.Identity fits)."""

    # (read-only: Identity is a frozen dataclass)
    @property
    def subject(self) -> str: ...
    @property
    def issuer(self) -> str: ...
    @property
    def groups(self) -> tuple[str, ...]: ...


class ApprovalError(Exception):
    """A refused approval action. ``code`` is stable (the admin API maps it to a gRPC
    status); the message is for the person who tried."""

    CODES = ("not_found", "not_pending", "self_approval", "not_approver", "reason_required",
             "already_voted", "invalid", "unavailable")

    def __init__(self, code: str, message: str) -> None:
        if code not in self.CODES:
            raise ValueError(f"unknown ApprovalError code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Vote:
    subject: str
    issuer: str
    decision: str  # "approve" | "deny"
    reason: str | None
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "issuer": self.issuer, "decision": self.decision,
                "reason": self.reason, "at": self.at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vote:
        return cls(subject=d["subject"], issuer=d["issuer"], decision=d["decision"],
                   reason=d.get("reason"), at=float(d["at"]))


@dataclass(frozen=True)
class ApprovalRequest:
    id: str
    subject: str
    issuer: str
    groups: tuple[str, ...]
    connection: str
    session_id: str | None
    sql: str  # literals already redacted by the caller
    fingerprint: str
    approvers: tuple[str, ...]  # group names, any of which may approve
    min_approvals: int
    grant_ttl: float | None
    input_digest: str | None
    requested_at: float
    expires_at: float
    status: str = PENDING
    holder: str | None = None  # the gateway instance holding the statement
    resolved_at: float | None = None
    resolved_by: str | None = None
    resolution_reason: str | None = None
    votes: tuple[Vote, ...] = ()
    grant_id: str | None = None
    rev: int = 0  # store revision of the last change (for watchers)

    @property
    def pending(self) -> bool:
        return self.status == PENDING

    @property
    def approvals(self) -> int:
        return sum(1 for v in self.votes if v.decision == "approve")

    def is_requester(self, who: ApproverIdentity) -> bool:
        return who.subject == self.subject and who.issuer == self.issuer

    def is_approver(self, who: ApproverIdentity) -> bool:
        return bool(set(who.groups) & set(self.approvers))

    def visible_to(self, who: ApproverIdentity, admin_groups: Iterable[str] = ()) -> bool:
        return self.is_approver(who) or bool(set(who.groups) & set(admin_groups))

    def with_(self, **changes: Any) -> ApprovalRequest:
        return replace(self, **changes)

    def summary(self) -> dict[str, Any]:
        """For events, webhooks and ``approvals list --json``: no raw SQL (``sql`` is the
        redacted text the caller gave), no token, no claims."""
        return {
            "id": self.id, "status": self.status, "subject": self.subject,
            "issuer": self.issuer, "groups": list(self.groups), "connection": self.connection,
            "session_id": self.session_id, "sql": self.sql, "fingerprint": self.fingerprint,
            "approvers": list(self.approvers), "min_approvals": self.min_approvals,
            "approvals": self.approvals, "grant_ttl": self.grant_ttl,
            "input_digest": self.input_digest, "holder": self.holder,
            "requested_at": rfc3339(self.requested_at), "expires_at": rfc3339(self.expires_at),
            "resolved_at": rfc3339(self.resolved_at), "resolved_by": self.resolved_by,
            "reason": self.resolution_reason, "grant_id": self.grant_id,
            "votes": [{**v.to_dict(), "at": rfc3339(v.at)} for v in self.votes],
        }


@dataclass(frozen=True)
class Grant:
    """A time-boxed window: the same identity may run the same statement fingerprint on
    the same connection without a new hold until ``expires_at``."""

    id: str
    request_id: str
    subject: str
    issuer: str
    connection: str
    fingerprint: str
    approvers: tuple[str, ...]  # the request's approver groups (who may see the grant)
    granted_by: tuple[str, ...]  # subjects of the approvers whose votes opened it
    created_at: float
    expires_at: float
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    uses: int = 0

    def active(self, now: float) -> bool:
        return self.revoked_at is None and now < self.expires_at

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id, "request_id": self.request_id, "subject": self.subject,
            "issuer": self.issuer, "connection": self.connection,
            "fingerprint": self.fingerprint, "approvers": list(self.approvers),
            "granted_by": list(self.granted_by), "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.expires_at), "revoked_at": rfc3339(self.revoked_at),
            "revoked_by": self.revoked_by, "revoke_reason": self.revoke_reason,
            "uses": self.uses,
        }


@dataclass(frozen=True)
class Resolution:
    """How a hold ended: ``approved`` | ``denied`` | ``expired`` | ``withdrawn``.

    ``by``: the subjects who decided (comma-separated for several approvals), None for
    expired/withdrawn. ``reason``: the deciding approver's justification, or why the
    request was withdrawn. ``grant``: the window the approval opened, if any."""

    status: str
    by: str | None
    reason: str | None
    at: float
    request_id: str = ""
    votes: tuple[Vote, ...] = field(default=())
    grant: Grant | None = None

    @property
    def approved(self) -> bool:
        return self.status == APPROVED

    @classmethod
    def of(cls, request: ApprovalRequest, grant: Grant | None = None) -> Resolution:
        return cls(status=request.status, by=request.resolved_by,
                   reason=request.resolution_reason,
                   at=request.resolved_at if request.resolved_at is not None else 0.0,
                   request_id=request.id, votes=request.votes, grant=grant)
