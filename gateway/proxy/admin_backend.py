"""The running gateway as the admin API sees it (`gateway.admin.backend.AdminBackend`).

Sessions are this worker's: the admin API runs in worker 0, so with several workers
ListSessions / TerminateSession reach only the sessions that worker accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gateway.admin.backend import SessionInfo

if TYPE_CHECKING:
    from .server import GatewayServer


class GatewayAdminBackend:
    def __init__(self, server: GatewayServer) -> None:
        self.server = server

    async def list_sessions(self) -> Sequence[SessionInfo]:
        out = []
        for s in list(self.server.sessions):
            if s.identity is None:
                continue
            gate = s.relay.gate if s.relay is not None else None
            held = getattr(gate, "held", None)
            out.append(SessionInfo(
                id=s.id, subject=s.identity.subject, issuer=s.identity.issuer,
                connection=s.connection_name or "", client_addr=s.client_addr,
                application_name=s.application_name, started_at=s.started_at,
                statements=getattr(gate, "decisions", 0),
                state="held" if held else "open", worker=self.server.worker_id))
        return out

    async def terminate_session(self, session_id: str, reason: str) -> bool:
        for s in list(self.server.sessions):
            if s.id == session_id:
                s.terminate("57P01", f"terminated by an administrator: {reason}")
                return True
        return False

    def bundle_status(self) -> Mapping[str, Any]:
        bundles = self.server.bundles
        return bundles.status() if bundles is not None else {"location": None}

    async def reload_bundle(self) -> Any:
        bundles = self.server.bundles
        if bundles is None:
            raise RuntimeError("no policy bundle is configured (policy.enforce: false)")
        return await bundles.reload("admin")
