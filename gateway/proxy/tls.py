"""TLS contexts for the client-facing listener."""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.config.tls import load_server_pair


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_server_pair(ctx, cert, key)
    # libpq 17+ offers ALPN "postgresql"; clients that offer nothing are still accepted.
    ctx.set_alpn_protocols(["postgresql"])
    return ctx
