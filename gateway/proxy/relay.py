"""The pump between an authenticated client and its upstream connection.

Client bytes are framed whole (the place where later layers decide per statement);
upstream bytes are forwarded as they arrive while an observer follows message
boundaries, so an unmasked result costs no per-row Python work beyond a header skip.
"""

from __future__ import annotations

import asyncio

from gateway import logs
from gateway.wire import backend as be
from gateway.wire.errors import ProtocolViolation
from gateway.wire.framing import BackendObserver, MessageFramer

from .endpoint import Endpoint

CLIENT_TYPES = frozenset(b"QPBDECSHXdcfF")
_X, _Z, _R, _K, _E = (ord(c) for c in "XZRKE")
OBSERVED = frozenset((_Z, _R, _K))


class Relay:
    def __init__(self, session_id: str, client: Endpoint, upstream: Endpoint,
                 max_message_size: int) -> None:
        self.session_id = session_id
        self.client = client
        self.upstream = upstream
        self.framer = MessageFramer(CLIENT_TYPES, max_message_size)
        self.observer = BackendObserver(be.BACKEND_TYPES, OBSERVED, max_message_size)
        self.transaction_status = "I"
        self.messages_from_client = 0
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def start(self, client_leftover: bytes = b"", upstream_leftover: bytes = b"") -> None:
        c, u = self.client, self.upstream
        c.peer, u.peer = u, c
        c.on_data, u.on_data = self.from_client, self.from_upstream
        c.on_close, u.on_close = self._client_gone, self._upstream_gone
        if upstream_leftover:
            self.from_upstream(upstream_leftover)
        if client_leftover:
            self.from_client(client_leftover)
        if c.closed:
            self._client_gone()
        elif u.closed:
            self._upstream_gone()

    def from_client(self, data: bytes) -> None:
        try:
            raw, frames = self.framer.feed(data)
        except ProtocolViolation as e:
            self._fail_client(e.sqlstate, str(e))
            return
        if not frames:
            return
        self.messages_from_client += len(frames)
        self.upstream.write(raw)
        if frames[-1][0] == _X or any(t == _X for t, _ in frames):
            self._finish("client terminated")

    def from_upstream(self, data: bytes) -> None:
        try:
            events = self.observer.feed(data)
        except ProtocolViolation:
            self._fail_upstream("upstream sent an invalid message")
            return
        for mtype, body in events:
            if mtype == _Z:
                self.transaction_status = chr(body[0]) if body else "?"
            else:  # R or K after login: the upstream is not behaving like PostgreSQL
                self._fail_upstream("upstream sent an unexpected message")
                return
        self.client.write(data)

    def terminate(self, code: str, message: str) -> None:
        """End the session from the gateway's side (shutdown, admin action)."""
        if self.observer.at_boundary():
            self.client.write(be.ErrorResponse.build(code, message, "FATAL").encode())
        if not self.framer.has_partial():
            self.upstream.write(b"X\0\0\0\4")
        self._finish(message)

    def _fail_client(self, code: str, message: str) -> None:
        logs.warning("session.protocol_violation", session=self.session_id, sqlstate=code,
                     reason=message)
        if self.observer.at_boundary():
            self.client.write(be.ErrorResponse.build(code, message, "FATAL").encode())
        self._finish("protocol violation")

    def _fail_upstream(self, message: str) -> None:
        logs.error("upstream.protocol_violation", session=self.session_id, reason=message)
        self.upstream.abort()
        self._upstream_gone()

    def _client_gone(self) -> None:
        if not self.upstream.closed and not self.framer.has_partial():
            self.upstream.write(b"X\0\0\0\4")
        self._finish("client disconnected")

    def _upstream_gone(self) -> None:
        if not self.client.closed and self.observer.at_boundary():
            err = be.ErrorResponse.build(
                "08006", "connection to the upstream database was lost", "FATAL"
            )
            self.client.write(err.encode())
        self._finish("upstream disconnected")

    def _finish(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)
        for ep in (self.client, self.upstream):
            ep.on_data = _discard
            ep.on_close = None
            ep.close()


def _discard(_data: bytes) -> None:
    pass
