"""The admin endpoints: the gRPC server (Admin + grpc.health.v1) and the HTTP one.

Both run on the gateway's event loop (grpc.aio works on asyncio and uvloop)::

    admin = AdminServer.from_config(config.admin, verifier=verifier, approvals=approvals,
                                    backend=backend, health=health)
    port = await admin.start()
    ...
    await admin.stop()

TLS is used when ``admin.tls`` names a certificate and key; otherwise the port is
plaintext (bind it to loopback or a private network: tokens travel in metadata).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from gateway import logs
from gateway.approvals import ApprovalService

from . import admin_pb2_grpc, health_pb2_grpc
from .backend import AdminBackend
from .health import Health, HealthServicer
from .httpd import AdminHttpServer, GatewayView
from .metrics import REGISTRY, Registry
from .servicer import SERVICE_NAME, AdminServicer

__all__ = ["AdminServer", "http_server_from_config"]

HEALTH_SERVICE_NAME = "grpc.health.v1.Health"


class AdminServer:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        verifier: Any,
        approvals: ApprovalService,
        backend: AdminBackend,
        admin_groups: Iterable[str] = (),
        tls: Any = None,  # an object with .cert and .key paths (config TlsFiles)
        health: Health | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.health = health or Health()
        self.servicer = AdminServicer(verifier=verifier, approvals=approvals, backend=backend,
                                      admin_groups=admin_groups, on_event=on_event)
        self.health_servicer = HealthServicer(self.health, services=(SERVICE_NAME,))
        self._server: grpc.aio.Server | None = None

    @classmethod
    def from_config(cls, admin: Any, **kwargs: Any) -> AdminServer:
        """From the ``admin:`` section (``grpc`` (host, port), optional ``tls`` and
        ``admin_groups``)."""
        if getattr(admin, "grpc", None) is None:
            raise ValueError("admin.grpc is not configured")
        host, port = admin.grpc
        kwargs.setdefault("tls", getattr(admin, "tls", None))
        kwargs.setdefault("admin_groups", getattr(admin, "admin_groups", ()))
        return cls(host, port, **kwargs)

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", 1 << 20),
            ("grpc.so_reuseport", 0),
        ])
        admin_pb2_grpc.add_AdminServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health_servicer, server)
        address = f"[{self.host}]:{self.port}" if ":" in self.host else \
            f"{self.host}:{self.port}"
        try:
            if self.tls is not None:
                bound = server.add_secure_port(address, self._credentials())
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as e:  # grpc's "Failed to bind to address ..."
            raise OSError(str(e).split(";")[0]) from None
        if not bound:
            raise OSError("the port cannot be bound")
        await server.start()
        self._server = server
        self.port = bound
        logs.info("admin.grpc_listening", address=f"{self.host}:{bound}",
                  tls=self.tls is not None)
        return bound

    def _credentials(self) -> grpc.ServerCredentials:
        key, cert = Path(self.tls.key).read_bytes(), Path(self.tls.cert).read_bytes()
        return grpc.ssl_server_credentials([(key, cert)])

    async def stop(self, grace: float = 2.0) -> None:
        if self._server is not None:
            self.health.shutting_down = True
            await self._server.stop(grace)
            self._server = None


def http_server_from_config(admin: Any, *, health: Health, registry: Registry = REGISTRY,
                            gateway: GatewayView | None = None) -> AdminHttpServer | None:
    """The ``admin.http`` endpoint, or None when it is not configured."""
    if getattr(admin, "http", None) is None:
        return None
    host, port = admin.http
    return AdminHttpServer(host, port, health=health, registry=registry, gateway=gateway)
