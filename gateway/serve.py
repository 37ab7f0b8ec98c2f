"""`pgwarden serve`: run the gateway until SIGTERM/SIGINT, then drain and exit 0."""

from __future__ import annotations

import asyncio
import collections
import gc
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from gateway import logs
from gateway.audit import AuditError, AuditKeyError
from gateway.bundle.reloader import BundleStartupError
from gateway.config.loader import ConfigError, load_config
from gateway.config.model import GatewayConfig
from gateway.identity.verifier import JwtVerifier
from gateway.proxy.server import CannotListen, GatewayServer, SessionCounts

# A worker that dies is replaced, unless workers died this often: then something is wrong
# with every start (the host, the config) and the gateway stops, for its service manager
# to see.
RESTARTS_MAX = 5
RESTART_WINDOW = 60.0
START_FAILED = 2  # a worker's exit status when it could not start (see _main)
# Blocked from `pgwarden serve`'s first moment (cli.main) until a process has its own
# handlers: one that came meanwhile waits, instead of killing it by its default action.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(f"pgwarden: {e}", file=sys.stderr)
        return 2
    logs.configure(config.log.level)
    try:
        verifier = JwtVerifier(config.identity.providers)
    except ValueError as e:
        print(f"pgwarden: {config.source}: identity: {e}", file=sys.stderr)
        return 2
    workers = config.listen.workers
    if workers <= 1:
        return _run_loop(config, verifier, 0)
    return _supervise(config, verifier, workers)


def _run_loop(config: GatewayConfig, verifier: JwtVerifier, worker_id: int,
              peer_dir: Path | None = None, counts: SessionCounts | None = None) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        return asyncio.run(_main(config, verifier, worker_id, peer_dir, counts))
    return uvloop.run(_main(config, verifier, worker_id, peer_dir, counts))


async def _main(config: GatewayConfig, verifier: JwtVerifier, worker_id: int,
                peer_dir: Path | None, counts: SessionCounts | None = None) -> int:
    loop = asyncio.get_running_loop()
    # A SIGHUP that arrives while this worker is still starting (compiling the policy,
    # opening the audit trail) must not kill it (the default action): remember it and
    # reload once serving.
    # (through the loop, as the reload handler later: a signal delivered both to a
    # plain handler and through the loop's wakeup fd was acted on twice)
    early_hup: list[int] = []
    loop.add_signal_handler(signal.SIGHUP, early_hup.append, signal.SIGHUP)
    # A SIGTERM as early must not kill it either: the audit trail's run would end without
    # its final checkpoint (a crash, to audit verify). It stops once started.
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # those that waited come now
    try:
        server = GatewayServer(config, verifier, worker_id, peer_dir, session_counts=counts)
    except BundleStartupError as e:
        logs.error("gateway.policy_unavailable", worker=worker_id, error=str(e))
        print(f"pgwarden: {e}", file=sys.stderr)
        return START_FAILED
    except (AuditError, AuditKeyError) as e:
        logs.error("gateway.audit_unavailable", worker=worker_id, error=str(e))
        print(f"pgwarden: audit: {e}", file=sys.stderr)
        return START_FAILED
    primed = await verifier.prime()
    for issuer, ok in primed.items():
        if not ok:
            logs.warning("identity.jwks_unavailable", issuer=issuer)
    try:
        await server.start()
    except Exception as e:
        # Stop what did start, the audit trail's run among it (sealed by its final
        # checkpoint): a start that failed must not read as a crash in the trail.
        try:
            await server.stop(drain_timeout=0)
        except Exception as stop_error:
            logs.error("gateway.stop_failed", worker=worker_id, error=str(stop_error))
        if isinstance(e, AuditError | AuditKeyError):
            logs.error("gateway.audit_unavailable", worker=worker_id, error=str(e))
            print(f"pgwarden: audit: {e}", file=sys.stderr)
        elif isinstance(e, CannotListen):
            logs.error("gateway.listen_failed", worker=worker_id, key=e.key,
                       address=e.address, error=str(e))
            print(f"pgwarden: {e}", file=sys.stderr)
        else:  # (e.g. the admin API's port taken: grpc raises RuntimeError)
            logs.error("gateway.start_failed", worker=worker_id,
                       error=f"{type(e).__name__}: {e}"[:300])
            print(f"pgwarden: cannot start: {e}", file=sys.stderr)
        return START_FAILED
    frozen = settle_heap()
    logs.info("gateway.start", worker=worker_id, config=str(config.source),
              connections=sorted(config.connections), pid=os.getpid(), gc_frozen=frozen)
    # SIGHUP: check the policy bundle now (each worker reloads its own engine).
    loop.add_signal_handler(signal.SIGHUP, server.reload_policy, "sighup")
    if early_hup:
        server.reload_policy("sighup")
    await stop.wait()
    await server.stop()
    return 0


