"""One end of a TCP (or TLS) connection, as an asyncio Protocol.

Two modes, because the two phases of a session want different shapes: the handshake is
a conversation (awaitable reads), the relay is a pump (callbacks, no task switch per
chunk). `on_data` switches from the first to the second.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable


class ConnectionClosed(Exception):
    pass


class TlsHandshakeFailed(ConnectionClosed):
    """The peer did not complete a TLS handshake; the reason is an exception class name."""


class Endpoint(asyncio.Protocol):
    def __init__(self, on_connect: Callable[[Endpoint], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.peer: Endpoint | None = None
        self.on_data: Callable[[bytes], None] | None = None
        # What a failing on_data means (a bug, or bytes nobody foresaw): the relay ends
        # that one session. Without it the exception reaches the event loop's handler.
        self.on_error: Callable[[Exception], None] | None = None
        self.on_close: Callable[[], None] | None = None
        self._on_connect = on_connect
        self._buf = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        # Why reading is paused (the peer's buffer is full, a backlog, requests in flight):
        # it resumes only once no reason is left.
        self._holds: set[str] = set()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the Transport interface without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        if self._on_connect is not None:
            self._on_connect(self)

    def data_received(self, data: bytes) -> None:
        on_data = self.on_data
        if on_data is not None:
            try:
                on_data(data)
            except Exception as e:
                if self.on_error is None:
                    raise
                self.on_error(e)
            return
        self._buf += data
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport; half-open sessions are not part of the protocol

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()
        if self.on_close is not None:
            cb, self.on_close = self.on_close, None
            cb()

    def pause_writing(self) -> None:
        # Our write buffer is full: stop reading from the side that fills it.
        if self.peer is not None:
            self.peer.hold_reading("peer_full")

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.release_reading("peer_full")

    def hold_reading(self, reason: str) -> None:
        """Stop reading for `reason` (until release_reading of every reason held)."""
        if not self._holds and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._holds.add(reason)

    def release_reading(self, reason: str) -> None:
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        if not self._holds and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # handshake-phase API
    async def read(self) -> bytes:
        while not self._buf:
            if self.closed:
                raise ConnectionClosed()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def take_buffered(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not self.closed and not t.is_closing():
            t.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def start_tls(
        self, context: ssl.SSLContext, server_side: bool,
        server_hostname: str | None = None, handshake_timeout: float = 10.0,
    ) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(
                self.transport, self, context, server_side=server_side,
                server_hostname=server_hostname, ssl_handshake_timeout=handshake_timeout,
            )
        except (ssl.SSLError, OSError) as e:
            # A failed handshake closes the raw transport behind our back.
            self.closed = True
            self.abort()
            raise TlsHandshakeFailed(type(e).__name__) from None
        if new is None:
            self.closed = True
            raise ConnectionClosed()
        self.transport = new  # type: ignore[assignment]

    def extra_info(self, name: str) -> object:
        return None if self.transport is None else self.transport.get_extra_info(name)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
