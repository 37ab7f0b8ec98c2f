"""Operating the gateway when what it depends on fails, at start and while running.

Real `pgwarden serve` processes, real PostgreSQL servers (one of them this module's own, to
stop and restart), real clients. Each test's docstring says what an operator should get.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PgBackend, executing
from rawclient import RawClient, expect_fatal

from gateway.audit import generate_keypair
from gateway.devtools.certs import write_self_signed
from gateway.devtools.embedded_pg import EmbeddedPostgres
from gateway.devtools.harness import GatewayProcess, UpstreamSpec
from gateway.devtools.sample_data import PAYMENTS_SCHEMA

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
    id) without a restart, as the store itself reconnects. Before the fix `GatewayServer.start`
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


def test_a_sighup_during_start_does_not_kill_the_gateway(tmp_path: Path) -> None:
    """serve.py means a SIGHUP that arrives while the gateway is still starting to be
    remembered and acted on once it serves (`early_hup`). One sent 0.4 s after the
    process started (a config-management `reload` right after a `start`) must not kill
    it: it is killed by the signal's default action while `gateway.serve` is imported."""
    gw = GatewayProcess(tmp_path / "gw", NOWHERE).prepare()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "-c", str(gw.config_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=gw.env(), cwd=str(gw.directory))
    try:
        time.sleep(0.4)
        proc.send_signal(signal.SIGHUP)
        time.sleep(4)
        assert proc.poll() is None, f"killed: exit {proc.returncode}"
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.parametrize("damage", ["garbage_certificate", "key_of_another_certificate"])
def test_an_unloadable_listen_certificate_is_a_config_error(tmp_path: Path, damage: str) -> None:
    """A listen.tls certificate or key that cannot be loaded (not PEM, or a key that does
    not belong to the certificate) is a config mistake: `pgwarden serve` exits 2 with
    `gateway.yaml:N: listen.tls...: <reason>`, not a Python traceback and exit 1."""
    gw = GatewayProcess(tmp_path / "gw", NOWHERE).prepare()
    certs = gw.directory / "certs"
    if damage == "garbage_certificate":
        (certs / "gateway.pem").write_text("this is not a certificate\n")
    else:
        write_self_signed(tmp_path / "other.pem", tmp_path / "other.key")
        (certs / "gateway.key").write_bytes((tmp_path / "other.key").read_bytes())
    out = serve(gw)
    assert "Traceback" not in out.stderr, out.stderr[-1500:]
    assert out.returncode == 2, out.stderr[-1500:]
    assert any(f"{gw.config_path}:" in line and "listen.tls" in line
               for line in plain_lines(out.stderr)), out.stderr[-1500:]


def test_an_unloadable_admin_certificate_is_named_not_reported_as_a_bind_failure(
        tmp_path: Path) -> None:
    """An admin.tls certificate that cannot be loaded is reported as that (exit 2, naming
    admin.tls), not as `Failed to bind to address ...`: nothing is wrong with the port."""
    gw = GatewayProcess(tmp_path / "gw", NOWHERE).prepare()
    (gw.directory / "bad.pem").write_text("this is not a certificate\n")
    gw.extra_yaml = (f"admin:\n  grpc: 127.0.0.1:{free_port()}\n"
                     "  tls: {cert: bad.pem, key: certs/gateway.key}\n")
    gw.prepare()
    out = serve(gw)
    assert out.returncode == 2, out.stderr[-1500:]
    lines = plain_lines(out.stderr)
    assert lines and "admin.tls" in lines[-1] and "bind" not in lines[-1], out.stderr[-1500:]


