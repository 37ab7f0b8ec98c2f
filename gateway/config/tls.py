"""Loading a server's certificate and key: for the listener, and to check a config."""

from __future__ import annotations

import ssl
from pathlib import Path


def load_server_pair(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Load a certificate chain and its key; an encrypted key fails (OpenSSL would ask
    for its passphrase on the terminal, and a service has none)."""
    ctx.load_cert_chain(str(cert), str(key), password=_no_passphrase)


def _no_passphrase() -> bytes:
    raise ValueError("the key is encrypted: give the gateway an unencrypted key")
