# ruff: noqa: S608  (statement texts made from loop counters)
"""Resource leaks and limits of a real gateway process, measured from outside.

The gateway (and its workers: children of its pid) is measured through /proc: resident
memory (VmRSS), open file descriptors; upstream backends through pg_stat_activity on the
real server, as its superuser. Clients are real sockets (raw protocol, psycopg).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PgBackend, audit_yaml, executing, read_records, upstreams_for
from rawclient import (
    SSL_REQUEST,
    Message,
    RawClient,
    cancel_request,
    query_message,
    startup_packet,
)

from gateway.devtools.harness import GatewayProcess

POLICY = Path(__file__).resolve().parents[1] / "policies" / "pci"
SVC = "pgwarden_svc"


# ---------------------------------------------------------------------------------------------
# Measuring the gateway from outside
# ---------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry))
    return out


def _family(pid: int) -> list[int]:
    return [pid, *_children(pid)]


def rss_kb(pid: int) -> int:
    """VmRSS of the gateway and its workers, in kB."""
    total = 0
    for p in _family(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def fds(pid: int) -> int:
    """Open file descriptors of the gateway and its workers."""
    total = 0
    for p in _family(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


def tcp_fds(pid: int) -> int:
    """Open sockets of the gateway and its workers."""
    total = 0
    for p in _family(pid):
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                try:
                    if os.readlink(f"/proc/{p}/fd/{fd}").startswith("socket:"):
                        total += 1
                except OSError:
                    pass
        except OSError:
            pass
    return total


def backends(pg: PgBackend) -> int:
    """Upstream backends the gateway holds (its service role's client backends)."""
    with psycopg.connect(pg.server.dsn(dbname="postgres"), autocommit=True) as c:
        (n,) = c.execute("select count(*) from pg_stat_activity where usename = %s "
                         "and backend_type = 'client backend'", (SVC,)).fetchone()
    return int(n)


def settle(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def pid_of(gw: GatewayProcess) -> int:
    assert gw.proc is not None and gw.proc.poll() is None, "the gateway process died"
    return gw.proc.pid


# ---------------------------------------------------------------------------------------------
# Gateways
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The starter PCI policy, an audit trail: the product as deployed."""
    d = tmp_path_factory.mktemp("probeG")
    g = GatewayProcess(d / "gw", upstreams_for(pg), policy_dir=POLICY,
                       extra_yaml=audit_yaml(d))
    with g:
        yield g


def login(c: RawClient, gw: GatewayProcess, **kw: Any) -> list[Message]:
    return c.login(gw.token(**kw))


def query(c: RawClient, sql: str) -> list[Message]:
    c.send(query_message(sql))
    return c.read_until(b"Z")



def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the gateway and its workers, in seconds."""
    total = 0
    for p in _family(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += int(parts[11]) + int(parts[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


class ListenGateway(GatewayProcess):
    """A gateway with more keys in its `listen:` section (the harness writes that section
    itself)."""

    listen_yaml: str = ""

    def render_config(self) -> str:
        return super().render_config().replace("listen:\n", "listen:\n" + self.listen_yaml, 1)


def terminate_backends(pg: PgBackend, like: str) -> None:
    with psycopg.connect(pg.server.dsn(dbname="postgres"), autocommit=True) as c:
        c.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                  "where usename = %s and query like %s", (SVC, like))


def active_backends(pg: PgBackend, like: str) -> int:
    with psycopg.connect(pg.server.dsn(dbname="postgres"), autocommit=True) as c:
        (n,) = c.execute("select count(*) from pg_stat_activity where usename = %s "
                         "and state = 'active' and query like %s", (SVC, like)).fetchone()
    return int(n)


def pending_approvals(gw: GatewayProcess) -> int:
    import sqlite3

    db = gw.directory / "state" / "approvals.db"
    con = sqlite3.connect(db)
    try:
        (n,) = con.execute("select count(*) from pgwarden_approvals "
                           "where status = 'pending'").fetchone()
    finally:
        con.close()
    return int(n)


TERMINATE = b"X\0\0\0\4"


# ---------------------------------------------------------------------------------------------
# Found by a probe of leaks and limits (each failed before its fix)
# ---------------------------------------------------------------------------------------------






def test_a_partial_message_trickled_in_costs_no_cpu_per_byte(gw: GatewayProcess) -> None:
    """A message arriving in pieces is appended to, not copied whole for every piece: a
    client that sent most of a large (32 MB, under max_message_size) message and then
    trickles one byte every 20 ms must cost the gateway next to no CPU. Before the fix
    MessageFramer.feed copies the whole unfinished message twice on every read
    (`self._buf = bytearray(buf[pos:])` with pos == 0), so each byte costs ~20 ms
    of the event loop every session of the worker shares: 150 bytes keep it ~100% busy."""
    pid = pid_of(gw)
    size = 32 << 20
    with RawClient(gw, timeout=60) as c:
        login(c, gw)
        c.send(b"Q" + struct.pack("!i", size))
        c.send(b"select 1 -- " + b"x" * (size - 4 - 12 - 1000))
        time.sleep(1.5)  # the bulk is in
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        for _ in range(150):
            c.send(b"x")
            time.sleep(0.02)
        spent, elapsed = cpu_seconds(pid) - cpu0, time.monotonic() - t0
    assert spent < 0.5, (f"150 single bytes of an unfinished message cost the gateway "
                         f"{spent:.2f} s of CPU in {elapsed:.2f} s")








def test_a_client_that_leaves_while_held_ends_its_session_and_withdraws_the_request(
        pg: PgBackend, tmp_path: Path) -> None:
    """A client that closes its socket while its statement is held for approval ends its
    session at once: the gateway closes both its sockets, releases the upstream backend
    and withdraws the approval request ("the client disconnected"), so no approver can
    release a statement for a session that is gone. Before the fix the relay pauses reading the
    client while the statement is held, so the close is never seen: sockets, upstream
    backends and a pending request stay for the whole approvals.timeout (60 s here)."""
    g = GatewayProcess(tmp_path / "gw", upstreams_for(pg), policy_dir=POLICY,
                       extra_yaml=audit_yaml(tmp_path) + "approvals:\n  timeout: 60s\n")
    with g:
        pid = pid_of(g)
        with RawClient(g) as c:  # warm up: catalog loaded, approvals store open
            login(c, g)
            query(c, "select 1")
        assert settle(lambda: backends(pg) == 0, 10)
        f0 = fds(pid)
        for _ in range(8):
            with RawClient(g) as c:
                login(c, g)
                c.send(query_message("copy cards (holder, pan) to stdout"))
                notice = c.read_until(b"N", b"Z")[-1]
                assert notice.type == b"N" and "held for approval" in notice.fields()["M"]
        # the client sockets are closed now
        settle(lambda: fds(pid) <= f0 and backends(pg) == 0 and pending_approvals(g) == 0,
               10)
        state = {"fds": fds(pid) - f0, "upstream backends": backends(pg),
                 "pending approval requests": pending_approvals(g)}
        assert state == {"fds": 0, "upstream backends": 0, "pending approval requests": 0}, \
            state


def test_a_query_whose_client_left_is_canceled_upstream(pg: PgBackend, tmp_path: Path) -> None:
    """When a client disconnects while its statement runs, the gateway cancels that
    statement at the server (as it does for sessions it ends itself): an upstream backend
    must not keep working, and stay connected, for a client that is gone. Otherwise the
    gateway's own `listen.max_connections` (2 here) does not bound the upstream backends a
    client makes it hold: connect, send a long query, hang up, repeat. Before the fix the relay
    sends Terminate (which the server reads only once the query is done) and closes: every
    abandoned query runs to its end."""
    g = ListenGateway(tmp_path / "gw", upstreams_for(pg), policy_dir=POLICY)
    g.listen_yaml = "  max_connections: 2\n"
    like = "select pg_sleep(60) as probeG_abandoned%"
    try:
        with g:
            for i in range(6):
                with RawClient(g) as c:
                    login(c, g)
                    c.send(query_message(f"select pg_sleep(60) as probeG_abandoned{i}"))
                    assert settle(lambda: active_backends(pg, like) >= 1, 10)
                    time.sleep(0.2)
            settle(lambda: active_backends(pg, like) == 0, 10)
            left = active_backends(pg, like)
            assert left == 0, f"{left} upstream backends still run queries of clients that left"
    finally:
        terminate_backends(pg, like)


def test_distinct_statement_texts_do_not_pin_unbounded_memory(pg: PgBackend,
                                                               tmp_path: Path) -> None:
    """The caches keyed by SQL text (the parse cache, the analysis cache) must be bounded
    in what they hold, not only in entries: a client sending distinct statements of
    ~15 KB (under the 16 KB the caches take) must not make the gateway keep megabytes
    per text. Here 100 texts, 1.5 MB of SQL, may leave at most 200 MB behind. The parse
    cache (an lru_cache of 4096 entries) kept each text's whole parse tree: ~5 MB per
    text here (~10 MB for a 16 KB select list), so 4096 texts (one session, seconds of
    work) pinned 20-40 GB."""
    g = GatewayProcess(tmp_path / "gw", upstreams_for(pg), policy_dir=POLICY)
    with g:
        pid = pid_of(g)
        with RawClient(g, timeout=60) as c:
            login(c, g)
            query(c, "select holder from cards where id in (1, 2)")
            r0 = rss_kb(pid)
            for i in range(100):
                sql = (f"select holder as h{i} from cards where id in ("
                       + ",".join(["1"] * 7000) + ")")
                assert len(sql) < 16384
                msgs = query(c, sql)
                assert msgs[-1].type == b"Z"
            grown = (rss_kb(pid) - r0) / 1024
        assert grown < 200, f"100 distinct 15 KB statements grew the gateway by {grown:.0f} MB"


def test_too_many_clients_is_reported_to_tls_clients(pg: PgBackend, tmp_path: Path) -> None:
    """At listen.max_connections a client is told why: PostgreSQL's FATAL 53300 "sorry,
    too many clients already", as PostgreSQL itself reports it (after the SSL exchange).
    Before the fix the gateway writes the ErrorResponse before reading anything, i.e. as the
    answer to the client's SSLRequest, which libpq refuses to read ("server sent an error
    response during SSL exchange"): every client using TLS, which the gateway requires
    unless plaintext is allowed, gets no reason at all."""
    g = ListenGateway(tmp_path / "gw", upstreams_for(pg), policy_dir=POLICY)
    g.listen_yaml = "  max_connections: 1\n"
    with g, RawClient(g) as first:
        login(first, g)
        with pytest.raises(psycopg.OperationalError) as e:
            psycopg.connect(g.dsn("payments", sslmode="require"), password=g.token())
        assert "too many clients" in str(e.value), str(e.value)


def test_a_client_pipelining_without_reading_holds_bounded_gateway_memory(
        pg: PgBackend, tmp_path: Path) -> None:
    """A client that pipelines statements and never reads the answers makes the gateway
    hold a bounded amount for it: once some number of requests wait for answers the
    gateway should stop reading that client (backpressure), so one session cannot grow
    the process by more than 64 MB. Before the fix, with an audit trail, every forwarded statement
    keeps its tag / decision state until the server answers, and the gateway reads on
    until the kernel buffers towards the server are full: ~350k `select 1` (5 MB of SQL)
    in flight hold 210-290 MB for one session; a thousand such sessions, 250 GB."""
    g = GatewayProcess(tmp_path / "gw", upstreams_for(pg), policy_dir=POLICY,
                       extra_yaml=audit_yaml(tmp_path))
    with g:
        pid = pid_of(g)
        unit = query_message("select 1")
        chunk = unit * (65536 // len(unit))
        with RawClient(g, timeout=60) as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            login(c, g)
            query(c, "select 1")
            r0 = peak = rss_kb(pid)
            c.sock.settimeout(1.0)
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:
                try:
                    c.sock.sendall(chunk)
                except TimeoutError:
                    break  # the gateway stopped reading
                peak = max(peak, rss_kb(pid))
            time.sleep(1)
            peak = max(peak, rss_kb(pid))
        grown = (peak - r0) / 1024
        assert grown < 64, f"one non-reading pipelining session grew the gateway by {grown:.0f} MB"


# ---------------------------------------------------------------------------------------------
# Covered behaviour
# ---------------------------------------------------------------------------------------------


def _end_terminate(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        login(c, gw)
        query(c, "select 1")
        c.send(TERMINATE)
        c.read_until_close(lenient=True)


def _end_close_when_idle(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        login(c, gw)
        query(c, "select 1")


def _end_close_mid_query(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        login(c, gw)
        c.send(query_message("select pg_sleep(0.2)"))
        time.sleep(0.05)


def _end_close_mid_result(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        login(c, gw)
        c.send(query_message("select g, repeat('x', 200) from generate_series(1, 200000) g"))
        c.recv_exact(1000)


def _end_close_mid_masked_result(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        login(c, gw)
        c.send(query_message("select c.pan, g from cards c, generate_series(1, 50000) g"))
        c.recv_exact(1000)


def _end_close_mid_copy_in(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        login(c, gw, groups=("ci-writers",))
        c.send(query_message("copy transactions (card_id, amount) from stdin"))
        assert c.read_until(b"G", b"Z")[-1].type == b"G"
        row = b"1\t1.00\n"
        c.send(b"d" + struct.pack("!i", len(row) + 4) + row)


def _end_close_mid_copy_out(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        login(c, gw)
        c.send(query_message("copy (select g from generate_series(1, 300000) g) to stdout"))
        c.recv_exact(1000)


def _end_close_in_tls_handshake(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        c.send(SSL_REQUEST)
        assert c.recv_exact(1) == b"S"
        c.send(b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03")  # a ClientHello, cut


def _end_close_tls_session(gw: GatewayProcess) -> None:
    with RawClient(gw, tls=True) as c:
        login(c, gw)
        query(c, "select 1")


def _end_close_in_startup(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        c.send(startup_packet({"user": "ci-bot", "database": "payments"})[:10])


def _end_close_at_password_prompt(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        c.startup({"user": "ci-bot", "database": "payments"})
        c.read_until(b"R")


def _end_refused_token(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        c.startup({"user": "ci-bot", "database": "payments"})
        c.read_until(b"R")
        c.password("not-a-jwt")
        c.read_until_close(lenient=True)


def _end_after_denial(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        login(c, gw)
        assert query(c, "select cvv from cards")[0].fields()["C"] == "42501"


def _end_after_upstream_error(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        login(c, gw)
        assert query(c, "select 1/0")[0].fields()["C"] == "22012"


def _end_in_transaction_holding_locks(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        login(c, gw)
        query(c, "begin")
        query(c, "select id from cards for update")


def _end_after_cancel(gw: GatewayProcess) -> None:
    with RawClient(gw) as c:
        key = next(m for m in login(c, gw) if m.type == b"K")
        c.send(query_message("select pg_sleep(5)"))
        time.sleep(0.1)
        (gw_pid,) = struct.unpack("!i", key.body[:4])
        with RawClient(gw) as cc:
            cc.send(cancel_request(gw_pid, key.body[4:]))
            cc.read_until_close(lenient=True)
        assert any(m.type == b"E" and m.fields()["C"] == "57014" for m in c.read_until(b"Z"))


ENDINGS: dict[str, Callable[[GatewayProcess], None]] = {
    name.removeprefix("_end_"): fn for name, fn in dict(globals()).items()
    if name.startswith("_end_")}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_sessions_ending_every_way_release_fds_and_backends(gw: GatewayProcess, pg: PgBackend,
                                                            ending: str) -> None:
    """After 15 sessions ending `ending`, the gateway's fds and upstream backends are back
    at their baseline within 10 s (held-for-approval is the exception: see above)."""
    pid = pid_of(gw)
    _end_terminate(gw)
    assert settle(lambda: backends(pg) == 0, 10)
    f0 = fds(pid)
    for _ in range(15):
        ENDINGS[ending](gw)
    settle(lambda: fds(pid) <= f0 and backends(pg) == 0, 10)
    assert (fds(pid) - f0, backends(pg)) == (0, 0)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("sql", [
    "select g, repeat('x', 1000) from generate_series(1, 300000) g",
    "select c.pan, repeat('x', 1000) from cards c, generate_series(1, 60000) g",
    "copy (select g, repeat('x', 1000) from generate_series(1, 300000) g) to stdout",
], ids=["rows", "masked", "copy"])
def test_a_client_that_stops_reading_a_big_result_gets_backpressure(
        gw: GatewayProcess, tls: bool, sql: str) -> None:
    """A 300 MB result a client does not read is not buffered in the gateway: it stops
    reading the server (the gateway grows by less than 32 MB)."""
    pid = pid_of(gw)
    r0 = rss_kb(pid)
    with RawClient(gw, tls=tls, timeout=60) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        login(c, gw)
        c.send(query_message(sql))
        peak = r0
        for _ in range(8):
            time.sleep(0.5)
            peak = max(peak, rss_kb(pid))
    assert (peak - r0) / 1024 < 32


def test_max_connections_refuses_with_53300_and_recovers(pg: PgBackend, tmp_path: Path) -> None:
    """Past listen.max_connections a (raw) client gets FATAL 53300 and the socket is
    closed, nothing leaks; once a session ends, a new one is accepted."""
    g = ListenGateway(tmp_path / "gw", upstreams_for(pg), policy_dir=POLICY)
    g.listen_yaml = "  max_connections: 3\n"
    with g:
        pid = pid_of(g)
        held = []
        try:
            for _ in range(3):
                c = RawClient(g)
                login(c, g)
                held.append(c)
            f_full = fds(pid)
            for _ in range(30):
                with RawClient(g) as c:  # (told once its startup is read, as PostgreSQL)
                    c.startup({"user": "ci-bot", "database": "payments"})
                    msgs = c.read_until_close()
                assert [m.fields()["C"] for m in msgs] == ["53300"]
            assert settle(lambda: fds(pid) <= f_full, 5)
            held.pop().close()
            time.sleep(0.3)
            with psycopg.connect(g.dsn("payments"), password=g.token(), autocommit=True) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
        finally:
            for c in held:
                c.close()


def test_a_cancel_request_is_served_at_max_connections(pg: PgBackend, tmp_path: Path) -> None:
    """A cancel request comes on a connection of its own: a full gateway must still serve
    it (PostgreSQL does), or a client cannot stop its own runaway query when it is most
    needed. It was refused with 53300 before the packet was read."""

    g = ListenGateway(tmp_path / "gw", upstreams_for(pg), policy_dir=POLICY)
    g.listen_yaml = "  max_connections: 2\n"
    with g, psycopg.connect(g.dsn("payments"), password=g.token(), autocommit=True) as a, \
            psycopg.connect(g.dsn("payments"), password=g.token(), autocommit=True):
        t, errors = executing(a, "select pg_sleep(30)")
        assert settle(lambda: active_backends(pg, "select pg_sleep(30)%") == 1, 10)
        a.cancel()
        t.join(15)
        assert not t.is_alive()
        assert errors and isinstance(errors[0], psycopg.errors.QueryCanceled), errors
        assert a.execute("select 1").fetchone() == (1,)


def _rich_session(gw: GatewayProcess, i: int) -> None:
    """A session with its own identity, application_name, search_path, temp table and
    statement texts."""
    with RawClient(gw) as c:
        c.startup({"user": "ci-bot", "database": "payments", "application_name": f"app-{i}",
                   "search_path": f"s{i}, public"})
        c.read_until(b"R")
        c.password(gw.token(subject=f"bot-{i}"))
        assert c.read_until(b"Z", b"E")[-1].type == b"Z"
        query(c, f"create temp table t{i} (x int, y text)")
        query(c, f"select x, y from t{i} where x = {i}")
        query(c, f"select pan, holder from cards where id = {i}")
        query(c, f"select cvv from cards where id = {i}")
        query(c, f"set application_name = 'other-{i}'")
        query(c, f"select 1 as v{i}")
        c.send(TERMINATE)


def test_memory_plateaus_over_sessions_with_new_identities_names_and_temp_tables(
        gw: GatewayProcess, pg: PgBackend) -> None:
    """Per-process caches stay bounded when every session brings a new identity,
    application_name, search_path, temp table and texts: sessions 900-1400 grow the
    gateway by much less than sessions 0-500 did (caches full by then)."""
    pid = pid_of(gw)
    f0, r0 = fds(pid), rss_kb(pid)
    for i in range(500):
        _rich_session(gw, i)
    for i in range(500, 900):
        _rich_session(gw, i)
    r1 = rss_kb(pid)
    for i in range(900, 1400):
        _rich_session(gw, i)
    r2 = rss_kb(pid)
    assert (r2 - r1) / 1024 < 25, ((r1 - r0) / 1024, (r2 - r1) / 1024)
    assert settle(lambda: fds(pid) <= f0 and backends(pg) == 0, 10)


def test_a_statement_longer_than_the_gateway_reads_is_refused_unread(
        pg: PgBackend, tmp_path: Path) -> None:
    """Parsing and lexing a statement text holds its worker, every session of it, for
    about a second per MB (a 3.5 MB INSERT ... VALUES: 4 s). A text longer than
    policy.max_statement_size is refused with 54000 before it is read, over the simple
    and the extended protocol, recorded by its size only; the session goes on, and a text
    under the limit runs."""
    import json

    limit = 64 * 1024
    policy = (f"policy:\n  bundle: {json.dumps(str(POLICY))}\n  allow_unsigned: true\n"
              f"  max_statement_size: 64KiB\n")
    g = GatewayProcess(tmp_path / "gw", upstreams_for(pg), policy_yaml=policy,
                       extra_yaml=audit_yaml(tmp_path))
    values = ",".join(["1"] * 40_000)
    long_text = f"select holder from cards where id in ({values})"
    assert len(long_text) > limit
    short_text = f"select holder from cards where id in ({','.join(['1'] * 1000)})"
    with g, psycopg.connect(g.dsn("payments"), password=g.token(), autocommit=True) as c:
        for prepare in (False, True):  # a Query, then Parse/Bind/Execute
            with pytest.raises(psycopg.errors.ProgramLimitExceeded,
                               match="longer than this gateway analyzes") as e:
                c.execute(long_text, prepare=prepare)
            assert "policy.max_statement_size: 65536 bytes" in str(e.value)
            assert c.execute(short_text, prepare=prepare).fetchall() is not None
    records = [r for r in read_records(tmp_path / "audit")
               if r["type"] == "decision" and r.get("sqlstate") == "54000"]
    assert len(records) == 2
    assert all(r["sql"] == f"(a statement of {len(long_text)} bytes, not read)"
               and r["outcome"] == "denied" for r in records)
