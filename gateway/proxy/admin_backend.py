"""The running gateway as the admin API sees it (`gateway.admin.backend.AdminBackend`).

The admin API runs in worker 0; with several workers it asks its siblings for their
sessions (and to end one) over a unix socket each worker serves in the supervisor's
private directory (``admin-<k>.sock``): one JSON request line, one JSON answer line.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from gateway.admin.backend import SessionInfo

if TYPE_CHECKING:
    from .server import GatewayServer


_PEER_TIMEOUT = 2.0


class GatewayAdminBackend:
    def __init__(self, server: GatewayServer) -> None:
        self.server = server

    async def list_sessions(self) -> Sequence[SessionInfo | Mapping[str, Any]]:
        out: list[SessionInfo | Mapping[str, Any]] = list(self._local_sessions())
        for answer in await self._ask_siblings({"op": "list"}):
            out.extend(s for s in answer.get("sessions", ()) if isinstance(s, dict))
        return out

    async def terminate_session(self, session_id: str, reason: str) -> bool:
        if self._terminate_local(session_id, reason):
            return True
        answers = await self._ask_siblings({"op": "terminate", "id": session_id,
                                            "reason": reason})
        return any(a.get("terminated") for a in answers)

    # -- between workers -------------------------------------------------------------------

    async def serve_peer(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        """A sibling's request (see the module doc)."""
        try:
            async with asyncio.timeout(_PEER_TIMEOUT):
                request = json.loads(await reader.readline() or b"{}")
            if request.get("op") == "list":
                answer: dict[str, Any] = {
                    "sessions": [asdict(s) for s in self._local_sessions()]}
            elif request.get("op") == "terminate":
                answer = {"terminated": self._terminate_local(
                    str(request.get("id")), str(request.get("reason") or ""))}
            else:
                answer = {}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ValueError, OSError):
            pass
        finally:
            writer.close()

    async def _ask_siblings(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        server = self.server
        if server.peer_dir is None:
            return []
        answers = []
        for k in range(server.config.listen.workers):
            if k == server.worker_id:
                continue
            path = str(server.peer_dir / f"admin-{k}.sock")
            try:
                async with asyncio.timeout(_PEER_TIMEOUT):
                    reader, writer = await asyncio.open_unix_connection(path)
                    writer.write(json.dumps(request).encode() + b"\n")
                    line = await reader.readline()
                    writer.close()
                answer = json.loads(line or b"{}")
                if isinstance(answer, dict):
                    answers.append(answer)
            except (TimeoutError, ValueError, OSError):
                continue  # a sibling that is gone or busy: its sessions are not listed
        return answers

    def _local_sessions(self) -> list[SessionInfo]:
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

    def _terminate_local(self, session_id: str, reason: str) -> bool:
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
