"""The admin API end to end in-process: grpc.aio server, real JWTs (DevIssuer + JwtVerifier),
a real ApprovalService on SQLite, a fake gateway backend; the CLI; HTTP health/metrics."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.admin import (
    SessionInfo,
    admin_pb2_grpc,
    cli_client,
    health_pb2,
    health_pb2_grpc,
)
from gateway.admin import admin_pb2 as pb
from gateway.admin import metrics as m
from gateway.admin.health import Health
from gateway.admin.httpd import AdminHttpServer
from gateway.admin.server import AdminServer, http_server_from_config
from gateway.approvals import ApprovalService, SqliteStore
from gateway.bundle.reloader import ReloadResult
from gateway.config.model import AdminConfig, ProviderConfig, TlsFiles
from gateway.devtools.certs import write_self_signed
from gateway.identity.devissuer import DevIssuer, generate_issuer
from gateway.identity.verifier import JwtVerifier

ADMINS = "pgwarden-admins"
SQL = "UPDATE cards SET pan = $1 WHERE id = $2"


@dataclass
class FakeBackend:
    terminated: list[tuple[str, str]] = field(default_factory=list)
    reloads: int = 0

    async def list_sessions(self) -> list[Any]:
        return [SessionInfo(id="s-1", subject="ci-bot", issuer="https://i", connection="payments",
                            client_addr="127.0.0.1", application_name="psql",
                            started_at=1_700_000_000.0, statements=3, state="held"),
                {"id": "s-2", "subject": "etl", "issuer": "https://i", "connection": "legacy",
                 "worker": 1}]

    async def terminate_session(self, session_id: str, reason: str) -> bool:
        if session_id != "s-1":
            return False
        self.terminated.append((session_id, reason))
        return True

    def bundle_status(self) -> dict[str, Any]:  # sync, like BundleReloader.status()
        return {"location": "/b/pci.tar.gz", "revision": "r7", "sha256": "ab" * 32,
                "activated_at": 1_700_000_000.5, "activations": 2, "rejections": 1,
                "not_modified": 0, "failures": 0}

    async def reload_bundle(self) -> ReloadResult:
        self.reloads += 1
        return ReloadResult("unchanged", "admin", "r7", "ab" * 32)


@dataclass
class Env:
    dev: DevIssuer
    service: ApprovalService
    backend: FakeBackend
    server: AdminServer
    channel: grpc.aio.Channel
    stub: admin_pb2_grpc.AdminStub
    health_stub: health_pb2_grpc.HealthStub
    tmp: Path
    events: list[tuple[str, dict[str, Any]]]

    def token(self, subject: str, *groups: str, ttl: float = 600) -> str:
        return self.dev.mint(subject, groups=list(groups), ttl=ttl)

    def md(self, subject: str, *groups: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(subject, *groups)}"),)

    async def hold(self, **kw: Any) -> Any:
        kw.setdefault("approvers", ["dba"])
        return await self.service.request(
            subject="ci-bot", issuer=self.dev.issuer, groups=["ci", "dba"],
            connection="payments", session_id="s-1", sql_redacted=SQL, fingerprint="fp1",
            input_digest="d", **kw)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@contextlib.asynccontextmanager
async def admin_env(tmp: Path, *, tls: TlsFiles | None = None,
                    health: Health | None = None) -> AsyncIterator[Env]:
    dev = generate_issuer(tmp / "issuer")
    verifier = JwtVerifier([ProviderConfig(dev.issuer, ("pgwarden",), jwks_file=dev.jwks_path)])
    service = ApprovalService(SqliteStore(tmp / "approvals.db"), sweep_interval=0,
                              poll_interval=0.1)
    backend = FakeBackend()
    events: list[tuple[str, dict[str, Any]]] = []
    server = AdminServer("127.0.0.1", 0, verifier=verifier, approvals=service,
                         backend=backend, admin_groups=(ADMINS,), tls=tls, health=health,
                         on_event=lambda k, d: events.append((k, d)))
    await service.start()
    await server.start()
    if tls is None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    else:
        channel = grpc.aio.secure_channel(
            f"localhost:{server.port}",
            grpc.ssl_channel_credentials(root_certificates=tls.cert.read_bytes()))
    try:
        yield Env(dev, service, backend, server, channel, admin_pb2_grpc.AdminStub(channel),
                  health_pb2_grpc.HealthStub(channel), tmp, events)
    finally:
        await channel.close()
        await server.stop(0)
        await service.close()


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


# -- authentication ---------------------------------------------------------------------------


def test_unauthenticated_calls_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with admin_env(tmp_path) as env:
            req = pb.ListApprovalsRequest()
            err = await rpc_error(env.stub.ListApprovals(req))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token is required" in err.details()
            err = await rpc_error(env.stub.ListApprovals(
                req, metadata=(("authorization", "Basic YWxpY2U6cGFzcw=="),)))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            err = await rpc_error(env.stub.Approve(
                pb.DecideRequest(id="apr_x", reason="r"),
                metadata=(("authorization", "Bearer not.a.jwt"),)))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert err.details() == "token is malformed"
            # Another issuer's key: a forged token.
            other = generate_issuer(tmp_path / "other", issuer=env.dev.issuer)
            forged = other.mint("alice", groups=["dba", ADMINS])
            err = await rpc_error(env.stub.ListSessions(
                pb.ListSessionsRequest(), metadata=(("authorization", f"Bearer {forged}"),)))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            expired = env.dev.mint("alice", groups=["dba"], now=time.time() - 3600, ttl=60)
            err = await rpc_error(env.stub.BundleStatus(
                pb.BundleStatusRequest(), metadata=(("authorization", f"Bearer {expired}"),)))
            assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                                   "token expired")
            assert m.ADMIN_REQUESTS.value(method="ListApprovals", code="UNAUTHENTICATED") >= 2

    asyncio.run(main())


# -- approvals --------------------------------------------------------------------------------


def test_list_visibility_and_approve_rules(tmp_path: Path) -> None:
    async def main() -> None:
        async with admin_env(tmp_path) as env:
            held = await env.hold(grant_ttl=120)
            other = await env.hold(approvers=["sre"])
            waiter = asyncio.create_task(env.service.wait(held.id))

            async def listed(subject: str, *groups: str) -> list[str]:
                resp = await env.stub.ListApprovals(pb.ListApprovalsRequest(status="pending"),
                                                    metadata=env.md(subject, *groups))
                return sorted(a.id for a in resp.approvals)

            assert await listed("alice", "dba") == [held.id]
            assert await listed("mallory", "dev") == []
            assert await listed("root", ADMINS) == sorted([held.id, other.id])
            err = await rpc_error(env.stub.ListApprovals(
                pb.ListApprovalsRequest(status="bogus"), metadata=env.md("alice", "dba")))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

            resp = await env.stub.ListApprovals(pb.ListApprovalsRequest(),
                                                metadata=env.md("alice", "dba"))
            (a,) = resp.approvals
            assert (a.subject, a.connection, a.sql, a.min_approvals) == (
                "ci-bot", "payments", SQL, 1)
            assert a.requested_at.endswith("Z") and a.grant_ttl == 120

            decide = pb.DecideRequest(id=held.id, reason="ok")
            err = await rpc_error(env.stub.Approve(decide, metadata=env.md("ci-bot", "dba")))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "cannot approve it" in err.details()
            err = await rpc_error(env.stub.Approve(decide, metadata=env.md("mallory", "dev")))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "only members of dba" in err.details()
            # Admins see everything but decide nothing unless the decision named them.
            err = await rpc_error(env.stub.Approve(decide, metadata=env.md("root", ADMINS)))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            err = await rpc_error(env.stub.Approve(pb.DecideRequest(id=held.id),
                                                   metadata=env.md("alice", "dba")))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "reason is required" in err.details()
            err = await rpc_error(env.stub.Deny(pb.DecideRequest(id="apr_nope", reason="x"),
                                                metadata=env.md("alice", "dba")))
            assert err.code() == grpc.StatusCode.NOT_FOUND
            assert not waiter.done()

            ok = await env.stub.Approve(pb.DecideRequest(id=held.id, reason="ticket 42"),
                                        metadata=env.md("alice", "dba"))
            assert ok.resolved and ok.approval.status == "approved"
            assert ok.approval.resolved_by == "alice" and ok.grant.id.startswith("grt_")
            res = await asyncio.wait_for(waiter, 3)
            assert res.status == "approved" and res.reason == "ticket 42"
            err = await rpc_error(env.stub.Deny(pb.DecideRequest(id=held.id, reason="late"),
                                                metadata=env.md("bob", "dba")))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION

            # Grants: visible to approvers of that request and admins; revoked by admins.
            async def grants(subject: str, *groups: str) -> list[str]:
                resp = await env.stub.ListGrants(pb.ListGrantsRequest(),
                                                 metadata=env.md(subject, *groups))
                return [g.id for g in resp.grants]

            assert await grants("bob", "dba") == [ok.grant.id]
            assert await grants("mallory", "dev") == []
            assert await grants("root", ADMINS) == [ok.grant.id]
            revoke = pb.RevokeGrantRequest(id=ok.grant.id, reason="done")
            err = await rpc_error(env.stub.RevokeGrant(revoke, metadata=env.md("bob", "dba")))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert ADMINS in err.details()
            rv = await env.stub.RevokeGrant(revoke, metadata=env.md("root", ADMINS))
            assert rv.grant.revoked_by == "root" and rv.grant.revoke_reason == "done"
            assert await grants("root", ADMINS) == []
            err = await rpc_error(env.stub.RevokeGrant(pb.RevokeGrantRequest(id="grt_x"),
                                                       metadata=env.md("root", ADMINS)))
            assert err.code() == grpc.StatusCode.NOT_FOUND

    asyncio.run(main())


def test_min_approvals_two_through_the_api(tmp_path: Path) -> None:
    async def main() -> None:
        async with admin_env(tmp_path) as env:
            held = await env.hold(min_approvals=2)
            first = await env.stub.Approve(pb.DecideRequest(id=held.id, reason="1"),
                                           metadata=env.md("alice", "dba"))
            assert not first.resolved and first.approval.approvals == 1
            assert not first.HasField("grant")
            err = await rpc_error(env.stub.Approve(pb.DecideRequest(id=held.id, reason="1"),
                                                   metadata=env.md("alice", "dba")))
            assert err.code() == grpc.StatusCode.ALREADY_EXISTS
            second = await env.stub.Approve(pb.DecideRequest(id=held.id, reason="2"),
                                            metadata=env.md("bob", "dba"))
            assert second.resolved and second.approval.resolved_by == "alice, bob"
            assert [v.subject for v in second.approval.votes] == ["alice", "bob"]

    asyncio.run(main())


def test_watch_approvals_stream(tmp_path: Path) -> None:
    async def main() -> None:
        async with admin_env(tmp_path) as env:
            existing = await env.hold()
            stream = env.stub.WatchApprovals(pb.WatchApprovalsRequest(include_existing=True),
                                             metadata=env.md("alice", "dba"))
            it = stream.__aiter__()
            first = await asyncio.wait_for(it.__anext__(), 3)
            assert (first.kind, first.approval.id) == ("existing", existing.id)
            await env.hold(approvers=["sre"])  # not alice's: never shown to her
            new = await env.hold()
            ev = await asyncio.wait_for(it.__anext__(), 3)
            assert (ev.kind, ev.approval.id, ev.approval.status) == ("changed", new.id,
                                                                     "pending")
            await env.service.approve(new.id, _Id("bob", env.dev.issuer, ("dba",)), "ok")
            ev = await asyncio.wait_for(it.__anext__(), 3)
            assert (ev.approval.id, ev.approval.status) == (new.id, "approved")
            stream.cancel()

            # The stream ends when the caller's token expires.
            env.server.servicer.clock = lambda: time.time() + 599.7
            stream = env.stub.WatchApprovals(pb.WatchApprovalsRequest(),
                                             metadata=env.md("alice", "dba"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stream:
                    pass
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "token expired" in info.value.details()

    asyncio.run(main())


@dataclass(frozen=True)
class _Id:
    subject: str
    issuer: str
    groups: tuple[str, ...]


# -- sessions, bundle, health -----------------------------------------------------------------


def test_sessions_and_bundle(tmp_path: Path) -> None:
    async def main() -> None:
        async with admin_env(tmp_path) as env:
            user, admin = env.md("alice", "dba"), env.md("root", ADMINS)
            for call, req in [(env.stub.ListSessions, pb.ListSessionsRequest()),
                              (env.stub.TerminateSession, pb.TerminateSessionRequest(id="s-1")),
                              (env.stub.ReloadBundle, pb.ReloadBundleRequest())]:
                err = await rpc_error(call(req, metadata=user))
                assert err.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "admin groups (pgwarden-admins)" in err.details()
            assert env.backend.terminated == [] and env.backend.reloads == 0

            sessions = (await env.stub.ListSessions(pb.ListSessionsRequest(),
                                                    metadata=admin)).sessions
            assert [(s.id, s.state, s.statements, s.worker) for s in sessions] == [
                ("s-1", "held", 3, 0), ("s-2", "", 0, 1)]
            assert sessions[0].started_at == "2023-11-14T22:13:20.000Z"
            err = await rpc_error(env.stub.TerminateSession(
                pb.TerminateSessionRequest(id="s-404"), metadata=admin))
            assert err.code() == grpc.StatusCode.NOT_FOUND
            done = await env.stub.TerminateSession(
                pb.TerminateSessionRequest(id="s-1", reason="runaway"), metadata=admin)
            assert done.terminated and env.backend.terminated == [("s-1", "runaway")]
            assert env.events[-1][0] == "session_terminated"

            st = await env.stub.BundleStatus(pb.BundleStatusRequest(), metadata=user)
            assert (st.revision, st.sha256, st.activations, st.rejections) == (
                "r7", "ab" * 32, 2, 1)
            assert st.activated_at == "2023-11-14T22:13:20.500Z"
            rl = await env.stub.ReloadBundle(pb.ReloadBundleRequest(), metadata=admin)
            assert (rl.status, rl.trigger, rl.revision) == ("unchanged", "admin", "r7")
            assert env.backend.reloads == 1

    asyncio.run(main())


def test_health_service(tmp_path: Path) -> None:
    healthy = {"store": True}
    health = Health()
    health.add_check("store", lambda: healthy["store"])

    async def main() -> None:
        async with admin_env(tmp_path, health=health) as env:
            env.server.health_servicer.watch_interval = 0.05
            req = health_pb2.HealthCheckRequest
            serving = health_pb2.HealthCheckResponse.SERVING
            # No token needed: probes and load balancers call it.
            assert (await env.health_stub.Check(req())).status == serving
            assert (await env.health_stub.Check(req(service="pgwarden.admin.v1.Admin"))
                    ).status == serving
            err = await rpc_error(env.health_stub.Check(req(service="nope")))
            assert err.code() == grpc.StatusCode.NOT_FOUND
            watch = env.health_stub.Watch(req()).__aiter__()
            assert (await asyncio.wait_for(watch.__anext__(), 3)).status == serving
            healthy["store"] = False
            assert (await env.health_stub.Check(req())).status == \
                health_pb2.HealthCheckResponse.NOT_SERVING
            update = await asyncio.wait_for(watch.__anext__(), 3)
            assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
            unknown = env.health_stub.Watch(req(service="nope")).__aiter__()
            assert (await asyncio.wait_for(unknown.__anext__(), 3)).status == \
                health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

    asyncio.run(main())


def test_server_runs_on_uvloop_with_tls(tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")
    write_self_signed(tmp_path / "admin.pem", tmp_path / "admin.key")
    tls = TlsFiles(cert=tmp_path / "admin.pem", key=tmp_path / "admin.key")

    async def main() -> None:
        async with admin_env(tmp_path, tls=tls) as env:
            held = await env.hold()
            resp = await env.stub.ListApprovals(pb.ListApprovalsRequest(),
                                                metadata=env.md("alice", "dba"))
            assert [a.id for a in resp.approvals] == [held.id]
            # A plaintext client cannot talk to the TLS port.
            async with grpc.aio.insecure_channel(env.address) as plain:
                err = await rpc_error(admin_pb2_grpc.AdminStub(plain).ListApprovals(
                    pb.ListApprovalsRequest(), metadata=env.md("alice", "dba"), timeout=3))
                assert err.code() == grpc.StatusCode.UNAVAILABLE
            # The CLI with --tls-ca.
            token = tmp_path / "alice.jwt"
            token.write_text(env.token("alice", "dba"))
            code, out, err_text = await cli(
                "list", "--json", "--admin", f"localhost:{env.server.port}",
                "--token", str(token), "--tls-ca", str(tls.cert))
            assert code == 0, err_text
            assert [a["id"] for a in json.loads(out)] == [held.id]

    uvloop.run(main())


# -- the CLI ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgwarden")
    cli_client.register(p.add_subparsers(dest="command", required=True))
    return p


async def cli(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    args = _parser().parse_args(["approvals", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(args.handler, args, stdout=out, stderr=err,
                                   stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


def test_cli_list_shows_the_requests_text_escaped(tmp_path: Path) -> None:
    """The SQL is the requester's (a quoted identifier holds any character): the approver
    sees it escaped, never a terminal escape, a line break, a bidi override or an
    invisible character that would show another statement than the one approved."""
    sql = ('SELECT "\x1b[2J\u009b1m" FROM t /*?*/; \u202eDROP\u202c "a\u200bb\U000e0041"\n'
           "ok")

    async def main() -> None:
        async with admin_env(tmp_path) as env:
            token = tmp_path / "alice.jwt"
            token.write_text(env.token("alice", "dba") + "\n")
            await env.service.request(
                subject="ci\u200b-bot", issuer=env.dev.issuer, groups=["ci"],
                connection="payments", session_id="s-1", sql_redacted=sql, fingerprint="fp1",
                input_digest="d", approvers=["dba"])
            code, out, err = await cli("list", "--token", str(token), "--admin", env.address)
            assert code == 0, err
            assert not any(ch in out for ch in "\x1b\u009b\u202e\u202c\u200b\U000e0041"), out
            assert len(out.splitlines()) == 2, out  # the header and one request
            assert "ci\\u200b-bot" in out and "\\x1b[2J\\u009b1m" in out
            assert "\\u202eDROP\\u202c" in out and "\\U000e0041" in out

    asyncio.run(main())


def test_cli_list_approve_deny(tmp_path: Path) -> None:
    async def main() -> None:
        async with admin_env(tmp_path) as env:
            files = {}
            for name, groups in [("alice", ("dba",)), ("ci-bot", ("ci", "dba")),
                                 ("mallory", ("dev",)), ("root", (ADMINS,))]:
                files[name] = tmp_path / f"{name}.jwt"
                files[name].write_text(env.token(name, *groups) + "\n")
            conn = ("--admin", env.address)

            def tok(name: str) -> tuple[str, ...]:
                return ("--token", str(files[name]), *conn)

            held = await env.hold(grant_ttl=60)
            second = await env.hold()
            code, out, err = await cli("list", "--json", *tok("alice"))
            assert code == 0, err
            items = json.loads(out)
            assert isinstance(items, list) and {i["id"] for i in items} == {held.id, second.id}
            for item in items:
                assert {"id", "subject", "connection", "sql", "requested_at"} <= set(item)
                assert item["sql"] == SQL and item["subject"] == "ci-bot"
                assert item["connection"] == "payments" and item["status"] == "pending"
            code, out, err = await cli("list", *tok("alice"))
            assert code == 0 and held.id in out and "ci-bot" in out and "APPROVERS" in out
            code, out, _ = await cli("list", "--json", *tok("mallory"))
            assert (code, json.loads(out)) == (0, [])

            code, out, err = await cli("approve", held.id, "--reason", "mine", *tok("ci-bot"))
            assert code == 1 and out == ""
            assert "permission_denied" in err and "cannot approve it" in err
            code, _, err = await cli("approve", held.id, "--reason", "x", *tok("mallory"))
            assert code == 1 and "only members of dba" in err
            code, _, err = await cli("approve", held.id, *tok("alice"))
            assert code == 1 and "reason is required" in err
            # The token may come on stdin.
            code, out, err = await cli("approve", held.id, "-m", "ticket 7", "--token", "-",
                                       *conn, stdin=files["alice"].read_text())
            assert code == 0, err
            assert out.startswith(f"approved {held.id}; grant grt_")
            code, _, err = await cli("deny", held.id, "--reason", "late", *tok("alice"))
            assert code == 1 and "already approved" in err
            code, out, err = await cli("deny", second.id, "--reason", "no", *tok("alice"))
            assert (code, out.strip()) == (0, f"denied {second.id}"), err
            code, out, _ = await cli("list", "--json", "--all", *tok("alice"))
            statuses = {i["id"]: i["status"] for i in json.loads(out)}
            assert statuses == {held.id: "approved", second.id: "denied"}

            code, out, _ = await cli("grants", "--json", *tok("root"))
            (grant,) = json.loads(out)
            assert grant["request_id"] == held.id and grant["granted_by"] == ["alice"]
            code, _, err = await cli("revoke", grant["id"], *tok("alice"))
            assert code == 1 and "admin groups" in err
            code, out, err = await cli("revoke", grant["id"], "-m", "done", *tok("root"))
            assert code == 0 and out.startswith(f"revoked {grant['id']}"), err

            # Usage and connection problems: exit 2.
            code, _, err = await cli("list", "--token", str(tmp_path / "missing.jwt"), *conn)
            assert code == 2 and "cannot read the token file" in err
            (tmp_path / "empty.jwt").write_text("\n")
            code, _, err = await cli("list", "--token", str(tmp_path / "empty.jwt"), *conn)
            assert code == 2 and "empty" in err
            code, _, err = await cli("list", "--token", str(files["alice"]), "--admin", "nope")
            assert code == 2 and "HOST:PORT" in err
            code, _, err = await cli("list", "--token", str(files["alice"]), "--admin",
                                     "127.0.0.1:1", "--timeout", "2")
            assert code == 2 and "cannot reach the admin API" in err
            # A bad token is a refusal (exit 1), with the verifier's fixed message.
            (tmp_path / "bad.jwt").write_text("eyJhbGciOiJub25lIn0.e30.")
            code, _, err = await cli("list", "--token", str(tmp_path / "bad.jwt"), *conn)
            assert code == 1 and "unauthenticated" in err

    asyncio.run(main())


def test_cli_usage_errors_without_server(tmp_path: Path) -> None:
    parser = _parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["approvals", "approve"])
    assert e.value.code == 2
    args = parser.parse_args(["approvals", "list", "--admin", "127.0.0.1:1"])
    args.token = None
    err = io.StringIO()
    assert cli_client.run(args, stderr=err) == 2 and "--token FILE is required" in err.getvalue()


# -- HTTP health and metrics ------------------------------------------------------------------


async def http(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_http_healthz_and_metrics() -> None:
    healthy = {"ok": True}
    health = Health()
    health.add_check("policy", lambda: healthy["ok"])
    health.add_check("broken", lambda: True)

    async def main() -> None:
        cfg = AdminConfig(http=("127.0.0.1", 0))
        srv = http_server_from_config(cfg, health=health)
        assert isinstance(srv, AdminHttpServer)
        assert http_server_from_config(AdminConfig(), health=health) is None
        port = await srv.start()
        try:
            m.STATEMENTS.labels(outcome="allowed").inc()
            m.STATEMENTS.labels(outcome="denied").inc(2)
            m.SESSIONS_ACTIVE.inc()
            m.set_bundle_info("r1", "aa" * 32)
            m.set_bundle_info('r"2', "bb" * 32)
            m.APPROVALS_PENDING.set_function(lambda: 4)

            status, headers, body = await http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (status, body) == (200, b"ok\n") and headers["Connection"] == "close"
            healthy["ok"] = False
            status, _, body = await http(port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert (status, body) == (503, b"unhealthy: policy\n")
            health.add_check("broken", lambda: 1 / 0)
            healthy["ok"] = True
            status, _, body = await http(port, b"GET /healthz HTTP/1.1\r\n\r\n")
            assert (status, body) == (503, b"unhealthy: broken\n")
            health.remove_check("broken")

            status, headers, body = await http(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = body.decode()
            assert int(headers["Content-Length"]) == len(body)
            assert "# TYPE pgwarden_statements_total counter" in text
            assert 'pgwarden_statements_total{outcome="denied"} ' in text
            assert "# TYPE pgwarden_sessions_active gauge" in text
            assert "pgwarden_approvals_pending 4" in text
            assert 'pgwarden_bundle_info{revision="r\\"2",hash="' + "bb" * 32 + '"} 1' in text
            assert 'revision="r1"' not in text  # only the bundle serving now
            for name in ("pgwarden_masked_values_total", "pgwarden_safety_net_hits_total"):
                assert f"# TYPE {name} counter" in text and f"\n{name} " in text

            status, headers, body = await http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
            assert (await http(port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
            assert (await http(port, b"POST /healthz HTTP/1.1\r\n\r\n"))[0] == 405
            assert (await http(port, b"garbage\r\n\r\n"))[0] == 400
            assert (await http(port, b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\n\r\n"))[0] == 431
        finally:
            m.APPROVALS_PENDING.set_function(None)
            await srv.stop()

    asyncio.run(main())


def test_a_bundle_revision_s_card_number_stays_out_of_the_metrics() -> None:
    """A revision is a bundle author's text, shown in a label anyone who scrapes sees."""
    m.set_bundle_info("rel-4111-1111-1111-1111", "cc" * 32)
    try:
        page = m.REGISTRY.render()
        assert "4111-1111-1111-1111" not in page and "-1111\"" in page
    finally:
        m.set_bundle_info(None, None)


