"""Just-in-time approvals: hold a statement, let an approver decide, remember a grant.

:class:`ApprovalService` is what the gate (holding statements) and the admin API
(approvers) share. All state lives in an :class:`~gateway.approvals.store.ApprovalStore`
so that every worker and every replica sees the same requests and grants; this object
only adds the rules, the waiting, the events and the webhook.

Rules enforced by :meth:`ApprovalService.approve` / :meth:`~ApprovalService.deny`:

- the request must exist, be pending and not past its expiry;
- the requester (same ``subject`` *and* ``issuer``) can never approve it;
- only a member of one of the groups the decision named in ``approvers`` may act;
- a justification is required unless ``require_reason`` is off;
- each approver votes once; one deny ends the request; it is approved when
  ``min_approvals`` distinct approvers have approved it. An approval opens a grant when
  the decision carried ``grant_ttl``: for that many seconds the same identity
  (issuer + subject) may run the same statement fingerprint on the same connection
  without a new hold (:meth:`~ApprovalService.active_grant`).

Events (``on_event(kind, details)``, for the audit trail): ``approval_requested``,
``approval_vote`` (an approval that did not reach ``min_approvals`` yet),
``approval_granted``, ``approval_denied``, ``approval_expired``, ``approval_withdrawn``,
``grant_used``, ``grant_revoked``. Each is emitted once across the fleet: by the
gateway that made the change (the store's compare-and-set decides who). Details carry
the request's summary (its SQL is the redacted text the caller gave), never a token.

Waiting: :meth:`~ApprovalService.wait` re-reads the request when woken — by a local
change, by the store's notification of a change elsewhere (PostgreSQL LISTEN/NOTIFY),
or every ``poll_interval`` seconds (0.5 s by default on SQLite, where other processes
cannot notify; 5 s on PostgreSQL, as a safety net).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from gateway import logs
from gateway.audit.display import shows_anything

from .model import (
    APPROVED,
    EXPIRED,
    GRANT_PREFIX,
    PENDING,
    REQUEST_PREFIX,
    WITHDRAWN,
    ApprovalError,
    ApprovalRequest,
    ApproverIdentity,
    Grant,
    Resolution,
    Vote,
    new_id,
)
from .store import ApprovalStore, PostgresStore, SqliteStore
from .webhook import WebhookNotifier

__all__ = ["ApprovalService", "Decided", "WatchOverflow", "open_store"]

T = TypeVar("T")
EventHook = Callable[[str, dict[str, Any]], None]

MAX_REASON = 1000
_WATCH_QUEUE = 1000


class WatchOverflow(Exception):
    """A watcher fell too far behind; it should reconnect (and list again)."""


@dataclass(frozen=True)
class Decided:
    """What approve()/deny() did: the request as stored, the grant the approval opened
    (if any), and whether this vote resolved the request (False: more approvals due)."""

    request: ApprovalRequest
    grant: Grant | None
    resolved: bool


def open_store(approvals: Any, *, base_dir: Path | None = None) -> ApprovalStore:
    """The store an ``approvals:`` config section asks for (duck-typed: ``store``,
    ``path``, ``dsn`` — a Secret or str — and ``table_prefix``; absent keys take their
    defaults: SQLite at ``<base_dir>/state/approvals.db``)."""
    kind = getattr(approvals, "store", "sqlite") or "sqlite"
    prefix = getattr(approvals, "table_prefix", "pgwarden_") or "pgwarden_"
    if kind == "sqlite":
        path = getattr(approvals, "path", None)
        if path is None:
            path = Path(base_dir or ".") / "state" / "approvals.db"
        return SqliteStore(path, prefix=prefix)
    if kind == "postgres":
        dsn = getattr(approvals, "dsn", None)
        if dsn is None:
            raise ValueError("approvals.store is postgres but approvals.dsn is not set")
        return PostgresStore(dsn.reveal() if hasattr(dsn, "reveal") else str(dsn),
                             prefix=prefix)
    raise ValueError(f"unknown approvals.store {kind!r} (sqlite or postgres)")


def _who(identity: ApproverIdentity) -> dict[str, Any]:
    return {"subject": identity.subject, "issuer": identity.issuer,
            "groups": list(identity.groups)}


class _Subscription:
    def __init__(self, service: ApprovalService) -> None:
        self._service = service
        self.queue: asyncio.Queue[ApprovalRequest | None] = asyncio.Queue(_WATCH_QUEUE)
        self.overflowed = False

    async def __aenter__(self) -> _Subscription:
        await self._service._add_subscriber(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._service._remove_subscriber(self)

    def push(self, request: ApprovalRequest) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(request)
        except asyncio.QueueFull:
            self.overflowed = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[ApprovalRequest]:
        return self

    async def __anext__(self) -> ApprovalRequest:
        item = await self.queue.get()
        if item is None:
            raise WatchOverflow("approval watch fell behind; reconnect")
        return item


class ApprovalService:
    def __init__(
        self,
        store: ApprovalStore,
        *,
        require_reason: bool = True,
        default_timeout: float = 300.0,
        instance: str | None = None,
        on_event: EventHook | None = None,
        webhook: WebhookNotifier | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float | None = None,
        sweep_interval: float = 30.0,
        retention: float = 7 * 86400.0,
    ) -> None:
        self.store = store
        self.require_reason = require_reason
        self.default_timeout = default_timeout
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self.on_event = on_event
        self.webhook = webhook
        self.clock = clock
        self.poll_interval = poll_interval if poll_interval is not None else (
            5.0 if store.notifies else 0.5)
        self.sweep_interval = sweep_interval
        self.retention = retention
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._held: set[str] = set()
        self._subscribers: set[_Subscription] = set()
        self._changed = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._started = False
        self._store_ok = True

    @classmethod
    def from_config(cls, approvals: Any, *, base_dir: Path | None = None,
                    **kwargs: Any) -> ApprovalService:
        """Store, webhook and options from an ``approvals:`` config section."""
        kwargs.setdefault("require_reason", getattr(approvals, "require_reason", True))
        kwargs.setdefault("default_timeout", getattr(approvals, "timeout", 300.0))
        kwargs.setdefault("webhook",
                          WebhookNotifier.from_config(getattr(approvals, "webhook", None)))
        return cls(open_store(approvals, base_dir=base_dir), **kwargs)

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="pgwarden-approvals")
        try:
            await self._call(self.store.open)
        except Exception as exc:
            # A store down now (a PostgreSQL server restarting, a state directory not
            # writable yet) is used once it is back: every call opens it again, and
            # until then held statements are refused saying so and health is failing.
            self._store_ok = False
            logs.error("approvals.store_unavailable", store=self.store.kind,
                       error=f"{type(exc).__name__}: {exc}"[:300])
        self._started = True
        self.store.start_listener(self._from_thread)
        if self.sweep_interval > 0:
            self._sweep_task = self._loop.create_task(self._sweeper())

    async def close(self) -> None:
        for task in (self._sweep_task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sweep_task = self._watch_task = None
        if self.webhook is not None:
            await self.webhook.close()
        if self._executor is not None:
            await self._call(self.store.close)
            self._executor.shutdown(wait=True)
            self._executor = None
        self._started = False

    async def __aenter__(self) -> ApprovalService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._executor is None:
            raise ApprovalError("unavailable", "the approval service is not started")
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, partial(fn, *args, **kwargs))
        except ApprovalError as exc:
            if exc.code == "unavailable":
                self._store_ok = False
            raise
        self._store_ok = True
        return result

    def healthy(self) -> bool:
        """False while the store is failing (the last call found it unavailable): a
        health check for /healthz and grpc.health.v1."""
        return self._started and self._store_ok

    @property
    def held_count(self) -> int:
        """Requests this gateway created and still holds (for pgwarden_approvals_pending)."""
        return len(self._held)

    # -- the holding side -------------------------------------------------------------------

    async def request(
        self,
        *,
        subject: str,
        issuer: str,
        groups: Sequence[str],
        connection: str,
        session_id: str | None,
        sql_redacted: str,
        fingerprint: str,
        approvers: Sequence[str],
        min_approvals: int = 1,
        grant_ttl: float | None = None,
        input_digest: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the request's lifetime
    ) -> ApprovalRequest:
        """Create a pending request (expiring after ``timeout``, default the configured
        ``approvals.timeout``). Raises ApprovalError: invalid, unavailable."""
        approvers = tuple(dict.fromkeys(a for a in approvers if a))
        if not approvers:
            raise ApprovalError("invalid", "an approval needs at least one approver group")
        if isinstance(min_approvals, bool) or not isinstance(min_approvals, int) \
                or min_approvals < 1:
            raise ApprovalError("invalid", "min_approvals must be an integer >= 1")
        if grant_ttl is not None and not grant_ttl > 0:
            raise ApprovalError("invalid", "grant_ttl must be a positive number of seconds")
        now = self.clock()
        ttl = self.default_timeout if timeout is None else timeout
        req = ApprovalRequest(
            id=new_id(REQUEST_PREFIX), subject=subject, issuer=issuer, groups=tuple(groups),
            connection=connection, session_id=session_id, sql=sql_redacted,
            fingerprint=fingerprint, approvers=approvers, min_approvals=min_approvals,
            grant_ttl=float(grant_ttl) if grant_ttl else None, input_digest=input_digest,
            requested_at=now, expires_at=now + ttl, holder=self.instance)
        req = await self._call(self.store.create_request, req)
        self._held.add(req.id)
        self._emit("approval_requested", {"approval": req.summary()})
        self._changed_locally(req.id)
        return req

    async def wait(self, request_id: str,
                   timeout: float | None = None) -> Resolution:  # noqa: ASYNC109
        """Until the request is approved, denied or withdrawn (here or through any other
        gateway), or expires: at its own expiry, or after ``timeout`` seconds if sooner —
        then it is marked expired. A cancelled wait leaves the request pending: call
        :meth:`withdraw` when the client goes away."""
        event = asyncio.Event()
        self._waiters.setdefault(request_id, set()).add(event)
        try:
            req: ApprovalRequest | None = await self._get_or_raise(request_id)
            assert req is not None  # (it raises instead)
            deadline = req.expires_at
            if timeout is not None:
                deadline = min(deadline, self.clock() + timeout)
            while True:
                event.clear()
                try:
                    req = await self._get_or_raise(request_id)
                except ApprovalError as exc:
                    if exc.code != "unavailable":
                        raise
                    req = None  # keep waiting; fail closed at the deadline
                if req is not None and req.status != PENDING:
                    return await self._resolution(req)
                remaining = deadline - self.clock()
                if remaining <= 0:
                    return await self._expire(request_id)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, self.poll_interval))
        finally:
            events = self._waiters.get(request_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[request_id]
            self._held.discard(request_id)

    async def _expire(self, request_id: str) -> Resolution:
        now = self.clock()
        try:
            done = await self._call(self.store.finish, request_id, EXPIRED, at=now,
                                    reason="no decision in time")
        except ApprovalError:
            # The store is down: the statement stays refused all the same.
            return Resolution(EXPIRED, None, "no decision in time", now, request_id)
        if done is not None:
            self._emit("approval_expired", {"approval": done.summary()})
            self._changed_locally(request_id)
            return Resolution.of(done)
        # Someone resolved it in the meantime: that decision stands.
        return await self._resolution(await self._get_or_raise(request_id))

    async def withdraw(self, request_id: str, why: str) -> bool:
        """The client cancelled or went away. False if it was already resolved."""
        self._held.discard(request_id)
        done = await self._call(self.store.finish, request_id, WITHDRAWN, at=self.clock(),
                                reason=why)
        if done is None:
            return False
        self._emit("approval_withdrawn", {"approval": done.summary(), "reason": why})
        self._changed_locally(request_id)
        return True

    async def active_grant(self, subject: str, issuer: str, connection: str,
                           fingerprint: str) -> Grant | None:
        """The open grant for this identity, connection and statement fingerprint, if
        any (and count a use: ``grant_used``). None also when the store is down (the
        statement is then held, and the hold fails closed)."""
        try:
            grant = await self._call(self.store.find_grant, subject, issuer, connection,
                                     fingerprint, self.clock())
        except ApprovalError:
            return None
        if grant is not None:
            self._emit("grant_used", {"grant": grant.summary(), "connection": connection,
                                      "fingerprint": fingerprint})
        return grant

    # -- the approver side ------------------------------------------------------------------

    async def approve(self, request_id: str, approver: ApproverIdentity,
                      reason: str | None) -> Decided:
        return await self._decide("approve", request_id, approver, reason)

    async def deny(self, request_id: str, approver: ApproverIdentity,
                   reason: str | None) -> Decided:
        return await self._decide("deny", request_id, approver, reason)

    async def _decide(self, decision: str, request_id: str, approver: ApproverIdentity,
                      reason: str | None) -> Decided:
        reason = (reason or "").strip() or None
        if reason is not None and not shows_anything(reason):
            reason = None  # (zero-width spaces, controls: nothing a reader would see)
        if reason is not None and len(reason) > MAX_REASON:
            raise ApprovalError("invalid", f"the reason is longer than {MAX_REASON} characters")
        if reason is None and self.require_reason:
            raise ApprovalError("reason_required",
                                f"a reason is required to {decision} {request_id}")
        req = await self._get_or_raise(request_id)
        if decision == "approve" and req.is_requester(approver):
            raise ApprovalError("self_approval",
                                f"{approver.subject} requested {request_id} and cannot "
                                "approve it: another approver must")
        if not req.is_approver(approver):
            raise ApprovalError("not_approver",
                                f"only members of {', '.join(req.approvers)} may "
                                f"{decision} {request_id}; {approver.subject} is not in "
                                "any of these groups")
        now = self.clock()
        vote = Vote(approver.subject, approver.issuer, decision, reason, now)
        grant_id = new_id(GRANT_PREFIX) if decision == "approve" and req.grant_ttl else None
        stored, grant, resolved = await self._call(self.store.vote, request_id, vote,
                                                   grant_id=grant_id)
        details: dict[str, Any] = {"approval": stored.summary(), "approver": _who(approver),
                                   "reason": reason}
        if grant is not None:
            details["grant"] = grant.summary()
        if not resolved:
            kind = "approval_vote"
        else:
            kind = "approval_granted" if stored.status == APPROVED else "approval_denied"
        self._emit(kind, details)
        self._changed_locally(request_id)
        return Decided(stored, grant, resolved)

    async def get_request(self, request_id: str) -> ApprovalRequest | None:
        return await self._call(self.store.get_request, request_id)

    async def _get_or_raise(self, request_id: str) -> ApprovalRequest:
        req = await self._call(self.store.get_request, request_id)
        if req is None:
            raise ApprovalError("not_found", f"no approval request {request_id}")
        return req

    async def list_requests(self, status: str | None = None) -> list[ApprovalRequest]:
        """Newest first; pending ones past their expiry are expired first."""
        await self.sweep()
        return await self._call(self.store.list_requests, status)

    async def list_grants(self, include_inactive: bool = False) -> list[Grant]:
        return await self._call(self.store.list_grants, self.clock(), include_inactive)

    async def get_grant(self, grant_id: str) -> Grant | None:
        return await self._call(self.store.get_grant, grant_id)

    async def revoke_grant(self, grant_id: str, by: ApproverIdentity | None = None,
                           reason: str | None = None) -> Grant:
        """End a grant now (idempotent). Raises ApprovalError not_found."""
        grant, revoked = await self._call(self.store.revoke_grant, grant_id, at=self.clock(),
                                          by=by.subject if by is not None else None,
                                          reason=reason)
        if grant is None:
            raise ApprovalError("not_found", f"no grant {grant_id}")
        if revoked:
            self._emit("grant_revoked", {"grant": grant.summary(),
                                         "by": _who(by) if by is not None else None,
                                         "reason": reason})
        return grant

    async def sweep(self) -> list[ApprovalRequest]:
        """Expire pending requests past their expiry whose holder did not (it died)."""
        expired = await self._call(self.store.expire_due, self.clock())
        for req in expired:
            self._emit("approval_expired", {"approval": req.summary()})
            self._changed_locally(req.id)
        return expired

    async def _sweeper(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
                rounds += 1
                if rounds % 120 == 1:
                    await self._call(self.store.purge, self.clock() - self.retention)
            except ApprovalError:
                pass  # store down: the next round tries again
            except Exception as exc:  # never let the sweeper die
                logs.error("approvals.sweep_failed", error=type(exc).__name__)

    async def _resolution(self, req: ApprovalRequest) -> Resolution:
        grant = None
        if req.status == APPROVED and req.grant_id:
            grant = await self._call(self.store.get_grant, req.grant_id)
        return Resolution.of(req, grant)

    # -- watching ---------------------------------------------------------------------------

    def subscribe(self) -> _Subscription:
        """``async with service.subscribe() as changes: async for request in changes``:
        every request created or changed anywhere from now on (its latest state; a
        request may appear more than once). Raises WatchOverflow if the reader lags."""
        return _Subscription(self)

    async def _add_subscriber(self, sub: _Subscription) -> None:
        self._subscribers.add(sub)
        if self._watch_task is None or self._watch_task.done():
            rev = await self._call(self.store.max_rev)
            self._watch_task = asyncio.get_running_loop().create_task(self._watch(rev))

    def _remove_subscriber(self, sub: _Subscription) -> None:
        self._subscribers.discard(sub)
        if not self._subscribers and self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None

    async def _watch(self, rev: int) -> None:
        while self._subscribers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.poll_interval)
            self._changed.clear()
            try:
                changes = await self._call(self.store.changes_since, rev)
            except ApprovalError:
                continue
            except Exception as exc:
                logs.error("approvals.watch_failed", error=type(exc).__name__)
                continue
            for req in changes:
                rev = max(rev, req.rev)
                for sub in list(self._subscribers):
                    sub.push(req)

    # -- change propagation -----------------------------------------------------------------

    def _from_thread(self, payload: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing
                loop.call_soon_threadsafe(self._changed_locally, payload)

    def _changed_locally(self, payload: str) -> None:
        if payload == "*":
            targets = [e for events in self._waiters.values() for e in events]
        else:
            targets = list(self._waiters.get(payload, ()))
        for event in targets:
            event.set()
        self._changed.set()

    def _emit(self, kind: str, details: dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, details)
            except Exception as exc:  # an audit hook problem must not break approvals
                logs.error("approvals.event_hook_failed", kind=kind, error=type(exc).__name__)
        if self.webhook is not None and kind.startswith("approval_"):
            self.webhook.notify(kind, details)
