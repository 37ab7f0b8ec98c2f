"""The gateway as several pre-forked worker processes (`listen.workers` > 1).

Real PostgreSQL, real `pgwarden serve` processes, real clients. Each test's docstring
says what the gateway should do.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PgBackend, audit_yaml, upstreams_for
from rawclient import RawClient, expect_fatal

from gateway.audit import generate_keypair
from gateway.devtools.harness import GatewayProcess, UpstreamSpec

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_workers(directory: Path, pg: PgBackend, workers: int = 2,
                  **kw: Any) -> GatewayProcess:
    """A gateway with `workers` workers, returned once every one of them listens."""
    gw = GatewayProcess(directory, upstreams_for(pg), workers=workers, port=free_port(),
                        **kw).start()
    for w in range(workers):
        gw.wait_for_log(lambda d, w=w: d.get("event") == "gateway.start"
                        and d.get("worker") == w, timeout=20)
    return gw


def worker_pids(gw: GatewayProcess) -> dict[int, int]:
    return {int(d["worker"]): int(d["pid"]) for d in list(gw.logs)
            if d.get("event") == "gateway.start" and "pid" in d}


def connect(gw: GatewayProcess, **kw: Any) -> psycopg.Connection[Any]:
    kw.setdefault("autocommit", True)
    return psycopg.connect(gw.dsn("payments"), password=gw.token(), **kw)


def spread(gw: GatewayProcess, at_least: int = 8) -> list[psycopg.Connection[Any]]:
    """Connections until both workers hold some (SO_REUSEPORT hashes them)."""
    conns = [connect(gw) for _ in range(at_least)]
    while len({c.info.backend_pid >> 24 for c in conns}) < 2 and len(conns) < 40:
        conns.append(connect(gw))
    assert {c.info.backend_pid >> 24 for c in conns} == {0, 1}
    return conns


def verify(d: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "gateway", "audit", "verify", str(d / "audit"), "--key",
         str(d / "audit.pub"), *extra],
        capture_output=True, text=True, cwd=str(REPO), timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)})


# -- a worker that dies ---------------------------------------------------------------------




def test_exit_status_is_not_zero_when_a_worker_was_killed(pg: PgBackend,
                                                          tmp_path: Path) -> None:
    """`pgwarden serve` exits 0 only after a clean drain of every worker. A worker killed
    during the drain (its audit chain has no final checkpoint: `audit verify` calls that a
    crash) must make the exit status non-zero. The supervisor computes
    max(exit codes), and a signalled child's code is negative (-9), so it returns 0."""
    gw = start_workers(tmp_path, pg, drain_timeout=20)
    conns = spread(gw)
    try:
        pids = worker_pids(gw)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        gw.wait_for_log(lambda d: d.get("event") == "gateway.draining"
                        and d.get("worker") == 1)
        os.kill(pids[1], signal.SIGKILL)  # dies mid-drain
        for c in conns:
            if c.info.backend_pid >> 24 == 0:
                c.close()  # worker 0 drains cleanly
        code = gw.proc.wait(30)
        assert code != 0, "a worker was SIGKILLed, yet the gateway exited 0"
    finally:
        for c in conns:
            c.close()
        gw.stop()


# -- a worker that cannot start ---------------------------------------------------------------


def test_a_worker_that_cannot_start_stops_the_gateway(pg: PgBackend, tmp_path: Path) -> None:
    """With one worker, a start that fails (here: `admin.http`'s port is taken) ends
    `pgwarden serve` with exit status 2. With two, worker 0 (which serves the admin API)
    exits 2 but the supervisor keeps running with worker 1 alone, no admin API, no
    /metrics or /healthz, forever. It should stop the other workers and exit non-zero."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        extra = f"admin:\n  http: 127.0.0.1:{port}\n"
        one = GatewayProcess(tmp_path / "one", upstreams_for(pg), extra_yaml=extra,
                             port=free_port())
        with pytest.raises(RuntimeError, match="exited with 2"):
            one.start()
        gw = GatewayProcess(tmp_path / "two", upstreams_for(pg), workers=2,
                            port=free_port(), extra_yaml=extra)
        try:
            try:
                gw.start()
            except RuntimeError:
                return  # exited before anything listened: fine
            assert gw.proc is not None
            try:
                code = gw.proc.wait(15)
            except subprocess.TimeoutExpired:
                code = None
            assert code not in (None, 0), (
                "worker 0 failed to start, but the gateway keeps running on worker 1: "
                + gw.log_text()[-1500:])
        finally:
            gw.stop()


# -- what the admin endpoints see -------------------------------------------------------------




POLICY_V1 = """package pgwarden