def test_metrics_registry_format() -> None:
    reg = m.Registry()
    c = reg.counter("x_events_total", "Events.\nSecond line", ("kind",))
    g = reg.gauge("x_level", "Level.")
    c.labels(kind='a\\b"c\nd').inc()
    c.labels("plain").inc(2.5)
    g.set(3)
    g.dec(0.5)
    assert reg.render() == (
        "# HELP x_events_total Events.\\nSecond line\n"
        "# TYPE x_events_total counter\n"
        'x_events_total{kind="a\\\\b\\"c\\nd"} 1\n'
        'x_events_total{kind="plain"} 2.5\n'
        "# HELP x_level Level.\n"
        "# TYPE x_level gauge\n"
        "x_level 2.5\n")
    assert c.value(kind="plain") == 2.5
    with pytest.raises(ValueError):
        c.labels(kind="a").inc(-1)
    with pytest.raises(ValueError):
        c.labels(other="a")
    two = reg.counter("x_pairs_total", "Pairs.", ("a", "b"))
    two.labels(b=2, a=1).inc()
    assert two.value("1", "2") == 1
    for bad in ({"a": 1}, {"a": 1, "c": 2}, {"a": 1, "b": 2, "c": 3}):
        with pytest.raises(ValueError):
            two.labels(**bad)
    with pytest.raises(ValueError):
        reg.counter("x_events_total", "again")
    with pytest.raises(ValueError):
        reg.counter("bad name_total", "x")
    with pytest.raises(ValueError):
        reg.counter("x_counter", "x")
    g.set_function(lambda: 1 / 0)
    assert "x_level NaN" in reg.render()


def test_approval_events_feed_metrics() -> None:
    before = (m.APPROVALS_RESOLVED.value(status="denied"), m.GRANTS_USED.value())
    for kind in ("approval_requested", "approval_denied", "grant_used", "grant_used"):
        m.observe_approval_event(kind, {})
    assert m.APPROVALS_RESOLVED.value(status="denied") == before[0] + 1
    assert m.GRANTS_USED.value() == before[1] + 2
