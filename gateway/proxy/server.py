"""The listener: accepts clients, runs their sessions, drains on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping, MutableSequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__, logs, native
from gateway.admin import metrics
from gateway.approvals import ApprovalService
from gateway.audit import (
    AuditContext,
    AuditError,
    AuditSettings,
    AuditUnavailable,
    AuditWriter,
    open_audit,
    records,
)
from gateway.bundle.reloader import BundleReloader
from gateway.enforce.catalog_cache import CatalogCache
from gateway.masking import rows as masking_rows
from gateway.policy.engine import PolicyEngine
from gateway.wire.errors import ProtocolViolation
from gateway.wire.startup import CancelRequest, StartupReader

from . import upstream as up
from .admin_backend import GatewayAdminBackend
from .cancel import CancelRegistry
from .endpoint import ConnectionClosed, Endpoint
from .session import Session
from .tls import server_context
from .upstream_query import Rows, run_queries

if TYPE_CHECKING:
    from gateway.config.model import GatewayConfig
    from gateway.identity.verifier import JwtVerifier


# Connections past max_connections whose startup is read to refuse them properly (over
# TLS if asked, a cancel request served) at one time, each for at most
# session.REFUSING_SECONDS; past this many the oldest is refused at once.
REFUSING_MAX = 64
SessionCounts = MutableSequence[int]  # a multiprocessing.RawArray("i", workers)


class GatewayServer:
    def __init__(self, config: GatewayConfig, verifier: JwtVerifier, worker_id: int = 0,
                 peer_dir: Path | None = None, *,
                 session_counts: SessionCounts | None = None) -> None:
        self.config = config
        # every worker's open sessions (one slot each), with several workers
        self._counts = session_counts
        # With several workers, each also listens on peer_dir/cancel-<id>.sock so that a
        # cancel landing on the wrong worker reaches the one holding the session.
        self.peer_dir = peer_dir
        self._peer_server: asyncio.base_events.Server | None = None
        self._admin_peer: asyncio.base_events.Server | None = None
        self._admin_backend = GatewayAdminBackend(self)
        self.verifier = verifier
        self.worker_id = worker_id
        self.cancels = CancelRegistry(worker_id)
        tls = config.listen.tls
        self.tls_context = server_context(tls.cert, tls.key) if tls else None
        self.sessions: set[Session] = set()
        self._refusing: set[Session] = set()  # connections past max_connections being told
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None
        self.enforce = config.policy is None or config.policy.enforce
        self.policy_engine: PolicyEngine | None = None
        # Hot reload: the reloader swaps `policy_engine` (one assignment); the statement
        # gate reads it once per query string. Raises BundleStartupError without a bundle.
        self.bundles: BundleReloader | None = None
        if config.policy is not None and config.policy.enforce:
            self.bundles = BundleReloader(config.policy, base_dir=config.source.parent,
                                          activate=self._set_policy, worker_id=worker_id)
            self.policy_engine = self.bundles.load_initial()
        # The audit trail: one hash chain per worker process (instance id "-w<k>").
        self.audit: AuditWriter | None = None
        if config.audit is not None:
            self.audit = open_audit(
                AuditSettings.from_config(config.audit),
                worker=worker_id if config.listen.workers > 1 else None,
                on_health=self._audit_health)
            if self.bundles is not None:
                self.bundles.on_event = self._bundle_event
        self._started_at = time.monotonic()
        # Just-in-time approvals: every worker runs a service on the shared store; the
        # admin API (gRPC, and HTTP health/metrics) runs in worker 0.
        self.approvals: ApprovalService | None = ApprovalService.from_config(
            config.approvals, base_dir=config.source.parent, on_event=self._approval_event,
            instance=f"w{worker_id}")
        self.health: Any = None  # gateway.admin.health.Health, built in start()
        self.admin: Any = None  # gateway.admin.server.AdminServer, in worker 0
        self.admin_http: Any = None
        self.catalogs = CatalogCache(self._fetch_catalog)
        self._targets = {
            name: up.UpstreamTarget(
                host=c.host, port=c.port, database=c.database, user=c.user,
                password=c.password.reveal() if c.password is not None else None,
                tls=c.tls, ca_file=str(c.ca_file) if c.ca_file else None,
                connect_timeout=c.connect_timeout,
            )
            for name, c in config.connections.items()
        }

    def _set_policy(self, engine: PolicyEngine) -> None:
        self.policy_engine = engine
        metrics.set_bundle_info(engine.revision, engine.bundle_hash)

    def _audit_health(self, healthy: bool, error: str | None) -> None:
        # Called from the writer thread; logging is thread-safe.
        if healthy:
            logs.info("audit.recovered", worker=self.worker_id)
        else:
            logs.error("audit.unavailable", worker=self.worker_id, error=error)

    def _approval_event(self, kind: str, details: dict[str, Any]) -> None:
        metrics.observe_approval_event(kind, details)
        if kind in ("session_terminated", "bundle_reload_requested"):
            self._admin_event(kind, details)
            return
        event = kind.removeprefix("approval_")
        # approval.requested and grant_used are the holding session's gate's records
        # (StatementGate._record_request, _approval): it alone knows the session's where
        # and the held decision
        if self.audit is None or event not in records.APPROVAL_EVENTS \
                or event in ("requested", "grant_used"):
            return
        req = details.get("approval") or {}
        approver = details.get("approver") or {}
        grant = details.get("grant")
        if not req and isinstance(grant, dict):  # grant_revoked: the grant's request
            req = {"id": grant.get("request_id"), "subject": grant.get("subject"),
                   "approvers": grant.get("approvers"), "expires_at": grant.get("expires_at")}
            approver = details.get("by") or {}
        try:
            self.audit.append(records.approval_record(
                event, approval_id=str(req.get("id")), ctx=_requester(req),
                requester=req.get("subject"), approvers=req.get("approvers") or (),
                approver=approver.get("subject"), approver_issuer=approver.get("issuer"),
                reason=details.get("reason"), sql=req.get("sql"),
                expires_at=req.get("expires_at")))
        except AuditUnavailable as e:
            logs.error("audit.append_failed", kind=kind, error=str(e))

    def _admin_event(self, kind: str, details: dict[str, Any]) -> None:
        if self.audit is None:
            return
        by = details.get("by") or {}
        action = "session_terminated" if kind == "session_terminated" else "bundle_reload"
        try:
            self.audit.append(records.admin_action(
                action, by_subject=by.get("subject"), by_issuer=by.get("issuer"),
                target=details.get("session_id"), reason=details.get("reason"),
                status=details.get("status")))
        except AuditUnavailable as e:
            logs.error("audit.append_failed", kind=kind, error=str(e))

    def _bundle_event(self, kind: str, details: dict[str, Any]) -> None:
        if self.audit is None:
            return
        if kind == "bundle_activated":
            rec = records.bundle_activated(
                revision=details.get("revision"), bundle_hash=str(details.get("sha256")),
                source=str(details.get("location")),
                previous_revision=details.get("previous_revision"),
                previous_bundle_hash=details.get("previous_sha256"),
                signed_by=details.get("keyid"))
        else:
            reason, file = str(details.get("reason")), details.get("file")
            if file and str(file) not in reason:  # the file at fault, as the log line has it
                reason = f"{file}: {reason}"
            rec = records.bundle_rejected(source=str(details.get("location")), reason=reason,
                                          bundle_hash=details.get("sha256"))
        try:
            self.audit.append(rec)
        except AuditUnavailable as e:
            logs.error("audit.append_failed", kind=kind, error=str(e))

    def reload_policy(self, trigger: str = "sighup") -> None:
        """Check the policy bundle now (SIGHUP); the work runs in a worker thread."""
        if self.bundles is not None:
            self.bundles.trigger(trigger)

    def target(self, name: str) -> up.UpstreamTarget:
        return self._targets[name]

    async def _fetch_catalog(self, connection: str, queries: Mapping[str, str]
                             ) -> dict[str, Rows]:
        return await run_queries(self.target(connection), dict(queries))

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._server.sockets) if self._server else []

    async def start(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        if self.audit is not None:
            self.audit.start()  # AuditError: no evidence, no gateway
            engine = self.policy_engine
            self.audit.append(records.gateway_start(
                version=__version__, pid=os.getpid(), workers=listen.workers,
                worker=self.worker_id, config=str(self.config.source),
                bundle_revision=engine.revision if engine else None,
                bundle_hash=engine.bundle_hash if engine else None))
        if sock is not None:
            self._server = await loop.create_server(self._protocol, sock=sock, backlog=1024)
        else:
            async with _listening("listen.address", listen.host, listen.port):
                self._server = await loop.create_server(
                    self._protocol, listen.host, listen.port, backlog=1024,
                    reuse_port=listen.workers > 1,
                )
        if self.peer_dir is not None:
            path = str(self._peer_socket(self.worker_id))
            self._peer_server = await loop.create_unix_server(
                lambda: Endpoint(on_connect=self._accept_peer), path)
            # The admin API (worker 0) asks its siblings for their sessions through here.
            self._admin_peer = await asyncio.start_unix_server(
                self._admin_backend.serve_peer, str(self.peer_dir / f"admin-{self.worker_id}.sock"))
        if self.bundles is not None:
            self.bundles.start()
        from gateway.admin.health import Health  # imports grpc: only in workers

        self.health = Health()
        starting = self.approvals
        if starting is not None:
            try:
                await starting.start()
            except Exception as e:  # e.g. a read-only state directory for the SQLite store
                # The gateway still serves; statements a policy holds are refused (fail
                # closed) with a message saying approvals are unavailable.
                logs.error("approvals.unavailable", worker=self.worker_id,
                           error=f"{type(e).__name__}: {e}"[:300])
                await starting.close()
                self.approvals = None
        if self.approvals is not None:
            approvals = self.approvals
            self.health.add_check("approvals", approvals.healthy)
            metrics.APPROVALS_PENDING.set_function(lambda: approvals.held_count)
        if self.policy_engine is not None:
            metrics.set_bundle_info(self.policy_engine.revision, self.policy_engine.bundle_hash)
        if self.audit is not None:
            audit = self.audit
            self.health.add_check("audit", lambda: audit.healthy)
        if self.worker_id == 0:
            await self._start_admin()
        addrs = [s.getsockname() for s in self._server.sockets]
        logs.info("gateway.listening", worker=self.worker_id,
                  addresses=[f"{a[0]}:{a[1]}" for a in addrs], tls=self.tls_context is not None,
                  masked_row_loop="compiled" if masking_rows.compiled() else "python",
                  compiled=native.loaded())

    async def _start_admin(self) -> None:
        # grpc is imported here, in the worker that serves the admin API: grpc's threads in
        # the supervisor would take its signals (SIGHUP forwarding) from the main thread.
        from gateway.admin.server import AdminServer, http_server_from_config

        admin = self.config.admin
        if admin.grpc is not None and self.approvals is None:
            logs.error("admin.unavailable", reason="the approvals store could not be opened")
        elif admin.grpc is not None:
            self.admin = AdminServer.from_config(
                admin, verifier=self.verifier, approvals=self.approvals,
                backend=self._admin_backend, health=self.health,
                on_event=self._approval_event)
            async with _listening("admin.grpc", *admin.grpc):
                port = await self.admin.start()
            logs.info("admin.listening", grpc=f"{admin.grpc[0]}:{port}")
        self.admin_http = http_server_from_config(
            admin, health=self.health,
            gateway=self._admin_backend if self.config.listen.workers > 1 else None)
        if self.admin_http is not None:
            assert admin.http is not None
            async with _listening("admin.http", *admin.http):
                await self.admin_http.start()

    def _protocol(self) -> Endpoint:
        return Endpoint(on_connect=self._accept)

    def _open_sessions(self) -> int:
        counts = self._counts
        return len(self.sessions) if counts is None else sum(counts)

    def _accept(self, ep: Endpoint) -> None:
        over = self._open_sessions() >= self.config.listen.max_connections
        if over and len(self._refusing) >= REFUSING_MAX:
            # The oldest gives way (it had its time: silent sockets must not keep a
            # client's cancel request out), its refusal said without reading it.
            oldest = min(self._refusing, key=lambda s: s.started_at)
            self._refusing.discard(oldest)
            from gateway.wire.backend import ErrorResponse

            oldest.client.write(ErrorResponse.build(
                "53300", "sorry, too many clients already", "FATAL").encode())
            oldest.client.abort()
        if ep.transport is not None:
            sock = ep.transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(self, ep, over_limit=over)
        sessions = self._refusing if over else self.sessions
        sessions.add(session)
        counts = self._counts
        if counts is not None and not over:
            counts[self.worker_id] = len(self.sessions)
        task = asyncio.get_running_loop().create_task(session.run())
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            sessions.discard(session)
            if counts is not None and not over:
                counts[self.worker_id] = len(self.sessions)

        task.add_done_callback(done)

    def _peer_socket(self, worker_id: int) -> Path:
        assert self.peer_dir is not None
        return self.peer_dir / f"cancel-{worker_id}.sock"

    def _accept_peer(self, ep: Endpoint) -> None:
        task = asyncio.get_running_loop().create_task(self._peer_cancel(ep))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _peer_cancel(self, ep: Endpoint) -> None:
        """A cancel forwarded by a sibling worker: one startup packet, handled locally only."""
        reader = StartupReader()
        try:
            async with asyncio.timeout(5):
                packet = None
                while packet is None:
                    reader.feed(await ep.read())
                    packet = reader.next_packet()
            if isinstance(packet, CancelRequest):
                await self.handle_cancel(packet, forwarded=True)
        except (ConnectionClosed, ProtocolViolation, TimeoutError):
            pass
        finally:
            ep.close()

    async def _forward_cancel(self, req: CancelRequest, worker_id: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(5):
                path = str(self._peer_socket(worker_id))
                _, ep = await loop.create_unix_connection(Endpoint, path)
                ep.write(req.encode())
                try:
                    await ep.read()  # the sibling closes when done
                except ConnectionClosed:
                    pass
        except (OSError, TimeoutError) as e:
            logs.warning("cancel.peer_unreachable", worker=worker_id, error=type(e).__name__)

    async def handle_cancel(self, req: CancelRequest, forwarded: bool = False) -> None:
        owner = CancelRegistry.worker_of(req.pid)
        if owner != self.worker_id and self.peer_dir is not None and not forwarded:
            await self._forward_cancel(req, owner)
            return
        action = self.cancels.lookup(req.pid, req.secret)
        if action is None:
            logs.info("cancel.unknown_key", worker=self.worker_id)
            return
        try:
            await action()
        except (OSError, TimeoutError, ConnectionClosed, up.UpstreamRefused) as e:
            logs.warning("cancel.forward_failed", error=type(e).__name__)

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let sessions finish for `drain_timeout`, then end the rest."""
        if drain_timeout is None:
            drain_timeout = self.config.listen.drain_timeout
        if self._server is not None:
            self._server.close()
        if self.bundles is not None:
            await self.bundles.stop()
        if self._peer_server is not None:
            self._peer_server.close()
        if self._admin_peer is not None:
            self._admin_peer.close()
        logs.info("gateway.draining", worker=self.worker_id, sessions=len(self.sessions))
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_timeout)
            if pending:
                for s in list(self.sessions):
                    s.terminate("57P01", "terminating connection due to gateway shutdown")
                await asyncio.wait(pending, timeout=5)
        if self.admin is not None:
            await self.admin.stop()
        if self.admin_http is not None:
            await self.admin_http.stop()
        if self.approvals is not None:
            await self.approvals.close()
        if self.audit is not None:
            try:
                self.audit.append(records.gateway_stop(
                    reason="shutdown", sessions_open=len(self.sessions),
                    uptime_us=int((time.monotonic() - self._started_at) * 1e6)))
            except (AuditError, AuditUnavailable) as e:
                logs.error("audit.stop_record_failed", error=str(e))
            # The final checkpoint seals the chain; close() blocks on the sink.
            await asyncio.get_running_loop().run_in_executor(None, self.audit.close, 10.0)
        logs.info("gateway.stopped", worker=self.worker_id)


def _requester(req: Mapping[str, Any]) -> AuditContext | None:
    """The requesting session's who and where as an approval's summary carries them: its
    session id, identity and connection (the rest of its where is in its session.start
    and approval.requested records: the request may be resolved by another worker or
    gateway, which never saw the session). None when the summary names no session."""
    session = req.get("session_id")
    if not session:
        return None
    return AuditContext.build(session=str(session), subject=req.get("subject"),
                              issuer=req.get("issuer"), groups=req.get("groups") or (),
                              connection=req.get("connection"))


class CannotListen(Exception):
    """A configured address cannot be listened on (taken, not this host's): which
    setting, and why, for the operator."""

    def __init__(self, key: str, host: str, port: int, error: OSError) -> None:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"cannot listen on {address} ({key}): {error.strerror or error}")
        self.key, self.address = key, address


@contextlib.asynccontextmanager
async def _listening(key: str, host: str, port: int) -> AsyncIterator[None]:
    try:
        yield
    except OSError as e:
        raise CannotListen(key, host, port, e) from None
