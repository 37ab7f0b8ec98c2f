"""Opening an authenticated connection to the upstream PostgreSQL server."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from gateway.wire import backend as be
from gateway.wire.codec import frame
from gateway.wire.framing import MessageFramer
from gateway.wire.startup import CancelRequest, SSLRequest

from .endpoint import ConnectionClosed, Endpoint, TlsHandshakeFailed
from .upstream_login import UpstreamLogin, UpstreamRefused

_BACKEND = be.BACKEND_TYPES
_MAX_LOGIN_MESSAGE = 1 << 20


@dataclass(frozen=True)
class UpstreamTarget:
    """Where and how to reach one configured connection."""

    host: str
    port: int
    database: str
    user: str
    password: str | None
    tls: str  # disable | prefer | require | verify-full
    ca_file: str | None = None
    connect_timeout: float = 10.0


@dataclass
class UpstreamLink:
    endpoint: Endpoint
    parameters: list[tuple[str, str]]
    key: be.BackendKeyData | None
    status: str
    tls: bool
    leftover: bytes


def _client_context(target: UpstreamTarget) -> ssl.SSLContext:
    if target.tls == "verify-full":
        ctx = ssl.create_default_context(cafile=target.ca_file)
    else:
        # libpq's "require": encrypt, but do not authenticate the server certificate.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def _open(target: UpstreamTarget) -> tuple[Endpoint, bool]:
    """TCP connect and negotiate TLS per the connection's mode. Returns (endpoint, tls)."""
    loop = asyncio.get_running_loop()
    _, ep = await loop.create_connection(Endpoint, target.host, target.port)
    if target.tls == "disable":
        return ep, False
    ep.write(SSLRequest().encode())
    answer = await ep.read()
    if answer[:1] == b"S":
        if len(answer) != 1:
            # Bytes after 'S' arrived unencrypted: a man in the middle (CVE-2021-23222).
            ep.abort()
            raise UpstreamRefused("upstream sent unencrypted data after accepting TLS")
        await ep.start_tls(_client_context(target), server_side=False,
                           server_hostname=target.host,
                           handshake_timeout=target.connect_timeout)
        return ep, True
    if answer[:1] == b"N" and len(answer) == 1:
        if target.tls in ("require", "verify-full"):
            ep.abort()
            raise UpstreamRefused("upstream does not support TLS and the connection requires it")
        return ep, False
    ep.abort()
    raise UpstreamRefused("upstream answered the TLS request with an invalid response")


async def connect(target: UpstreamTarget, params: dict[str, str]) -> UpstreamLink:
    async with asyncio.timeout(target.connect_timeout):
        try:
            ep, tls = await _open(target)
        except TlsHandshakeFailed as e:
            # Keep upstream failures apart from the client's own (ConnectionClosed).
            raise UpstreamRefused(f"TLS handshake with upstream failed ({e})") from None
        except ConnectionClosed:
            raise UpstreamRefused("upstream closed the connection during TLS negotiation") from None
        try:
            return await _login(ep, tls, target, params)
        except BaseException:
            ep.abort()
            raise


async def _login(
    ep: Endpoint, tls: bool, target: UpstreamTarget, params: dict[str, str]
) -> UpstreamLink:
    binding = None
    if tls:
        sslobj = ep.extra_info("ssl_object")
        if sslobj is not None:
            binding = ("tls-server-end-point", sslobj)
    login = UpstreamLogin(target.user, target.database, target.password, params, tls, binding)  # type: ignore[arg-type]
    ep.write(login.startup())
    framer = MessageFramer(_BACKEND, _MAX_LOGIN_MESSAGE)
    while True:
        try:
            data = await ep.read()
        except ConnectionClosed:
            raise UpstreamRefused("upstream closed the connection during login") from None
        _, frames = framer.feed(data)
        for i, (mtype, body) in enumerate(frames):
            reply = login.receive(mtype, body)
            if reply:
                ep.write(reply)
            if login.done:
                rest = b"".join(frame(bytes([t]), b) for t, b in frames[i + 1 :])
                leftover = rest + framer.take_rest()
                assert login.status is not None
                return UpstreamLink(ep, login.parameters, login.key, login.status, tls, leftover)


async def send_cancel(target: UpstreamTarget, key: be.BackendKeyData) -> None:
    """Forward a cancel to the upstream: a fresh connection, one packet, close."""
    async with asyncio.timeout(target.connect_timeout):
        ep, _ = await _open(target)
        ep.write(CancelRequest(key.pid, key.secret).encode())
        try:
            await ep.read()  # the server closes without answering
        except ConnectionClosed:
            pass
        finally:
            ep.close()
