"""Operating the gateway when what it depends on fails, at start and while running.

Real `pgwarden serve` processes, real PostgreSQL servers (one of them this module's own, to
stop and restart), real clients. Each test's docstring says what an operator should get.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PgBackend
from rawclient import RawClient, expect_fatal

from gateway.audit import generate_keypair
from gateway.devtools.embedded_pg import EmbeddedPostgres
from gateway.devtools.harness import GatewayProcess, UpstreamSpec

REPO = Path(__file__).resolve().parents[1]
PCI = REPO / "policies" / "pci"
APPROVALS_POLICY = Path(__file__).resolve().parent / "policies" / "approvals"
# An upstream nobody listens on: enough for tests about the gateway's own start.
NOWHERE = {"payments": UpstreamSpec("127.0.0.1", 1, "payments", "svc", "unused-password")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(gw: GatewayProcess, timeout: float = 25) -> subprocess.CompletedProcess[str]:
    """`pgwarden serve` on the gateway's config (already written), to its exit."""
    return subprocess.run([sys.executable, "-m", "gateway", "serve", "-c", str(gw.config_path)],
                          capture_output=True, text=True, env=gw.env(), cwd=str(gw.directory),
                          timeout=timeout, check=False)


def plain_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("pgwarden:")]


def fatal_of(gw: GatewayProcess, connection: str = "payments",
             timeout: float = 25) -> dict[str, str]:
    """The FATAL a login through the gateway ends with (raw protocol: its SQLSTATE too)."""
    with RawClient(gw, tls=True, timeout=timeout) as c:
        c.startup({"user": "ci-bot", "database": connection})
        c.read_until(b"R", b"E")
        c.password(gw.token())
        return expect_fatal(c.read_until_close(lenient=True))


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _two_workers(tmp_path: Path) -> tuple[GatewayProcess, list[int]]:
    gw = GatewayProcess(tmp_path / "gw", NOWHERE, workers=2, port=free_port()).start()
    assert gw.proc is not None
    deadline = time.monotonic() + 10
    while len(kids := _children(gw.proc.pid)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return gw, kids


def _serving(gw: GatewayProcess) -> None:
    """Every worker answers: the login gets as far as the (unreachable) upstream."""
    for _ in range(6):
        fields = expect_fatal(_login(gw))
        assert fields["C"] == "08001", fields


def _login(gw: GatewayProcess) -> list[Any]:
    with RawClient(gw, tls=True) as c:
        c.startup({"user": "ci-bot", "database": "payments"})
        c.read_until(b"R", b"E")
        c.password(gw.token())
        return c.read_until_close()


def test_a_worker_that_dies_is_named_and_replaced(tmp_path: Path) -> None:
    """With workers: 2, a worker killed outright (the OOM killer) is logged with how it
    died and replaced, so that the port keeps its capacity; a clean stop afterwards still
    exits 0 (the service manager restarts nothing)."""
    gw, kids = _two_workers(tmp_path)
    assert gw.proc is not None
    try:
        os.kill(kids[1], signal.SIGKILL)
        died = gw.wait_for_log(lambda d: d.get("event") == "gateway.worker_died", timeout=8)
        assert died["pid"] == kids[1] and died["exit"] == "killed by SIGKILL", died
        assert died["level"] == "error" and died["action"] == "replaced", died
        deadline = time.monotonic() + 15
        while len(now := _children(gw.proc.pid)) < 2 or kids[1] in now:
            assert time.monotonic() < deadline, now
            time.sleep(0.1)
        assert kids[0] in now
        gw.wait_for_log(lambda d: d.get("event") == "gateway.start"
                        and d.get("pid") not in kids, timeout=15)
        _serving(gw)
    finally:
        rc = gw.stop()
    assert rc == 0, gw.log_text()[-3000:]


def test_workers_that_keep_dying_stop_the_gateway(tmp_path: Path) -> None:
    """A worker that dies again and again is not replaced for ever: past five deaths in a
    minute the gateway stops, exit status 1, for its service manager to see."""
    gw, _ = _two_workers(tmp_path)
    assert gw.proc is not None

    def gave_up(doc: dict[str, Any]) -> bool:
        return doc.get("event") == "gateway.worker_died" and "stopping the gateway" in \
            doc.get("action", "")

    deadline = time.monotonic() + 60
    while not any(gave_up(doc) for doc in list(gw.logs)):
        assert time.monotonic() < deadline and gw.proc.poll() is None
        kids = _children(gw.proc.pid)
        if len(kids) == 2:  # one at a time: the other one is stopped as the gateway stops
            os.kill(kids[-1], signal.SIGKILL)
            while kids[-1] in _children(gw.proc.pid):
                time.sleep(0.02)
        time.sleep(0.1)
    assert gw.proc.wait(30) == 1
    assert sum(doc.get("event") == "gateway.worker_died" for doc in gw.logs) == 5


def test_a_worker_that_cannot_start_stops_the_others(tmp_path: Path) -> None:
    """A worker that could not start (exit 2: it said why) stops the gateway, rather than
    leave it running short of a worker: here the audit trail's directory is a file."""
    (tmp_path / "not-a-dir").write_text("")
    generate_keypair(tmp_path / "audit.pem", tmp_path / "audit.pub")
    gw = GatewayProcess(tmp_path / "gw", NOWHERE, workers=2, port=free_port(), extra_yaml=(
        f"audit:\n  dir: {json.dumps(str(tmp_path / 'not-a-dir'))}\n"
        f"  signing_key: {{file: {json.dumps(str(tmp_path / 'audit.pem'))}}}\n"))
    with pytest.raises(RuntimeError, match="exited with 2"):
        gw.start()


def test_exit_codes_of_workers_killed_by_signals_are_failures() -> None:
    from gateway.serve import describe_exit, exit_code

    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGUSR1):
        pid = os.fork()
        if pid == 0:
            os.kill(os.getpid(), sig)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert exit_code(status) == 128 + sig
        assert describe_exit(status) == f"killed by {sig.name}"
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert (exit_code(status), describe_exit(status)) == (3, "exit status 3")


