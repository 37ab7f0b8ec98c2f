"""Running the gateway's own queries upstream (catalog metadata), on a private connection.

The gateway never borrows a client's session for its own reads: a client's transaction,
search_path or failed state must not change what the gateway learns, and the gateway's
reads must not show up in the client's results.
"""

from __future__ import annotations

import asyncio

from gateway.wire import backend as be
from gateway.wire.codec import cstr, frame
from gateway.wire.framing import MessageFramer

from . import upstream as up
from .endpoint import ConnectionClosed, Endpoint

Rows = list[tuple[str | None, ...]]


class UpstreamQueryError(Exception):
    pass


async def run_queries(target: up.UpstreamTarget, queries: dict[str, str],
                      time_limit: float = 30.0) -> dict[str, Rows]:
    """Runs each query with the simple protocol, text results; returns rows by query name."""
    async with asyncio.timeout(time_limit):
        link = await up.connect(target, {"application_name": "pgwarden-catalog"})
        ep = link.endpoint
        try:
            out: dict[str, Rows] = {}
            framer = MessageFramer(be.BACKEND_TYPES, 256 << 20)
            pending = link.leftover
            for name, sql in queries.items():
                ep.write(frame(b"Q", cstr(sql)))
                out[name], pending = await _collect(ep, framer, pending)
            ep.write(frame(b"X", b""))
            return out
        finally:
            ep.close()


async def _collect(ep: Endpoint, framer: MessageFramer, pending: bytes) -> tuple[Rows, bytes]:
    rows: Rows = []
    error: be.ErrorResponse | None = None
    data = pending
    while True:
        if data:
            _, frames = framer.feed(data)
            for mtype, body in frames:
                msg = be.decode_backend(mtype, body)
                if isinstance(msg, be.DataRow):
                    rows.append(tuple(None if v is None else v.decode() for v in msg.values))
                elif isinstance(msg, be.ErrorResponse) and not isinstance(msg, be.NoticeResponse):
                    error = msg
                elif isinstance(msg, be.ReadyForQuery):
                    if error is not None:
                        raise UpstreamQueryError(f"{error.code}: {error.message}")
                    return rows, b""
        try:
            data = await ep.read()
        except ConnectionClosed:
            raise UpstreamQueryError("upstream closed the connection") from None
