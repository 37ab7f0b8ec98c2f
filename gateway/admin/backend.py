"""What the admin API needs from the running gateway (sessions and the policy bundle).

The gateway implements :class:`AdminBackend`; the admin servicer never reaches into
the proxy or the reloader directly. Each method may be a coroutine or a plain
function (the servicer awaits whatever is awaitable). Shapes follow the existing
objects: ``bundle_status()`` returns :meth:`BundleReloader.status` 's dict and
``reload_bundle()`` a :class:`~gateway.bundle.reloader.ReloadResult` (e.g. ``await
server.bundles.reload("admin")``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["AdminBackend", "SessionInfo"]


@dataclass(frozen=True)
class SessionInfo:
    id: str
    subject: str
    issuer: str
    connection: str
    client_addr: str | None = None
    application_name: str | None = None
    started_at: float | None = None  # epoch seconds
    statements: int = 0
    state: str = ""  # e.g. idle | active | held
    worker: int = 0


@runtime_checkable
class AdminBackend(Protocol):
    async def list_sessions(self) -> Sequence[SessionInfo | Mapping[str, Any]]:
        """Every open client session (of every worker, if the gateway can)."""
        ...

    async def terminate_session(self, session_id: str, reason: str) -> bool:
        """End a session (FATAL to its client); False when no such session is open."""
        ...

    def bundle_status(self) -> Mapping[str, Any]:
        """``BundleReloader.status()``: location, revision, sha256, activated_at,
        activations, rejections, not_modified, failures."""
        ...

    async def reload_bundle(self) -> Any:
        """``await reloader.reload("admin")`` → ReloadResult (status, trigger, revision,
        sha256, reason, file)."""
        ...
