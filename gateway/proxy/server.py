"""The listener: accepts clients, runs their sessions, drains on shutdown."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

from gateway import logs
from gateway.wire.startup import CancelRequest

from . import upstream as up
from .cancel import CancelRegistry
from .endpoint import Endpoint
from .session import Session
from .tls import server_context

if TYPE_CHECKING:
    from gateway.config.model import GatewayConfig
    from gateway.identity.verifier import JwtVerifier


class GatewayServer:
    def __init__(self, config: GatewayConfig, verifier: JwtVerifier, worker_id: int = 0) -> None:
        self.config = config
        self.verifier = verifier
        self.worker_id = worker_id
        self.cancels = CancelRegistry(worker_id)
        tls = config.listen.tls
        self.tls_context = server_context(tls.cert, tls.key) if tls else None
        self.sessions: set[Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None
        self._targets = {
            name: up.UpstreamTarget(
                host=c.host, port=c.port, database=c.database, user=c.user,
                password=c.password.reveal() if c.password is not None else None,
                tls=c.tls, ca_file=str(c.ca_file) if c.ca_file else None,
                connect_timeout=c.connect_timeout,
            )
            for name, c in config.connections.items()
        }

    def target(self, name: str) -> up.UpstreamTarget:
        return self._targets[name]

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._server.sockets) if self._server else []

    async def start(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        if sock is not None:
            self._server = await loop.create_server(self._protocol, sock=sock, backlog=1024)
        else:
            self._server = await loop.create_server(
                self._protocol, listen.host, listen.port, backlog=1024,
                reuse_port=listen.workers > 1,
            )
        addrs = [s.getsockname() for s in self._server.sockets]
        logs.info("gateway.listening", worker=self.worker_id,
                  addresses=[f"{a[0]}:{a[1]}" for a in addrs], tls=self.tls_context is not None)

    def _protocol(self) -> Endpoint:
        return Endpoint(on_connect=self._accept)

    def _accept(self, ep: Endpoint) -> None:
        if len(self.sessions) >= self.config.listen.max_connections:
            from gateway.wire.backend import ErrorResponse

            ep.write(ErrorResponse.build(
                "53300", "sorry, too many clients already", "FATAL").encode())
            ep.close()
            return
        if ep.transport is not None:
            sock = ep.transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(self, ep)
        self.sessions.add(session)
        task = asyncio.get_running_loop().create_task(session.run())
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self.sessions.discard(session)

        task.add_done_callback(done)

    async def handle_cancel(self, req: CancelRequest) -> None:
        action = self.cancels.lookup(req.pid, req.secret)
        if action is None:
            logs.info("cancel.unknown_key", worker=self.worker_id)
            return
        try:
            await action()
        except (OSError, TimeoutError) as e:
            logs.warning("cancel.forward_failed", error=type(e).__name__)

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let sessions finish for `drain_timeout`, then end the rest."""
        if drain_timeout is None:
            drain_timeout = self.config.listen.drain_timeout
        if self._server is not None:
            self._server.close()
        logs.info("gateway.draining", worker=self.worker_id, sessions=len(self.sessions))
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_timeout)
            if pending:
                for s in list(self.sessions):
                    s.terminate("57P01", "terminating connection due to gateway shutdown")
                await asyncio.wait(pending, timeout=5)
        logs.info("gateway.stopped", worker=self.worker_id)
