"""Shared pytest fixtures.

``pg``: one embedded PostgreSQL for the whole run, with a ``payments`` database and three
roles that authenticate over TCP with SCRAM, md5 and trust respectively.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# The project isn't necessarily installed into the venv (and pytest only puts tests/ on
# sys.path), so make `gateway` importable from the checkout.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# The raw-protocol test client lives in a plain module: give its asserts pytest's messages.
pytest.register_assert_rewrite("rawclient")

from gateway.devtools.embedded_pg import EmbeddedPostgres  # noqa: E402
from gateway.devtools.harness import GatewayProcess, UpstreamSpec  # noqa: E402
from gateway.devtools.sample_data import PAYMENTS_SCHEMA  # noqa: E402
from gateway.devtools.transports import MemoryTransport  # noqa: E402,F401 (tests import it here)

# ---------------------------------------------------------------------------------------------
# PostgreSQL backend
# ---------------------------------------------------------------------------------------------

PAYMENTS_DB = "payments"


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (tools/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"pgwarden_tool_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Role:
    name: str
    password: str | None


@dataclass(frozen=True)
class PgBackend:
    """What the ``pg`` fixture yields: the server plus the roles/database set up on it."""

    server: EmbeddedPostgres
    service: Role  # SCRAM, owns the payments database
    legacy: Role  # md5
    trust: Role  # trust (no password over TCP)
    dbname: str = PAYMENTS_DB

    def dsn(self, role: Role, dbname: str | None = None) -> str:
        return self.server.dsn(user=role.name, password=role.password,
                               dbname=dbname or self.dbname)


def _grant_payments_access(server: EmbeddedPostgres, owner: Role, *roles: Role) -> None:
    names = ", ".join(role.name for role in roles)
    server.psql(
        f"GRANT USAGE ON SCHEMA public TO {names};\n"
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {names};\n"
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {names};\n",
        dbname=PAYMENTS_DB, user=owner.name,
    )


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBackend]:
    with EmbeddedPostgres(tmp_path_factory.mktemp("pg")) as server:
        service = Role("pgwarden_svc", secrets.token_urlsafe(16))
        legacy = Role("legacy_svc", secrets.token_urlsafe(16))
        trust = Role("trust_svc", None)
        server.add_role(service.name, service.password, method="scram-sha-256")
        server.add_role(legacy.name, legacy.password, method="md5")
        server.add_role(trust.name, trust.password, method="trust")
        server.create_database(PAYMENTS_DB, owner=service.name)
        # Run as the owner so the tables belong to the service role, not the superuser.
        server.psql(PAYMENTS_SCHEMA, dbname=PAYMENTS_DB, user=service.name)
        _grant_payments_access(server, service, legacy, trust)
        yield PgBackend(server=server, service=service, legacy=legacy, trust=trust)


# ---------------------------------------------------------------------------------------------
# Gateway
# ---------------------------------------------------------------------------------------------


def upstreams_for(pg: PgBackend) -> dict[str, UpstreamSpec]:
    """One gateway connection per upstream auth method: SCRAM, md5 and trust."""
    host, port = pg.server.host, pg.server.port
    return {
        "payments": UpstreamSpec(host, port, pg.dbname, pg.service.name, pg.service.password),
        "legacy": UpstreamSpec(host, port, pg.dbname, pg.legacy.name, pg.legacy.password),
        "trusty": UpstreamSpec(host, port, pg.dbname, pg.trust.name, None),
    }


@pytest.fixture(scope="session")
def gateway(pg: PgBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway process shared by the run: TLS on, plaintext allowed (loopback)."""
    gw = GatewayProcess(tmp_path_factory.mktemp("gateway"), upstreams_for(pg))
    with gw:
        yield gw
    assert gw.proc is not None and gw.proc.returncode == 0, gw.log_text()[-4000:]


@pytest.fixture(scope="session")
def token(gateway: GatewayProcess) -> str:
    return gateway.token()


