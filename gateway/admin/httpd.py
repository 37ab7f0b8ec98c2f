"""``admin.http``: ``GET /healthz`` and ``GET /metrics`` over plain asyncio streams.

Deliberately tiny: HTTP/1.0-style, one request per connection, no body accepted, the
request head bounded in size (8 KiB) and time (5 s). ``/healthz`` answers 200 ``ok``
or 503 with the failing checks; ``/metrics`` the registry in Prometheus text format.
HEAD is answered like GET without the body; other methods get 405, other paths 404.
Nothing here needs a token: bind it to a private address.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from gateway import logs

from .health import Health
from .metrics import CONTENT_TYPE, REGISTRY, Registry

__all__ = ["AdminHttpServer"]

MAX_HEAD = 8192
HEAD_TIMEOUT = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


class GatewayView(Protocol):
    """The gateway's metrics and health across its worker processes."""

    async def metrics(self) -> str: ...
    async def health(self) -> tuple[bool, dict[str, bool]]: ...


class AdminHttpServer:
    def __init__(self, host: str, port: int, *, health: Health,
                 registry: Registry = REGISTRY, gateway: GatewayView | None = None) -> None:
        self.host = host
        self.port = port
        self.health = health
        self.registry = registry
        # With several workers, the whole gateway's metrics and health (not this worker's)
        self.gateway = gateway
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        logs.info("admin.http_listening", address=f"{self.host}:{self.port}")
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body, head_only = await self._respond(reader)
            headers = (f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                       f"Content-Type: {ctype}\r\n"
                       f"Content-Length: {len(body)}\r\n"
                       "Cache-Control: no-store\r\n"
                       "Connection: close\r\n\r\n")
            writer.write(headers.encode("ascii") + (b"" if head_only else body))
            await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        text = "text/plain; charset=utf-8"
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except TimeoutError:
            return 408, text, b"request timeout\n", False
        except asyncio.LimitOverrunError:
            return 431, text, b"request head too large\n", False
        except asyncio.IncompleteReadError as exc:
            head = exc.partial
            if not head.strip():
                raise ConnectionError("empty request") from None
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, text, b"bad request\n", False
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, text, b"method not allowed\n", False
        head_only = method == b"HEAD"
        if target == b"/healthz":
            ok, checks = (self.health.status() if self.gateway is None
                          else await self.gateway.health())
            if ok:
                return 200, text, b"ok\n", head_only
            failing = ", ".join(sorted(name for name, good in checks.items() if not good))
            return 503, text, f"unhealthy: {failing}\n".encode(), head_only
        if target == b"/metrics":
            text_out = self.registry.render() if self.gateway is None \
                else await self.gateway.metrics()
            return 200, CONTENT_TYPE, text_out.encode("utf-8"), head_only
        return 404, text, b"not found\n", head_only