decision := {"allow": true, "reasons": [], "mask": {}, "require_approval": false,
             "approvers": [], "row_limit": null, "db_role": null}
"""

POLICY_V2 = """package pgwarden

decision := {"allow": false, "reasons": ["serving v2"], "mask": {},
             "require_approval": false, "approvers": [], "row_limit": null,
             "db_role": null}
"""




# -- limits -------------------------------------------------------------------------------------






# -- behaviour that holds (kept as coverage) ----------------------------------------------


def test_sigterm_drain_with_sessions_on_both_workers_seals_every_chain(
        pg: PgBackend, tmp_path: Path) -> None:
    """SIGTERM with busy sessions on both workers: each worker drains, ends what is left
    with 57P01, writes its final checkpoint; exit 0; `audit verify` passes and shows both
    instances' chains."""
    gw = start_workers(tmp_path, pg, drain_timeout=1.0, extra_yaml=audit_yaml(tmp_path))
    conns = spread(gw)
    errors: list[BaseException] = []
    try:
        for c in conns:
            c.execute("select 1")

        def sleeper(c: psycopg.Connection[Any]) -> None:
            try:
                c.execute("select pg_sleep(30)")
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=sleeper, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        time.sleep(0.5)
        assert gw.proc is not None
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        code = gw.proc.wait(30)
        for t in threads:
            t.join(10)
        assert code == 0, gw.log_text()[-3000:]
        assert time.monotonic() - t0 < 10
        assert len(errors) == len(conns)
        assert all("shutdown" in str(e) for e in errors), errors
    finally:
        for c in conns:
            c.close()
        gw.stop()
    out = verify(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    names = [p.name for p in (tmp_path / "audit").iterdir()]
    assert any("-w0-" in n for n in names) and any("-w1-" in n for n in names), names
    assert "instances: 2" in out.stdout or "-w1" in out.stdout, out.stdout
    # nothing running at the server for those sessions
    left = pg.server.psql("select count(*) from pg_stat_activity where query like "
                          "'select pg_sleep(30)%' and state = 'active'").strip()
    assert left == "0"


def test_asyncpg_timeout_cancels_on_every_worker(pg: PgBackend, tmp_path: Path) -> None:
    """asyncpg's `timeout=` sends a CancelRequest on a new connection, which the kernel
    may hand to the other worker: the statement is canceled at the server either way, and
    the session goes on."""
    import asyncio

    import asyncpg
    from conftest import asyncpg_connect

    gw = start_workers(tmp_path, pg)

    async def main() -> set[int]:
        conns = [await asyncpg_connect(gw) for _ in range(8)]
        seen = set()
        try:
            for c in conns:
                pid = c.get_server_pid()
                seen.add(pid >> 24)
                t0 = time.monotonic()
                with pytest.raises((asyncio.TimeoutError, asyncpg.QueryCanceledError)):
                    await c.fetchval("select pg_sleep(20)", timeout=0.5)
                assert time.monotonic() - t0 < 5
                assert await c.fetchval("select 7") == 7
        finally:
            for c in conns:
                await c.close()
        return seen

    try:
        asyncio.run(main())
        busy = pg.server.psql("select count(*) from pg_stat_activity where query like "
                              "'select pg_sleep(20)%' and state = 'active'").strip()
        assert busy == "0"
    finally:
        assert gw.stop() == 0


def _children(pid: int) -> list[int]:
    """The supervisor's forked workers (not a `uname` its imports run meanwhile)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    out = []
    for p in text.split():
        try:
            if b"gateway\0serve" in Path(f"/proc/{p}/cmdline").read_bytes():
                out.append(int(p))
        except OSError:
            pass
    return out


def _catches_sighup(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    m = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)
    return bool(m and int(m.group(1), 16) & 1)


def test_a_sighup_while_workers_start_kills_nothing(pg: PgBackend, tmp_path: Path) -> None:
    """A SIGHUP (a policy reload, e.g. from config management) that arrives while the
    workers are starting must not kill anything: a worker remembers it and reloads once
    serving (`serve._main`'s early_hup). The supervisor forwards SIGHUP to the workers
    as soon as it has forked them, before they have installed any handler, so the
    default action kills every worker; the supervisor then exits 0 (or, as it exits
    with its handlers reset, dies of the next SIGHUP), nothing logged, no gateway."""
    gw = GatewayProcess(tmp_path, upstreams_for(pg), workers=2, port=free_port())
    gw.prepare()
    proc = subprocess.Popen(
        [PY, "-m", "gateway", "serve", "-c", str(gw.config_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=gw.env(),
        cwd=str(tmp_path))
    gw.proc = proc
    assert proc.stderr is not None
    threading.Thread(target=gw._pump, args=(proc.stderr,), daemon=True).start()
    children: list[int] = []
    try:
        deadline = time.monotonic() + 20
        # until the supervisor catches SIGHUP (it forwards it to the workers from then on)
        while not (_catches_sighup(proc.pid) and len(_children(proc.pid)) == 2) \
                and time.monotonic() < deadline:
            time.sleep(0.0005)
        children = _children(proc.pid)
        assert len(children) == 2, "the workers were not forked"
        for _ in range(30):  # a burst of reloads as the workers come up
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.005)
        children = sorted(set(children) | set(_children(proc.pid)))
        deadline = time.monotonic() + 15
        starts: set[Any] = set()
        while proc.poll() is None and starts != {0, 1} and time.monotonic() < deadline:
            time.sleep(0.1)
            starts = {d.get("worker") for d in gw.logs if d.get("event") == "gateway.start"}
        assert proc.poll() is None and starts == {0, 1}, (
            f"supervisor exit status: {proc.poll()}; workers started: {starts}")
        assert not [d for d in gw.logs if d.get("event") == "gateway.worker_died"]
    finally:
        gw.stop()
        for c in children:
            try:
                os.kill(c, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_audit_verify_after_a_worker_was_killed_names_that_chain_only(
        pg: PgBackend, tmp_path: Path) -> None:
    """Traffic on both workers, worker 1 SIGKILLed (the other keeps serving, and a new
    worker 1 takes its place and its chain), the gateway then stopped: `audit verify`
    names worker 1's run that ended without its final checkpoint (exit 1), and nothing of
    worker 0's; told that run crashed, it passes."""
    gw = start_workers(tmp_path, pg, extra_yaml=audit_yaml(tmp_path))
    conns = spread(gw)
    try:
        for c in conns:
            c.execute("select 1")
        killed = worker_pids(gw)[1]
        os.kill(killed, signal.SIGKILL)
        time.sleep(0.3)
        for c in conns:
            if c.info.backend_pid >> 24 == 0:
                assert c.execute("select 2").fetchone() == (2,)  # the other worker serves
        gw.wait_for_log(lambda d: d.get("event") == "gateway.start" and d.get("worker") == 1
                        and d.get("pid") != killed, timeout=15)
    finally:
        for c in conns:
            c.close()
        gw.stop()
    out = verify(tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "instance vm-w1" in text and "w0" not in text, text
    assert "without its final checkpoint" in text, text
    crashed = verify(tmp_path, "--accept-crashes")
    assert crashed.returncode == 0, crashed.stdout + crashed.stderr


# -- a worker that dies ------------------------------------------------------------------------

# An upstream nobody listens on: enough for tests about the workers themselves.
NOWHERE = {"payments": UpstreamSpec("127.0.0.1", 1, "payments", "svc", "unused-password")}


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


# -- the gateway, not each worker: metrics, bundle reloads, max_connections ----------------


def test_metrics_count_the_sessions_of_every_worker(pg: PgBackend, tmp_path: Path) -> None:
    """`GET /metrics` is the gateway's: `pgwarden_sessions_active` counts the sessions
    of every worker. Only worker 0 serves admin.http and renders its own registry, so
    the sessions (and statements, masks, safety-net hits...) of worker 1 are never
    exposed to Prometheus at all."""
    http = free_port()
    gw = start_workers(tmp_path, pg, extra_yaml=f"admin:\n  http: 127.0.0.1:{http}\n")
    conns = spread(gw)
    try:
        for c in conns:
            c.execute("select 1")
        body = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics",
                                      timeout=5).read().decode()
        active = sum(float(m) for m in re.findall(
            r"^pgwarden_sessions_active(?:\{[^}]*\})? (\S+)$", body, re.M))
        assert active == len(conns), body[:1500]
        workers = set(re.findall(r'^pgwarden_sessions_active\{worker="(\d+)"\}', body, re.M))
        assert workers == {"0", "1"}, body[:1500]
        assert body.count("# TYPE pgwarden_sessions_active gauge") == 1
        health = urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=5)
        assert health.status == 200 and health.read() == b"ok\n"
    finally:
        for c in conns:
            c.close()
        gw.stop()


def test_admin_reload_bundle_reaches_every_worker(pg: PgBackend, tmp_path: Path) -> None:
    """The admin API's ReloadBundle reloads the gateway's policy, as SIGHUP does: every
    worker then decides with the new bundle. It runs in worker 0 and reloads only worker
    0's engine (`GatewayAdminBackend.reload_bundle`): sessions on worker 1 keep being
    decided by the old policy although the API answered `activated`."""
    import grpc

    from gateway.admin import admin_pb2 as pb
    from gateway.admin import admin_pb2_grpc

    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "p.rego").write_text(POLICY_V1)
    grpc_port = free_port()
    gw = start_workers(
        tmp_path / "gw", pg,
        policy_yaml=(f"policy:\n  bundle: {str(policy)!r}\n  allow_unsigned: true\n"
                     f"  poll_interval: 0\n  state_dir: {str(tmp_path / 'state')!r}\n"),
        extra_yaml=f"admin:\n  grpc: 127.0.0.1:{grpc_port}\n  admin_groups: [platform]\n")
    try:
        (policy / "p.rego").write_text(POLICY_V2)
        auth = [("authorization", "Bearer " + gw.token(subject="root", groups=("platform",)))]
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=15)
            stub = admin_pb2_grpc.AdminStub(channel)
            answer = stub.ReloadBundle(pb.ReloadBundleRequest(), metadata=auth)
            assert answer.status == "activated", answer
        conns = spread(gw)
        try:
            allowed = []
            for c in conns:
                try:
                    c.execute("select 1")
                    allowed.append(c.info.backend_pid >> 24)
                except psycopg.errors.InsufficientPrivilege:
                    pass
            assert allowed == [], (
                f"{len(allowed)} of {len(conns)} sessions (workers {sorted(set(allowed))}) "
                "still decided by the old bundle after ReloadBundle answered activated")
        finally:
            for c in conns:
                c.close()
    finally:
        gw.stop()