def unverified_tls() -> ssl.SSLContext:
    """TLS to the test gateway's self-signed certificate (encrypted, not verified)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def asyncpg_connect(gw: GatewayProcess, **kw: Any) -> Any:
    """asyncpg through the gateway over TLS, as ci-bot (a fresh token unless given)."""
    import asyncpg

    kw.setdefault("password", gw.token())
    return await asyncpg.connect(host=gw.host, port=gw.port, user="ci-bot",
                                 database="payments", ssl=unverified_tls(), **kw)


def asyncpg_cursor(gw: GatewayProcess, sql: str, prefetch: int, **kw: Any) -> list[Any]:
    """The first column of `sql`'s rows as asyncpg's cursor fetches them, `prefetch` at a
    time (Executes with a row count, answered by PortalSuspended), in a transaction."""
    import asyncio

    async def main() -> list[Any]:
        conn = await asyncpg_connect(gw, **kw)
        try:
            async with conn.transaction():
                return [r[0] async for r in conn.cursor(sql, prefetch=prefetch)]
        finally:
            await conn.close()

    return asyncio.run(main())


def fill_disk(disk: Path) -> Path:
    """Fill the (small tmpfs) file system of `disk` to its last byte; the filler file, to
    unlink when space is to return."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 64, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler


def audit_yaml(d: Path) -> str:
    """The audit section of a test gateway's config: its trail in `d`/audit, signed with
    a key pair made in `d` (audit.pem, audit.pub)."""
    from gateway.audit import generate_keypair

    generate_keypair(d / "audit.pem", d / "audit.pub")
    return (f"audit:\n  dir: {json.dumps(str(d / 'audit'))}\n"
            f"  signing_key: {{file: {json.dumps(str(d / 'audit.pem'))}}}\n")


def executing(conn: Any, sql: str) -> tuple[threading.Thread, list[BaseException]]:
    """`conn.execute(sql)` on a thread of its own, started: the thread, and the exception
    the statement ended with, if any (one to cancel, or to end the session under)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn.execute(sql)
        except BaseException as e:  # (handed to the test's thread)
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def read_records(directory: Path) -> list[dict[str, Any]]:
    """Every record of the audit trail in `directory` (its segments in order)."""
    out = []
    for f in sorted(directory.glob("*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def pgwarden(*args: str) -> subprocess.CompletedProcess[str]:
    """The `pgwarden` command line, run from the checkout (its output as text)."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd=REPO_ROOT)


def ended_session(audit_dir: Path, marks: Callable[[dict[str, Any]], bool],
                  timeout: float = 20.0) -> list[dict[str, Any]]:
    """The records of the session of the last record `marks` picks (its session.start,
    a decision...), once that session's session.end is written."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(audit_dir)
        marked = [r["session"] for r in records if marks(r)]
        if marked:
            mine = [r for r in records if r.get("session") == marked[-1]]
            if any(r["type"] == "session.end" for r in mine):
                return mine
        assert time.monotonic() < deadline, "no such session ended in time"
        time.sleep(0.1)


def app_session(audit_dir: Path, app: str) -> list[dict[str, Any]]:
    """The records of the (last) session whose application_name is `app`, once ended."""
    return ended_session(audit_dir, lambda r: r["type"] == "session.start"
                         and r["where"]["application_name"] == app)


# -- policy input documents ---------------------------------------------------------------


def rel(name: str, access: list[str]) -> dict[str, Any]:
    return {"schema": "public", "name": name, "access": access}


def statement(
    sql: str,
    command: str,
    kind: str,
    relations: list[dict[str, Any]] | None = None,
    columns: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    stmt = {
        "sql": sql,
        "fingerprint": f"fp:{sql}",
        "command": command,
        "kind": kind,
        "relations": relations or [],
        "columns": columns or [],
        "functions": [],
        "has_where": " where " in sql.lower(),
        "limit": None,
        "index": 0,
        "count": 1,
        "protocol": "simple",
    }
    stmt.update(extra)
    return stmt


def make_input(groups: list[str], stmt: dict[str, Any], granted: bool = False) -> dict[str, Any]:
    return {
        "identity": {
            "subject": "repo:acme/payments:ref:refs/heads/main",
            "issuer": "https://token.actions.githubusercontent.com",
            "groups": groups,
            "claims": {"repository": "acme/payments"},
            "method": "jwt",
        },
        "connection": {
            "name": "cardholder",
            "database": "payments",
            "user": "ci-bot",
            "application_name": "psql",
            "client_addr": "10.20.0.7",
            "tls": True,
            "networks": ["ci-runners"],
        },
        "session": {"id": "session-1", "started_at": "2025-01-15T09:30:00Z"},
        "statement": stmt,
        "approval": {"granted": granted, "id": "apr-1" if granted else None},
    }
