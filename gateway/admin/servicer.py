"""The ``pgwarden.admin.v1.Admin`` gRPC service (grpc.aio).

Every call must carry ``authorization: Bearer <JWT>`` metadata, verified by the
gateway's :class:`~gateway.identity.verifier.JwtVerifier` (same providers as clients):
no or a bad token → UNAUTHENTICATED with the verifier's fixed message.

Who may do what:

- ListApprovals / WatchApprovals: the requests whose ``approvers`` groups the caller is
  a member of; members of ``admin_groups`` see every request.
- Approve / Deny: the :class:`~gateway.approvals.ApprovalService` rules (never the
  requester, only approver-group members, a reason unless configured otherwise);
  refusals are PERMISSION_DENIED / INVALID_ARGUMENT / FAILED_PRECONDITION / NOT_FOUND
  with a message that says why.
- ListGrants: grants of requests the caller could approve; admins see all.
- BundleStatus: any authenticated caller.
- RevokeGrant, ListSessions, TerminateSession, ReloadBundle: ``admin_groups`` only.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from functools import wraps
from typing import Any, TypeVar

import grpc

from gateway import logs
from gateway.approvals import ApprovalError, ApprovalService, WatchOverflow
from gateway.approvals.model import STATUSES, ApprovalRequest, Grant, rfc3339
from gateway.audit.redact import scrub
from gateway.identity.errors import AuthError
from gateway.identity.model import Identity

from . import admin_pb2 as pb
from . import admin_pb2_grpc
from . import metrics as m
from .backend import AdminBackend

__all__ = ["SERVICE_NAME", "AdminServicer", "approval_pb", "grant_pb"]

SERVICE_NAME = "pgwarden.admin.v1.Admin"
T = TypeVar("T")
EventHook = Callable[[str, dict[str, Any]], None]

_CODES = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "not_pending": grpc.StatusCode.FAILED_PRECONDITION,
    "self_approval": grpc.StatusCode.PERMISSION_DENIED,
    "not_approver": grpc.StatusCode.PERMISSION_DENIED,
    "reason_required": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "already_voted": grpc.StatusCode.ALREADY_EXISTS,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
}


def _s(value: Any) -> str:
    """A text field of an answer. Reasons, subjects, groups, application names and bundle
    revisions are people's, tokens' and clients' text: no card number leaves here, as
    none does in a record or a log line."""
    return "" if value is None else scrub(str(value))


def _each(values: Any) -> list[str]:
    return [_s(v) for v in values]


def approval_pb(r: ApprovalRequest) -> pb.Approval:
    return pb.Approval(
        id=r.id, status=r.status, subject=_s(r.subject), issuer=_s(r.issuer),
        groups=_each(r.groups), connection=_s(r.connection), session_id=_s(r.session_id),
        sql=_s(r.sql), fingerprint=r.fingerprint, approvers=_each(r.approvers),
        min_approvals=r.min_approvals,
        approvals=r.approvals, grant_ttl=r.grant_ttl or 0.0,
        requested_at=_s(rfc3339(r.requested_at)), expires_at=_s(rfc3339(r.expires_at)),
        resolved_at=_s(rfc3339(r.resolved_at)), resolved_by=_s(r.resolved_by),
        reason=_s(r.resolution_reason), grant_id=_s(r.grant_id), holder=_s(r.holder),
        votes=[pb.Vote(subject=_s(v.subject), issuer=_s(v.issuer), decision=v.decision,
                       reason=_s(v.reason), at=_s(rfc3339(v.at))) for v in r.votes])


def grant_pb(g: Grant) -> pb.Grant:
    return pb.Grant(
        id=g.id, request_id=g.request_id, subject=_s(g.subject), issuer=_s(g.issuer),
        connection=_s(g.connection), fingerprint=g.fingerprint, approvers=_each(g.approvers),
        granted_by=_each(g.granted_by), created_at=_s(rfc3339(g.created_at)),
        expires_at=_s(rfc3339(g.expires_at)), revoked_at=_s(rfc3339(g.revoked_at)),
        revoked_by=_s(g.revoked_by), revoke_reason=_s(g.revoke_reason), uses=g.uses)


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _time(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, int | float):
        return _s(rfc3339(float(value)))
    return str(value)


def _session_pb(s: Any) -> pb.Session:
    return pb.Session(
        id=_s(_field(s, "id")), subject=_s(_field(s, "subject")),
        issuer=_s(_field(s, "issuer")), connection=_s(_field(s, "connection")),
        client_addr=_s(_field(s, "client_addr")),
        application_name=_s(_field(s, "application_name")),
        started_at=_time(_field(s, "started_at")),
        statements=int(_field(s, "statements", 0) or 0), state=_s(_field(s, "state")),
        worker=int(_field(s, "worker", 0) or 0))


async def _maybe(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value  # type: ignore[return-value]


def _counted(name: str) -> Callable[[Any], Any]:
    """Count each call in pgwarden_admin_requests_total{method, code}."""

    def wrap(fn: Any) -> Any:
        if inspect.isasyncgenfunction(fn):
            @wraps(fn)
            async def stream(self: Any, request: Any, context: Any) -> Any:
                try:
                    async for item in fn(self, request, context):
                        yield item
                finally:
                    _count(name, context)
            return stream

        @wraps(fn)
        async def unary(self: Any, request: Any, context: Any) -> Any:
            try:
                return await fn(self, request, context)
            finally:
                _count(name, context)
        return unary

    return wrap


def _count(name: str, context: Any) -> None:
    try:
        code = context.code()
    except Exception:
        code = None
    label = code.name if isinstance(code, grpc.StatusCode) else "OK"
    m.ADMIN_REQUESTS.labels(method=name, code=label).inc()


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, *, verifier: Any, approvals: ApprovalService, backend: AdminBackend,
                 admin_groups: Iterable[str] = (), on_event: EventHook | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.verifier = verifier
        self.approvals = approvals
        self.backend = backend
        self.admin_groups = tuple(admin_groups)
        self.on_event = on_event
        self.clock = clock

    # -- authentication and authorization ---------------------------------------------------

    async def _identity(self, context: grpc.aio.ServicerContext) -> Identity:
        values = [v for k, v in (context.invocation_metadata() or ())
                  if k.lower() == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str) \
                or not values[0][:7].lower() == "bearer ":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "a bearer token is required (authorization: Bearer <jwt>)")
        try:
            return await self.verifier.verify(values[0][7:].strip())
        except AuthError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
            raise  # unreachable: abort raises

    def _is_admin(self, who: Identity) -> bool:
        return bool(set(who.groups) & set(self.admin_groups))

    async def _admin(self, context: grpc.aio.ServicerContext, what: str) -> Identity:
        who = await self._identity(context)
        if not self._is_admin(who):
            if self.admin_groups:
                need = f"membership in one of the admin groups ({', '.join(self.admin_groups)})"
            else:
                need = "an admin group, and none is configured (admin.admin_groups)"
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{what} needs {need}; {who.subject} has none")
        return who

    def _visible(self, who: Identity, r: ApprovalRequest) -> bool:
        return r.visible_to(who, self.admin_groups)

    async def _refused(self, context: grpc.aio.ServicerContext, exc: ApprovalError) -> None:
        await context.abort(_CODES.get(exc.code, grpc.StatusCode.UNKNOWN), exc.message)

    def _emit(self, kind: str, details: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(kind, details)
        except Exception as exc:
            logs.error("admin.event_hook_failed", kind=kind, error=type(exc).__name__)

    # -- approvals --------------------------------------------------------------------------

    @_counted("ListApprovals")
    async def ListApprovals(self, request: pb.ListApprovalsRequest,
                            context: grpc.aio.ServicerContext) -> pb.ListApprovalsResponse:
        who = await self._identity(context)
        if request.status and request.status not in STATUSES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"status must be one of {', '.join(STATUSES)}")
        try:
            found = await self.approvals.list_requests(request.status or None)
        except ApprovalError as exc:
            await self._refused(context, exc)
        return pb.ListApprovalsResponse(
            approvals=[approval_pb(r) for r in found if self._visible(who, r)])

    @_counted("WatchApprovals")
    async def WatchApprovals(self, request: pb.WatchApprovalsRequest,
                             context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[pb.ApprovalEvent]:
        who = await self._identity(context)
        try:
            # Subscribe before listing: a change in between shows up twice, never zero times.
            async with self.approvals.subscribe() as changes:
                if request.include_existing:
                    for r in reversed(await self.approvals.list_requests("pending")):
                        if self._visible(who, r):
                            yield pb.ApprovalEvent(kind="existing", approval=approval_pb(r))
                while True:
                    left = None
                    if who.expires_at is not None:
                        left = who.expires_at - self.clock()
                        if left <= 0:
                            break
                    try:
                        r = await asyncio.wait_for(changes.__anext__(), left)
                    except TimeoutError:
                        break
                    if self._visible(who, r):
                        yield pb.ApprovalEvent(kind="changed", approval=approval_pb(r))
        except WatchOverflow as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except ApprovalError as exc:
            await self._refused(context, exc)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "token expired; reconnect with a fresh token")

    async def _decide(self, decision: str, request: pb.DecideRequest,
                      context: grpc.aio.ServicerContext) -> pb.DecideResponse:
        who = await self._identity(context)
        if not request.id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an approval id is required")
        act = self.approvals.approve if decision == "approve" else self.approvals.deny
        try:
            done = await act(request.id, who, request.reason)
        except ApprovalError as exc:
            await self._refused(context, exc)
        logs.info("admin.approval_decided", decision=decision, approval_id=request.id,
                  approver=who.subject, resolved=done.resolved)
        return pb.DecideResponse(approval=approval_pb(done.request), resolved=done.resolved,
                                 grant=grant_pb(done.grant) if done.grant else None)

    @_counted("Approve")
    async def Approve(self, request: pb.DecideRequest,
                      context: grpc.aio.ServicerContext) -> pb.DecideResponse:
        return await self._decide("approve", request, context)

    @_counted("Deny")
    async def Deny(self, request: pb.DecideRequest,
                   context: grpc.aio.ServicerContext) -> pb.DecideResponse:
        return await self._decide("deny", request, context)

    # -- grants -----------------------------------------------------------------------------

    @_counted("ListGrants")
    async def ListGrants(self, request: pb.ListGrantsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListGrantsResponse:
        who = await self._identity(context)
        try:
            grants = await self.approvals.list_grants(request.include_inactive)
        except ApprovalError as exc:
            await self._refused(context, exc)
        admin = self._is_admin(who)
        return pb.ListGrantsResponse(grants=[
            grant_pb(g) for g in grants if admin or set(g.approvers) & set(who.groups)])

    @_counted("RevokeGrant")
    async def RevokeGrant(self, request: pb.RevokeGrantRequest,
                          context: grpc.aio.ServicerContext) -> pb.RevokeGrantResponse:
        who = await self._admin(context, "RevokeGrant")
        try:
            grant = await self.approvals.revoke_grant(request.id, by=who,
                                                      reason=request.reason or None)
        except ApprovalError as exc:
            await self._refused(context, exc)
        return pb.RevokeGrantResponse(grant=grant_pb(grant))

    # -- sessions and bundle ----------------------------------------------------------------

    @_counted("ListSessions")
    async def ListSessions(self, request: pb.ListSessionsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ListSessionsResponse:
        await self._admin(context, "ListSessions")
        sessions: Iterable[Any] = await _maybe(self.backend.list_sessions())
        return pb.ListSessionsResponse(sessions=[_session_pb(s) for s in sessions])

    @_counted("TerminateSession")
    async def TerminateSession(self, request: pb.TerminateSessionRequest,
                               context: grpc.aio.ServicerContext
                               ) -> pb.TerminateSessionResponse:
        who = await self._admin(context, "TerminateSession")
        if not request.id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session id is required")
        reason = request.reason or f"terminated by {who.subject}"
        done = bool(await _maybe(self.backend.terminate_session(request.id, reason)))
        if not done:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no open session {request.id}")
        self._emit("session_terminated", {"session_id": request.id, "reason": reason,
                                          "by": {"subject": who.subject,
                                                 "issuer": who.issuer}})
        return pb.TerminateSessionResponse(terminated=True)

    @_counted("BundleStatus")
    async def BundleStatus(self, request: pb.BundleStatusRequest,
                           context: grpc.aio.ServicerContext) -> pb.BundleStatusResponse:
        await self._identity(context)
        st = await _maybe(self.backend.bundle_status())
        return pb.BundleStatusResponse(
            location=_s(_field(st, "location")), revision=_s(_field(st, "revision")),
            sha256=_s(_field(st, "sha256")), activated_at=_time(_field(st, "activated_at")),
            activations=int(_field(st, "activations", 0) or 0),
            rejections=int(_field(st, "rejections", 0) or 0),
            not_modified=int(_field(st, "not_modified", 0) or 0),
            failures=int(_field(st, "failures", 0) or 0))

    @_counted("ReloadBundle")
    async def ReloadBundle(self, request: pb.ReloadBundleRequest,
                           context: grpc.aio.ServicerContext) -> pb.ReloadBundleResponse:
        who = await self._admin(context, "ReloadBundle")
        result = await _maybe(self.backend.reload_bundle())
        self._emit("bundle_reload_requested", {"by": {"subject": who.subject,
                                                      "issuer": who.issuer},
                                               "status": _s(_field(result, "status"))})
        return pb.ReloadBundleResponse(
            status=_s(_field(result, "status")), trigger=_s(_field(result, "trigger")),
            revision=_s(_field(result, "revision")), sha256=_s(_field(result, "sha256")),
            reason=_s(_field(result, "reason")), file=_s(_field(result, "file")))
