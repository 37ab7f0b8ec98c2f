"""The running gateway as the admin API sees it (`gateway.admin.backend.AdminBackend`).

The admin API runs in worker 0; with several workers it asks its siblings for their
sessions (and to end one), their metrics and health checks, and to reload the policy
bundle, over a unix socket each worker serves in the supervisor's private directory
(``admin-<k>.sock``): one JSON request line, one JSON answer line.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from gateway.admin import metrics
from gateway.admin.backend import SessionInfo

if TYPE_CHECKING:
    from .server import GatewayServer


_PEER_TIMEOUT = 2.0
_RELOAD_TIMEOUT = 60.0  # a sibling's reload fetches, verifies and compiles a bundle
# The worse of two workers' reload outcomes (the gateway's is its worst worker's).
_RELOAD_RANK = {"unchanged": 0, "activated": 1, "rejected": 2, "unavailable": 3}


class GatewayAdminBackend:
    def __init__(self, server: GatewayServer) -> None:
        self.server = server

    async def list_sessions(self) -> Sequence[SessionInfo | Mapping[str, Any]]:
        out: list[SessionInfo | Mapping[str, Any]] = list(self._local_sessions())
        for answer in (await self._ask_siblings({"op": "list"})).values():
            out.extend(s for s in answer.get("sessions", ()) if isinstance(s, dict))
        return out

    async def terminate_session(self, session_id: str, reason: str) -> bool:
        if self._terminate_local(session_id, reason):
            return True
        answers = await self._ask_siblings({"op": "terminate", "id": session_id,
                                            "reason": reason})
        return any(a.get("terminated") for a in answers.values())

    # -- between workers -------------------------------------------------------------------

    async def serve_peer(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        """A sibling's request (see the module doc)."""
        try:
            async with asyncio.timeout(_PEER_TIMEOUT):
                request = json.loads(await reader.readline() or b"{}")
            op = request.get("op")
            if op == "list":
                answer: dict[str, Any] = {
                    "sessions": [asdict(s) for s in self._local_sessions()]}
            elif op == "terminate":
                answer = {"terminated": self._terminate_local(
                    str(request.get("id")), str(request.get("reason") or ""))}
            elif op == "metrics":
                answer = {"metrics": metrics.REGISTRY.snapshot()}
            elif op == "health":
                health = self.server.health  # (None until this worker has started)
                ok, checks = health.status() if health is not None else (False, {})
                answer = {"ok": ok, "checks": checks}
            elif op == "reload":
                answer = {"result": await self._reload_local()}
            else:
                answer = {}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ValueError, OSError):
            pass
        finally:
            writer.close()

    async def _ask_siblings(self, request: dict[str, Any], wait: float = _PEER_TIMEOUT
                            ) -> dict[int, dict[str, Any]]:
        """Every sibling's answer by its worker id, asked all at once; one that is gone or
        busy has none."""
        server = self.server
        if server.peer_dir is None:  # (one worker: no siblings)
            return {}
        peer_dir = server.peer_dir

        async def ask(k: int) -> dict[str, Any] | None:
            try:
                async with asyncio.timeout(wait):
                    reader, writer = await asyncio.open_unix_connection(
                        str(peer_dir / f"admin-{k}.sock"))
                    writer.write(json.dumps(request).encode() + b"\n")
                    line = await reader.readline()
                    writer.close()
                answer = json.loads(line or b"{}")
            except (TimeoutError, ValueError, OSError):
                return None
            return answer if isinstance(answer, dict) else None

        siblings = [k for k in range(server.config.listen.workers) if k != server.worker_id]
        answers = await asyncio.gather(*(ask(k) for k in siblings))
        return {k: a for k, a in zip(siblings, answers, strict=True) if a is not None}

    # -- the whole gateway's metrics and health (admin.http), with several workers -----------

    async def metrics(self) -> str:
        snapshots: dict[int, Any] = {self.server.worker_id: metrics.REGISTRY.snapshot()}
        for k, answer in (await self._ask_siblings({"op": "metrics"})).items():
            if isinstance(answer.get("metrics"), dict):
                snapshots[k] = answer["metrics"]
        return metrics.REGISTRY.render_workers(snapshots)

    async def health(self) -> tuple[bool, dict[str, bool]]:
        """Every worker's checks (`name@k`); a worker that does not answer fails."""
        ok, local = self.server.health.status()
        checks = {f"{name}@{self.server.worker_id}": good for name, good in local.items()}
        answered = {self.server.worker_id}
        for k, answer in (await self._ask_siblings({"op": "health"})).items():
            if not isinstance(answer.get("checks"), dict):
                continue
            answered.add(k)
            if answer.get("ok") is not True:
                ok = False
                checks[f"worker@{k}"] = False  # (also one with no check yet: starting)
            checks.update({f"{name}@{k}": good is True
                           for name, good in answer["checks"].items()})
        for k in range(self.server.config.listen.workers):
            if k not in answered:
                ok, checks[f"worker@{k}"] = False, False
        return ok, checks

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
        """Reload every worker's bundle (each decides with its own engine, as for SIGHUP):
        the gateway's outcome is its worst worker's, naming that worker when they differ."""
        if self.server.bundles is None:
            raise RuntimeError("no policy bundle is configured (policy.enforce: false)")
        local, answers = await asyncio.gather(
            self._reload_local(), self._ask_siblings({"op": "reload"}, _RELOAD_TIMEOUT))
        outcomes = {self.server.worker_id: local}
        for k, answer in answers.items():
            if isinstance(answer.get("result"), dict):
                outcomes[k] = answer["result"]
        for k in range(self.server.config.listen.workers):
            outcomes.setdefault(k, {"status": "unavailable", "trigger": "admin",
                                    "reason": "the worker did not answer"})
        worst = max(outcomes, key=lambda k: _RELOAD_RANK.get(
            str(outcomes[k].get("status")), 3))
        result = dict(outcomes[worst])
        if len({str(o.get("status")) for o in outcomes.values()}) > 1:
            result["reason"] = f"worker {worst}: {result.get('reason') or result['status']}"
        return result

    async def _reload_local(self) -> dict[str, Any]:
        bundles = self.server.bundles
        if bundles is None:
            return {"status": "unavailable", "trigger": "admin",
                    "reason": "no policy bundle is configured"}
        return (await bundles.reload("admin")).to_dict()
