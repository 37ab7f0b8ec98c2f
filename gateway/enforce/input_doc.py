"""The parts of the policy input (DESIGN §4) that describe who is asking and from where."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from gateway.identity.model import Identity

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def printable(value: str, limit: int = 63) -> str:
    """Client-chosen names are echoed in errors, logs and records: bound and defang them."""
    clean = "".join(ch if ch.isprintable() else "?" for ch in value[:limit])
    return clean + ("..." if len(value) > limit else "")


_ESCAPED_BYTES = re.compile(r"(?:\\x[0-9a-fA-F]{2})+")


def reported_name(value: str, limit: int = 255) -> str:
    """An application_name as the server reports it, back to what the client sent, then
    :func:`printable`. PostgreSQL writes each non-ASCII byte of it as ``\\xHH``; kept so,
    the escape's hex digits glue to any digits after it (``\\xa9`` then a card number is
    a longer number, which no PAN scan flags)."""
    unescaped = _ESCAPED_BYTES.sub(
        lambda m: bytes.fromhex(m.group().replace("\\x", "")).decode("utf-8", "replace"),
        value)
    return printable(unescaped, limit)


def networks_for(addr: str, networks: Mapping[str, Sequence[Network]]) -> list[str]:
    """Names of the configured CIDR sets containing `addr` (regopy has no net.* builtins)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return []
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return sorted(name for name, nets in networks.items()
                  if any(ip.version == n.version and ip in n for n in nets))


@dataclass(frozen=True)
class SessionFacts:
    """What stays the same for every statement of one session."""

    identity: Identity
    connection: dict[str, Any]
    session: dict[str, Any]
    identity_doc: dict[str, Any]  # built once: the engine only reads input documents

    @classmethod
    def build(cls, identity: Identity, *, session_id: str, started_at: float, name: str,
              database: str, user: str, application_name: str, client_addr: str, tls: bool,
              networks: Mapping[str, Sequence[Network]]) -> SessionFacts:
        connection = {
            "name": name, "database": database, "user": user,
            "application_name": application_name, "client_addr": client_addr, "tls": tls,
            "networks": networks_for(client_addr, networks),
        }
        session = {
            "id": session_id,
            "started_at": datetime.fromtimestamp(started_at, UTC).isoformat(
                timespec="microseconds").replace("+00:00", "Z"),
        }
        return cls(identity, connection, session, identity.to_input())

    def renamed(self, application_name: str) -> SessionFacts:
        """These facts with the session's new application_name, in a new ``connection``
        object (input documents already built keep the old one)."""
        return replace(self, connection={**self.connection,
                                         "application_name": application_name})

    def input_for(self, statement: dict[str, Any], approval: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
        return {
            "identity": self.identity_doc,
            "connection": self.connection,
            "session": self.session,
            "statement": statement,
            "approval": approval or {"granted": False, "id": None},
        }
