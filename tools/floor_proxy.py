"""The floor under any Python proxy on this machine: TLS towards the client, bytes pumped
both ways, nothing else.

    python tools/floor_proxy.py --cert C --key K --port 6500 --upstream-port 5432

It answers the client's SSLRequest, terminates TLS with uvloop (as pgwarden does) and
pumps bytes to and from a PostgreSQL server in plaintext: no framing, no policy, no
audit, no safety net, and it must never carry real data. `tools/bench.py --floor`
measures it beside pgwarden, so that pgwarden's ratios can be read against what the
same runtime costs with no work at all.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

import uvloop


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.client.transport is not None:
            self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, context: ssl.SSLContext, upstream_port: int) -> None:
        self.context = context
        self.upstream_port = upstream_port
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.early: list[bytes] = []
        self.tls = False
        self.starting: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.tls:  # the SSLRequest: say yes, and speak TLS from here on
            self.tls = True
            assert self.transport is not None
            self.transport.write(b"S")
            self.starting = asyncio.ensure_future(self._start())
            return
        if self.upstream is None or self.upstream.transport is None:
            self.early.append(data)
        else:
            self.upstream.transport.write(data)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.transport is not None
        try:
            tls = await loop.start_tls(self.transport, self, self.context, server_side=True)
            upstream = _Upstream(self)
            await loop.create_connection(lambda: upstream, "127.0.0.1", self.upstream_port)
        except (OSError, ssl.SSLError):
            self.transport.close()
            return
        self.transport = tls  # type: ignore[assignment]
        self.upstream = upstream
        assert upstream.transport is not None
        for data in self.early:
            upstream.transport.write(data)
        self.early.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def _serve(args: argparse.Namespace) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: _Client(context, args.upstream_port), "127.0.0.1",
                             args.port)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream-port", type=int, required=True)
    uvloop.run(_serve(p.parse_args()))


if __name__ == "__main__":
    main()
