"""Races and bounds: the supervisor stopping while it replaces a worker, refusals past
max_connections, the relay's backlog, required claims as YAML writes them (found by a
probe of the changes that added those).

Real PostgreSQL, real `pgwarden serve` processes, real clients. Each test's docstring
states the expected behaviour.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PgBackend, executing, upstreams_for
from rawclient import RawClient

from gateway.devtools.harness import GatewayProcess

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the supervisor ---------------------------------------------------------------------------


class PipedGateway:
    """`pgwarden serve` whose stderr is a pipe the test reads only when it wants to: a
    full pipe holds any process of the gateway that logs, where it logs."""

    def __init__(self, gw: GatewayProcess) -> None:
        gw.prepare()
        self.gw = gw
        self.r, self.w = os.pipe()
        self.proc = subprocess.Popen(
            [PY, "-m", "gateway", "serve", "-c", str(gw.config_path)],
            stdout=subprocess.DEVNULL, stderr=self.w, env=gw.env(), cwd=str(gw.directory))
        self.logs: list[dict[str, Any]] = []
        self.reading = threading.Event()
        self.reading.set()
        self.closed = False
        self._partial = b""
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while not self.closed:
            if not self.reading.wait(0.1):
                continue
            ready, _, _ = select.select([self.r], [], [], 0.1)
            if not ready or not self.reading.is_set():
                continue
            try:
                data = os.read(self.r, 65536)
            except OSError:
                return
            self._partial += data
            *lines, self._partial = self._partial.split(b"\n")
            for line in lines:
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    if isinstance(doc, dict):
                        self.logs.append(doc)

    def wait_for(self, match: Any, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in list(self.logs):
                if match(d):
                    return d
            time.sleep(0.05)
        raise AssertionError("no such log line: " + json.dumps(self.logs[-20:]))

    def fill(self) -> None:
        """Fill the pipe to its last byte (through a file description of our own)."""
        fd = os.open(f"/proc/self/fd/{self.w}", os.O_WRONLY | os.O_NONBLOCK)
        try:
            for size in (4096, 1):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        os.write(fd, b"\n" * size)
        finally:
            os.close(fd)

    def pids(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for d in list(self.logs):
            if d.get("event") == "gateway.start" and "pid" in d:
                out.setdefault(int(d["worker"]), []).append(int(d["pid"]))
        return out

    def kill_all(self) -> None:
        self.reading.set()
        for pids in self.pids().values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.closed = True
        os.close(self.w)


def test_sigterm_while_a_dead_worker_is_being_replaced_still_stops_the_gateway(
        pg: PgBackend, tmp_path: Path) -> None:
    """A SIGTERM that reaches the supervisor while it is replacing a dead worker (between
    noticing the death and forking the replacement: here its log write is slow) must still
    stop the gateway: either no replacement is started once the stop was asked for, or
    the replacement is told to stop too. Before the fix `forward` signals only the children known
    when it runs, and `_supervise` checked `stopping` before it logged and spawned, so the
    replacement never gets SIGTERM and `pgwarden serve` never exits (a service manager
    then SIGKILLs the supervisor and the orphaned worker keeps the port)."""
    gw = GatewayProcess(tmp_path, upstreams_for(pg), workers=2, port=free_port(),
                        drain_timeout=1.0)
    p = PipedGateway(gw)
    try:
        for w in (0, 1):
            p.wait_for(lambda d, w=w: d.get("event") == "gateway.start" and d.get("worker") == w)
        pids = p.pids()
        p.reading.clear()
        time.sleep(0.3)
        p.fill()  # the supervisor's next log line (worker_died) blocks
        os.kill(pids[1][0], signal.SIGKILL)
        time.sleep(1.0)  # the supervisor has reaped it and is writing its worker_died line
        p.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        p.reading.set()  # the line goes out; the supervisor carries on
        try:
            code = p.proc.wait(20)
        except subprocess.TimeoutExpired:
            code = None
        replaced = [d for d in p.logs if d.get("event") == "gateway.start"
                    and d.get("worker") == 1 and d.get("pid") != pids[1][0]]
        assert code is not None, (
            "SIGTERM was sent, but the gateway did not exit: a replacement worker started "
            f"after the stop ({replaced}) never got the signal")
    finally:
        p.kill_all()


# -- identity: required_claims ------------------------------------------------------------------


@pytest.mark.parametrize("yaml_value,claim", [
    ("4242", 4242),               # (control: plain)
    ("&org 4242", 4242),          # an anchor, to share the value with another provider
    ("4_242", 4242),              # digits grouped for reading
    ("&yes true", True),          # an anchored boolean
])
def test_a_required_claim_written_with_yaml_sugar_is_still_met(
        pg: PgBackend, tmp_path: Path, yaml_value: str, claim: Any) -> None:
    """`required_claims` accepts a value the config loader reads as an integer or boolean;
    a token whose claim has exactly that value must get in. ruamel's round-trip loader
    reads anchored or underscored integers as `ScalarInt` and anchored booleans as
    `ScalarBoolean` (an int subclass); `_claim_value` accepts them (isinstance) but
    `claim_matches` compares `type(item) is type(want)`, so the requirement can never be
    met: every token of the issuer is refused with `claim_not_allowed`, though the config
    was accepted. Values should be normalised to plain int/bool/str at load time."""
    gw = GatewayProcess(tmp_path, upstreams_for(pg),
                        provider_yaml=f"      required_claims:\n        org_id: {yaml_value}\n")
    with gw:
        token = gw.token(extra_claims={"org_id": claim})
        with psycopg.connect(gw.dsn("payments"), password=token, autocommit=True) as c:
            assert c.execute("select 1").fetchone() == (1,)


# -- past max_connections ----------------------------------------------------------------------


class ListenGateway(GatewayProcess):
    listen_yaml: str = ""

    def render_config(self) -> str:
        return super().render_config().replace("listen:\n", "listen:\n" + self.listen_yaml, 1)


def _active(pg: PgBackend, like: str) -> int:
    with psycopg.connect(pg.server.dsn(dbname="postgres"), autocommit=True) as c:
        (n,) = c.execute("select count(*) from pg_stat_activity where state = 'active' "
                         "and query like %s", (like,)).fetchone()
    return int(n)


def test_silent_sockets_past_max_connections_do_not_lock_out_cancel_requests(
        pg: PgBackend, tmp_path: Path) -> None:
    """At max_connections a cancel request is still served (the gateway reads the
    startup of a refused client for that). An attacker (no token needed) who opened
    REFUSING_MAX (64) connections and sends nothing holds every refusing slot for the
    whole startup_timeout (10 s), renewable at will; meanwhile every cancel request is
    refused unread with 53300 and the legitimate client cannot stop its runaway query.
    A cancel request, 16 bytes sent at once, should get through: e.g. evict the oldest
    silent refusing connection, or give refused connections a short deadline of their
    own (PostgreSQL's postmaster serves cancels regardless of max_connections)."""
    g = ListenGateway(tmp_path / "gw", upstreams_for(pg))
    g.listen_yaml = "  max_connections: 1\n"
    silent: list[socket.socket] = []
    with g, psycopg.connect(g.dsn("payments"), password=g.token(), autocommit=True) as a:
        t, errors = executing(a, "select pg_sleep(20) as probeh_runaway")
        try:
            deadline = time.monotonic() + 10
            while _active(pg, "select pg_sleep(20) as probeh_runaway%") < 1:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            for _ in range(64):
                s = socket.create_connection((g.host, g.port))
                silent.append(s)
            time.sleep(0.3)
            t0 = time.monotonic()
            a.cancel()
            t.join(5)
            assert not t.is_alive(), (
                "the cancel request was not served while 64 silent sockets held the "
                "refusing slots")
            assert errors and isinstance(errors[0], psycopg.errors.QueryCanceled), errors
            assert time.monotonic() - t0 < 5
        finally:
            for s in silent:
                s.close()
            t.join(30)


# -- the relay's backlog ---------------------------------------------------------------------------


def _queued(port: int) -> int:
    """Bytes the kernel holds on both ends of the loopback connection of `port`."""
    out = subprocess.run(["ss", "-tnH", f"( sport = :{port} or dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[1]) + int(line.split()[2]) for line in out.splitlines())


def test_backlog_stays_bounded_when_its_replay_blocks_again(pg: PgBackend,
                                                            tmp_path: Path) -> None:
    """While a statement waits (here: for its audit record to be fsynced, `durability:
    fsync`) what the client sends meanwhile goes to a backlog capped at 256 KB (reading
    pauses past it). When the wait ends the backlog is replayed; if its first chunk waits
    again, `Relay._resume` puts the rest back but leaves `_backlog_bytes` at 0, and it has
    already released the "backlog" hold: the rest is no longer counted and reading goes
    on. Each wait then forwards one chunk while the client adds up to 256 KB more. A
    client that pipelines and reads its answers makes the gateway hold tens of MB of its
    input (bounded by nothing): here, what was sent minus what was answered minus what
    the kernel holds minus the 4096 requests that may be in flight must stay within the
    256 KB backlog (plus slack)."""
    from conftest import audit_yaml
    from rawclient import query_message

    g = GatewayProcess(tmp_path / "gw", upstreams_for(pg),
                       extra_yaml=audit_yaml(tmp_path) + "  durability: fsync\n")
    with g:
        c = RawClient(g, timeout=None)  # type: ignore[arg-type]
        try:
            c.login(g.token())
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            msg = query_message("select 1 -- " + "x" * 200)
            c.sock.sendall(msg)
            answer = len(c.sock.recv(65536))  # T, D, C, Z of one `select 1`
            got = [0]

            def drain() -> None:  # the client reads its answers: no backpressure there
                with contextlib.suppress(OSError):
                    while data := c.sock.recv(1 << 20):
                        got[0] += len(data)

            reader = threading.Thread(target=drain, daemon=True)
            reader.start()
            sent = 0
            stop = time.monotonic() + 6
            while time.monotonic() < stop:
                c.sock.sendall(msg * 4)
                sent += 4 * len(msg)
            kernel = _queued(c.sock.getsockname()[1])
            consumed = got[0] // answer * len(msg)
            held = sent - consumed - kernel - 4096 * len(msg)
        finally:
            c.close()
        assert held < 256 * 1024 + 1024 * 1024, (
            f"the gateway holds ~{held / 2**20:.1f} MB of one client's input (sent "
            f"{sent / 2**20:.0f} MB, answered {consumed / 2**20:.0f} MB, kernel "
            f"{kernel / 2**20:.1f} MB)")


# -- real drivers and the in-flight bound ---------------------------------------------------------


def test_asyncpg_executemany_past_the_in_flight_bound(pg: PgBackend, tmp_path: Path) -> None:
    """asyncpg's executemany pipelines one Bind/Execute per row and a single Sync at the
    end; 10000 rows is past IN_FLIGHT_MAX (4096) requests. The gateway may pause reading
    but must not deadlock: every row is inserted within seconds."""
    import asyncio

    from conftest import asyncpg_connect

    g = GatewayProcess(tmp_path / "gw", upstreams_for(pg))
    with g:
        async def main() -> int:
            conn = await asyncpg_connect(g)
            try:
                await conn.execute("create temp table probeh_many (x int)")
                await asyncio.wait_for(conn.executemany(
                    "insert into probeh_many values ($1)", [(i,) for i in range(10000)]), 20)
                return int(await conn.fetchval("select count(*) from probeh_many"))
            finally:
                await conn.close()

        assert asyncio.run(main()) == 10000