def test_max_connections_is_the_gateways_limit_not_each_workers(pg: PgBackend,
                                                                tmp_path: Path) -> None:
    """`listen.max_connections` bounds the clients of the listener, as PostgreSQL's own
    max_connections bounds its server, however many workers share the port: with
    `max_connections: 2` a third client gets 53300. Each worker counts only its own
    sessions (`GatewayServer._accept`), so with two workers up to four are let in
    (and four upstream sessions opened)."""
    gw = GatewayProcess(tmp_path, upstreams_for(pg), workers=2, port=free_port())
    gw.prepare()
    cfg = gw.config_path.read_text().replace("  workers: 2\n",
                                             "  workers: 2\n  max_connections: 2\n")
    gw.config_path.write_text(cfg)
    gw.render_config = lambda: cfg  # type: ignore[method-assign]
    gw.start()
    for w in (0, 1):
        gw.wait_for_log(lambda d, w=w: d.get("event") == "gateway.start"
                        and d.get("worker") == w, timeout=20)
    opened: list[psycopg.Connection[Any]] = []
    refused = 0
    try:
        for _ in range(12):
            try:
                c = connect(gw)
                c.execute("select 1")
                opened.append(c)
            except psycopg.OperationalError:
                refused += 1  # (53300, read by libpq as an error during the TLS exchange)
        assert len(opened) <= 2, (f"{len(opened)} sessions open at once with "
                                  f"max_connections: 2 (workers "
                                  f"{sorted({c.info.backend_pid >> 24 for c in opened})})")
    finally:
        for c in opened:
            c.close()
        gw.stop()


def test_health_names_a_sibling_that_is_not_healthy_even_with_no_check_yet(
        tmp_path: Path) -> None:
    """A worker still starting answers not ok with no checks: /healthz must fail naming it
    (`worker@1`), not say `unhealthy:` and nothing (found by a probe)."""
    import asyncio
    import types

    from gateway.admin.health import Health
    from gateway.proxy.admin_backend import GatewayAdminBackend

    async def run() -> tuple[bool, dict[str, bool]]:
        async def sibling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(b'{"ok": false, "checks": {}, "worker": 1}\n')
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(sibling, str(tmp_path / "admin-1.sock"))
        health = Health()
        health.add_check("audit", lambda: True)
        gateway = types.SimpleNamespace(
            peer_dir=tmp_path, worker_id=0, health=health,
            config=types.SimpleNamespace(listen=types.SimpleNamespace(workers=2)))
        try:
            return await GatewayAdminBackend(gateway).health()  # type: ignore[arg-type]
        finally:
            server.close()

    ok, checks = asyncio.run(run())
    assert not ok and checks == {"audit@0": True, "worker@1": False}