def _approvals_gateway(tmp_path: Path, pg: PgBackend, dsn: str) -> GatewayProcess:
    pg.server.psql("CREATE TABLE IF NOT EXISTS vault (id int, secret text);",
                   dbname="payments", user=pg.service.name)
    spec = UpstreamSpec(pg.server.host, pg.server.port, pg.dbname, pg.service.name,
                        pg.service.password)
    gw = GatewayProcess(tmp_path / "gw", {"payments": spec}, policy_dir=APPROVALS_POLICY)
    gw.extra_env["PROBED_APPROVALS_DSN"] = dsn
    gw.extra_yaml = ("approvals:\n  timeout: 2s\n  store: postgres\n"
                     "  dsn: {env: PROBED_APPROVALS_DSN}\n"
                     f"admin:\n  grpc: 127.0.0.1:{free_port()}\n")
    return gw


def _held_or_refused(gw: GatewayProcess) -> tuple[list[str], str]:
    notices: list[str] = []
    with psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True) as c:
        c.add_notice_handler(lambda n: notices.append(str(n.message_primary)))
        try:
            c.execute("select * from vault")
            return notices, ""
        except psycopg.Error as e:
            return notices, str(e)


def test_an_approvals_store_down_at_start_is_used_once_it_is_back(pg: PgBackend,
                                                                  tmp_path: Path) -> None:
    """The approvals store (store: postgres) is down when the gateway starts; once it is
    back, a statement the policy holds is held for approval again (NOTICE with the request
    id) without a restart, as the store itself reconnects. Today `GatewayServer.start`
    drops the service for good (`self.approvals = None`; the gRPC admin API is not
    started either): every such statement is refused until someone restarts the gateway."""
    with EmbeddedPostgres(tmp_path / "apg") as apg:
        password = secrets.token_urlsafe(16)
        apg.add_role("approver_svc", password)
        apg.create_database("approvals", owner="approver_svc")
        dsn = apg.dsn(user="approver_svc", password=password, dbname="approvals")
        apg._pg_ctl("-m", "fast", "-w", "stop")
        with _approvals_gateway(tmp_path, pg, dsn) as gw:
            apg._pg_ctl("-l", str(apg.log_path), "-w", "start")
            deadline = time.monotonic() + 12
            while True:
                notices, error = _held_or_refused(gw)
                if any("held for approval" in n for n in notices) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert any("held for approval" in n for n in notices), (notices, error)
        assert password not in gw.log_text()


def test_an_unreachable_approvals_store_is_not_called_unconfigured(pg: PgBackend,
                                                                   tmp_path: Path) -> None:
    """While the configured approvals store cannot be reached, a held statement is refused
    saying approvals are unavailable, not `no approvals service is configured on this
    gateway` (it is configured: the operator would go looking in the config)."""
    dsn = f"host=127.0.0.1 port={free_port()} user=nobody password=x dbname=approvals"
    with _approvals_gateway(tmp_path, pg, dsn) as gw:
        _, error = _held_or_refused(gw)
    assert "needs approval" in error
    assert "not configured" not in error and "no approvals service is configured" not in error