def settle_heap() -> int:
    """Leave what the start made (modules, the compiled policy, settings: ~60,000 objects)
    out of the cyclic GC's full collections. Each full collection traversed them all, a
    ~20 ms pause of every session every ~15 s under load, to find no garbage among them.
    Only cycles among them are never collected: a policy replaced later is freed by its
    reference counts as before, but for any cycles of the first one."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _supervise(config: GatewayConfig, verifier: JwtVerifier, workers: int) -> int:
    """Fork N workers sharing the port through SO_REUSEPORT; forward signals; replace a
    worker that dies while the gateway runs; reap."""
    if config.listen.port == 0:
        print("pgwarden: listen.address: workers > 1 needs a fixed port", file=sys.stderr)
        return 2
    peer_dir = Path(tempfile.mkdtemp(prefix="pgwarden-workers-"))
    # Each worker's open sessions, in memory they all share: listen.max_connections is the
    # gateway's limit, not each worker's.
    counts: SessionCounts = multiprocessing.RawArray("i", workers)
    children: dict[int, int] = {}  # pid -> worker id
    stopping = False
    deaths: collections.deque[float] = collections.deque()  # when workers died, lately

    def spawn(worker_id: int) -> None:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # until it has handlers
        pid = os.fork()
        if pid == 0:
            for sig in SIGNALS:  # its own, not `forward`
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                code = _run_loop(config, verifier, worker_id, peer_dir, counts)
            finally:
                os._exit(code)
        children[pid] = worker_id  # (before a signal held meanwhile is forwarded)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for child in list(children):
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    def reap(pid: int, status: int, worst: int) -> int:
        """A child's end; the gateway's exit status so far."""
        worker_id = children.pop(pid, None)
        if worker_id is None:
            return worst
        counts[worker_id] = 0  # its sessions ended with it
        code = exit_code(status)
        if stopping:  # how the gateway ends: how its workers stopped
            return max(worst, code)
        if code == START_FAILED:  # it said why; the others would fail the same way
            forward(signal.SIGTERM, None)
            return code
        now = time.monotonic()
        deaths.append(now)
        while deaths and deaths[0] < now - RESTART_WINDOW:
            deaths.popleft()
        replace = len(deaths) < RESTARTS_MAX
        logs.error("gateway.worker_died", worker=worker_id, pid=pid, exit=describe_exit(status),
                   action="replaced" if replace else "stopping the gateway: "
                   f"{len(deaths)} workers died within {RESTART_WINDOW:.0f} s")
        if replace:
            spawn(worker_id)
            return worst
        forward(signal.SIGTERM, None)
        return 1

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # policy reload reaches every worker
    for worker_id in range(workers):
        spawn(worker_id)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    worst = 0
    while children:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # (none left: cannot happen while children holds any)
            break
        # A stop that comes while a death is handled waits until its replacement, if
        # any, is among the children it is forwarded to.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            worst = reap(pid, status, worst)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    shutil.rmtree(peer_dir, ignore_errors=True)
    return worst


def exit_code(status: int) -> int:
    """A child's wait status as a shell reports it: its exit code, or 128 + the signal
    that killed it (never negative, so that a worker killed outright is a failure)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = f"signal {os.WTERMSIG(status)}"
        return f"killed by {name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