@pytest.mark.parametrize("taken", ["listen", "admin_http", "admin_grpc"])
def test_a_port_in_use_is_said_in_plain_words(tmp_path: Path, taken: str) -> None:
    """A port already in use stops the start with exit 2 and a `pgwarden: ...` line naming
    the address (and, for the admin HTTP port, that it is admin.http), as every other
    start failure has, not only a JSON `gateway.listen_failed` line that calls an admin
    port the listener."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        gw = GatewayProcess(tmp_path / "gw", NOWHERE)
        if taken == "listen":
            gw.port = port
        else:
            gw.extra_yaml = f"admin:\n  {taken[6:]}: 127.0.0.1:{port}\n"
        gw.prepare()
        out = serve(gw)
    assert out.returncode == 2, out.stderr[-1500:]
    lines = [line for line in plain_lines(out.stderr) if str(port) in line]
    assert lines, out.stderr[-1500:]
    key = "listen.address" if taken == "listen" else taken.replace("_", ".")
    assert f"({key})" in lines[-1] and "cannot listen on" in lines[-1], lines


def test_library_log_lines_are_json_and_scanned_too() -> None:
    """What a library logs (asyncio's "Task exception was never retrieved", grpc's
    warnings) is a JSON line like the gateway's own, card numbers masked, not Python's
    last-resort plain text (in a fresh process: the test runner handles the root logger
    itself, which the gateway then leaves alone)."""
    script = (
        "import io, json, logging\n"
        "from gateway import logs\n"
        "s = io.StringIO()\n"
        "logs.configure('info', s)\n"
        "logging.getLogger('asyncio').error('Task exception: card 4111111111111111')\n"
        "logging.getLogger('some.library').info('below the level: not shown')\n"
        "print(s.getvalue(), end='')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=str(REPO))
    (line,) = [json.loads(text) for text in out.stdout.splitlines()]
    assert line["event"] == "python.asyncio" and line["level"] == "error", line
    assert "4111111111111111" not in out.stdout and "Task exception" in line["message"]
    assert out.stderr == ""


class _Jwks:
    """An IdP's JWKS endpoint on 127.0.0.1 answering in one of several bad ways."""

    def __init__(self, body: bytes, mode: str) -> None:
        self.body, self.mode = body, mode
        self.stopped = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if outer.mode == "trickle":  # the headers at once, then a byte a second
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(outer.body)))
                    self.end_headers()
                    for b in outer.body:
                        if outer.stopped.wait(1.0):
                            return
                        self.wfile.write(bytes([b]))
                        self.wfile.flush()
                    return
                body = outer.body
                if outer.mode == "unusable_keys":
                    body = json.dumps({"keys": [{"kty": "RSA", "n": {"a": 1}, "e": [1]}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"

    def close(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


def _jwks_url_gateway(tmp_path: Path, url: str) -> GatewayProcess:
    gw = GatewayProcess(tmp_path / "gw", NOWHERE).prepare()
    text = gw.config_path.read_text().replace("jwks: {file: issuer/jwks.json}",
                                              f"jwks: {{url: {json.dumps(url)}}}")
    gw.config_path.write_text(text)
    gw.prepare = lambda: gw  # type: ignore[method-assign]  (keep the edited config)
    return gw


@pytest.mark.parametrize("mode", ["down", "unusable_keys"])
def test_jwks_problems_are_logged_as_json_lines(tmp_path: Path, mode: str) -> None:
    """Logs are JSON lines on stderr (README). A JWKS URL that is down, or that serves a
    key it cannot use, is logged as a JSON line with an event name, like the rest: before the fix
    `gateway.identity.jwks` logs through the stdlib root logger, whose last-resort
    handler writes plain text (`could not load JWKS from ...`, `ignoring JWKS key ...`)."""
    jwks = None
    if mode == "down":
        url = f"http://127.0.0.1:{free_port()}/jwks"
    else:
        jwks = _Jwks(b"", mode)
        url = jwks.url
    gw = _jwks_url_gateway(tmp_path, url)
    try:
        with gw:
            with pytest.raises(psycopg.OperationalError, match=r"unavailable|not known"):
                psycopg.connect(gw.dsn("payments"), password=gw.token()).close()
            time.sleep(0.3)
    finally:
        if jwks is not None:
            jwks.close()
    raw = [d["raw"] for d in gw.logs if "raw" in d]
    assert not raw, raw


def test_a_hung_upstream_is_reported_as_unreachable_not_as_a_slow_client(
        tmp_path: Path) -> None:
    """An upstream that accepts TCP but never answers (a hung or SIGSTOPped postmaster, a
    black-holed proxy) ends the login with 08001 `the upstream ... is unreachable` and an
    `upstream.unreachable` error in the log. With the default timeouts (both 10 s) the
    session's startup_timeout fires first: the client is told 08P01 `the client did not
    complete startup in time`, and the log has only an info `session.end` blaming the
    startup: the operator is sent looking at the client."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        spec = UpstreamSpec("127.0.0.1", hung.getsockname()[1], "payments", "svc", "pw")
        with GatewayProcess(tmp_path / "gw", {"payments": spec}) as gw:
            fields = fatal_of(gw)
            assert (fields["C"], "upstream" in fields["M"]) == ("08001", True), fields
            gw.wait_for_log(lambda d: d.get("event") == "upstream.unreachable", timeout=3)


class Upstream:
    def __init__(self, server: EmbeddedPostgres) -> None:
        self.server = server
        self.roles: dict[str, str] = {}

    def role(self, name: str) -> UpstreamSpec:
        """A login role owning its own `name` database with a table t(id, v)."""
        if name not in self.roles:
            self.roles[name] = secrets.token_urlsafe(16)
            self.server.add_role(name, self.roles[name])
            self.server.create_database(name, owner=name)
            self.server.psql("CREATE TABLE t (id int PRIMARY KEY, v text);"
                             "INSERT INTO t VALUES (1, 'a');", dbname=name, user=name)
        return UpstreamSpec(self.server.host, self.server.port, name, name, self.roles[name])

    def stop(self, mode: str = "fast") -> None:
        self.server._pg_ctl("-m", mode, "-w", "-t", "60", "stop")

    def start(self) -> None:
        self.server._pg_ctl("-l", str(self.server.log_path), "-w", "-t", "60", "start")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    with EmbeddedPostgres(tmp_path_factory.mktemp("probeD-pg")) as server:
        yield Upstream(server)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_an_upstream_restart_gives_open_sessions_an_error_and_new_ones_work(
        upstream: Upstream, tmp_path: Path, mode: str) -> None:
    """(Passes.) The upstream restarted (fast or immediate shutdown) under an idle session
    and one running a query: both get an error with a SQLSTATE at once (57P01 or 08006),
    a new session while it is down gets a FATAL naming the upstream unreachable, and once
    it is back new sessions (catalog, prepared statements) work; no traceback logged."""
    spec = upstream.role(f"restart_{mode}")
    with GatewayProcess(tmp_path / "gw", {"payments": spec}) as gw:
        idle = psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True)
        busy = psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True)
        assert idle.execute("select v from t").fetchone() == ("a",)
        th, errors = executing(busy, "select pg_sleep(20)")
        time.sleep(0.5)
        t0 = time.monotonic()
        upstream.stop(mode)
        try:
            th.join(10)
            assert not th.is_alive() and time.monotonic() - t0 < 10
            assert getattr(errors[0], "sqlstate", None) in ("57P01", "08006"), errors
            with pytest.raises(psycopg.Error) as idle_error:
                idle.execute("select 1")
            assert idle_error.value.sqlstate in ("57P01", "08006")
            assert fatal_of(gw)["C"] == "08001"
        finally:
            upstream.start()
        with psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True) as c:
            c.execute("prepare p as select v from t where id = $1")
            assert c.execute("execute p(1)").fetchone() == ("a",)
            assert c.execute("select v from t where id = %s", (1,)).fetchone() == ("a",)
        idle.close()
        busy.close()
    assert "Traceback" not in gw.log_text() and not [d for d in gw.logs if "raw" in d]


def test_an_upstream_down_at_start_is_used_once_it_is_back(upstream: Upstream,
                                                           tmp_path: Path) -> None:
    """(Passes.) The upstream is down when the gateway starts: the gateway starts, a login
    gets a FATAL 08001 naming the upstream, and the first login after it is back works."""
    spec = upstream.role("down_at_start")
    upstream.stop("fast")
    try:
        with GatewayProcess(tmp_path / "gw", {"payments": spec}) as gw:
            fields = fatal_of(gw)
            assert fields["C"] == "08001" and "unreachable" in fields["M"], fields
            upstream.start()
            with psycopg.connect(gw.dsn("payments"), password=gw.token()) as c:
                assert c.execute("select v from t").fetchone() == ("a",)
    finally:
        if not (upstream.server.data_dir / "postmaster.pid").exists():
            upstream.start()


def test_a_rotated_password_or_dropped_database_is_a_clear_fatal_without_secrets(
        upstream: Upstream, tmp_path: Path) -> None:
    """(Passes.) The vaulted password no longer works upstream (rotated there first), or
    the database the connection names was dropped: a login gets FATAL 08001 naming the
    connection, the log says why (upstream SQLSTATE 28P01 / 3D000), and no password
    appears in any output."""
    rotated, dropped = upstream.role("rotated"), upstream.role("dropped")
    rotated_pw, dropped_pw = upstream.roles["rotated"], upstream.roles["dropped"]
    with GatewayProcess(tmp_path / "gw", {"rotated": rotated, "dropped": dropped}) as gw:
        upstream.server.psql("ALTER ROLE rotated PASSWORD 'rotated-in-the-vault-later'")
        upstream.server.psql("DROP DATABASE dropped WITH (FORCE)")
        for name, code in (("rotated", "28P01"), ("dropped", "3D000")):
            fields = fatal_of(gw, name)
            assert fields["C"] == "08001" and name in fields["M"], fields
            gw.wait_for_log(lambda d, code=code: d.get("event") == "upstream.login_failed"
                            and d.get("sqlstate") == code)
    text = gw.log_text()
    for secret in (rotated_pw, dropped_pw, "rotated-in-the-vault-later"):
        assert secret not in text


def test_a_catalog_that_cannot_be_reloaded_mid_session_is_named(upstream: Upstream,
                                                                tmp_path: Path) -> None:
    """Sessions are open when the vaulted password stops working upstream (rotated there
    first); one of them commits DDL, which drops the catalog snapshot. The next statement
    of another session cannot have a fresh catalog: it is refused like a session start
    without one (58000, `could not read the catalog of connection ...`, log
    `catalog.load_failed`). Before the fix it gets XX000 `internal gateway error while deciding a
    statement`, logged as `session.gate_error` UpstreamRefused and as a
    `session.protocol_violation`."""
    spec = upstream.role("catalog_rot")
    with GatewayProcess(tmp_path / "gw", {"payments": spec}) as gw:
        a = psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True)
        b = psycopg.connect(gw.dsn("payments"), password=gw.token(), autocommit=True)
        try:
            assert b.execute("select v from t").fetchone() == ("a",)
            upstream.server.psql("ALTER ROLE catalog_rot PASSWORD 'changed-upstream'")
            a.execute("create table u (id int)")
            with pytest.raises(psycopg.Error) as err:
                b.execute("select v from t")
            assert err.value.sqlstate == "58000", (err.value.sqlstate, str(err.value))
            assert "catalog" in str(err.value)
        finally:
            a.close()
            b.close()
            upstream.server.psql(f"ALTER ROLE catalog_rot PASSWORD '{spec.password}'")


def test_masking_holds_after_the_table_is_recreated_out_of_band(pg: PgBackend,
                                                                tmp_path: Path) -> None:
    """(Passes.) A migration run directly on the upstream recreates `cards` with its
    columns in another order (new OID) while the gateway holds the old catalog snapshot:
    card numbers still leave masked, and the cvv is still refused."""
    pg.server.create_database("probed_recreate", owner=pg.service.name)
    pg.server.psql(PAYMENTS_SCHEMA, dbname="probed_recreate", user=pg.service.name)
    spec = UpstreamSpec(pg.server.host, pg.server.port, "probed_recreate", pg.service.name,
                        pg.service.password)
    with GatewayProcess(tmp_path / "gw", {"payments": spec}, policy_dir=PCI) as gw:
        def ask(sql: str) -> Any:
            with psycopg.connect(gw.dsn("payments"), password=gw.token()) as c:
                return c.execute(sql).fetchall()

        before = ask("select holder, pan from cards order by holder")
        assert all(p.startswith("****") for _, p in before)
        pg.server.psql(
            "ALTER TABLE cards RENAME TO cards_old;"
            "CREATE TABLE cards (id serial PRIMARY KEY, pan text, holder text, cvv text,"
            " expiry text);"
            "INSERT INTO cards (pan, holder, cvv, expiry)"
            " SELECT pan, holder, cvv, expiry FROM cards_old;",
            dbname="probed_recreate", user=pg.service.name)
        assert ask("select holder, pan from cards order by holder") == before
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            ask("select * from cards")


def test_an_audit_postgres_sink_restart_is_survived(pg: PgBackend, tmp_path: Path) -> None:
    """(Passes.) The audit trail's PostgreSQL sink restarts under a running gateway: the
    statement whose record cannot be written is refused with 58030, and once the sink's
    server is back new sessions work without a restart of the gateway, and the sink's
    password appears in no log line."""
    with EmbeddedPostgres(tmp_path / "apg") as apg:
        password = secrets.token_urlsafe(16)
        apg.add_role("audit_svc", password)
        apg.create_database("audit", owner="audit_svc")
        generate_keypair(tmp_path / "audit.pem", tmp_path / "audit.pub")
        spec = UpstreamSpec(pg.server.host, pg.server.port, pg.dbname, pg.service.name,
                            pg.service.password)
        gw = GatewayProcess(tmp_path / "gw", {"payments": spec})
        gw.extra_env["PROBED_AUDIT_DSN"] = apg.dsn(user="audit_svc", password=password,
                                                   dbname="audit")
        gw.extra_yaml = (f"audit:\n  dir: {json.dumps(str(tmp_path / 'audit'))}\n"
                         f"  signing_key: {{file: {json.dumps(str(tmp_path / 'audit.pem'))}}}\n"
                         "  sink: postgres\n  postgres: {dsn: {env: PROBED_AUDIT_DSN}}\n")
        with gw:
            with psycopg.connect(gw.dsn("payments"), password=gw.token(),
                                 autocommit=True) as c:
                assert c.execute("select 1").fetchone() == (1,)
                apg._pg_ctl("-m", "fast", "-w", "stop")
                with pytest.raises(psycopg.Error) as err:  # (a new decision: not a repeat)
                    c.execute("select 2 as two")
                assert err.value.sqlstate == "58030"
            apg._pg_ctl("-l", str(apg.log_path), "-w", "start")
            deadline = time.monotonic() + 15
            while True:
                try:
                    with psycopg.connect(gw.dsn("payments"), password=gw.token()) as c:
                        assert c.execute("select 3").fetchone() == (3,)
                    break
                except psycopg.Error:
                    assert time.monotonic() < deadline, gw.log_text()[-2000:]
                    time.sleep(0.5)
        assert gw.proc is not None and gw.proc.returncode == 0
        assert password not in gw.log_text()


def test_a_trickling_jwks_url_does_not_hold_up_the_start(tmp_path: Path) -> None:
    """A JWKS URL that answers a byte a second (a sick IdP, a proxy) costs the start at
    most the fetch timeout (5 s): the gateway then listens and logs the keys as
    unavailable. Before the fix urlopen's timeout is per socket read, `JwtVerifier.prime()` has no
    deadline, and the gateway does not listen until the whole document has trickled in
    (minutes), nor stop on SIGTERM meanwhile."""
    gw0 = GatewayProcess(tmp_path / "gw", NOWHERE).prepare()
    jwks = _Jwks((gw0.directory / "issuer" / "jwks.json").read_bytes(), "trickle")
    gw = _jwks_url_gateway(tmp_path, jwks.url)
    # ends the trickle after the test has had its answer, so the gateway can then stop
    rescue = threading.Timer(16, jwks.stopped.set)
    rescue.start()
    try:
        gw.start(timeout=12)
    except RuntimeError as e:
        pytest.fail(f"{e}: the gateway waited on the JWKS URL")
    finally:
        rescue.cancel()
        jwks.close()
        gw.stop()
