"""In-process cost of pgbench's statement through a gateway session's whole path.

Framing, the statement gate, the relay, the result tracker, the PAN safety net and, with
an audit trail, both records of every statement and their group-commit write: the
gateway's own classes on memory transports, with the server's answer replayed. No
sockets, TLS or other processes, so it leaves out what those add on a real machine (see
the README), and in exchange it holds still: pgbench's ratios move between runs by more
than most changes to this path move them.

`tools/bench.py` reports it after the pgbench runs. By hand, against any database that
has pgbench's tables::

    python tools/statement_path.py "host=... dbname=... user=..." [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.audit import AuditContext, AuditWriter, generate_keypair, records  # noqa: E402
from gateway.audit.checkpoint import Signer  # noqa: E402
from gateway.audit.filesink import FileSink  # noqa: E402
from gateway.audit.template import TemplateCache  # noqa: E402
from gateway.catalog.model import Catalog  # noqa: E402
from gateway.devtools.transports import MemoryTransport  # noqa: E402
from gateway.enforce.catalog_cache import CatalogCache  # noqa: E402
from gateway.enforce.gate import StatementGate  # noqa: E402
from gateway.enforce.input_doc import SessionFacts  # noqa: E402
from gateway.identity.model import Identity  # noqa: E402
from gateway.masking.results import ResultMasker  # noqa: E402
from gateway.policy.engine import PolicyEngine  # noqa: E402
from gateway.proxy.endpoint import Endpoint  # noqa: E402
from gateway.proxy.relay import Relay  # noqa: E402
from gateway.proxy.session import Session  # noqa: E402
from gateway.wire import backend as be  # noqa: E402
from gateway.wire.frontend import Bind, Describe, Execute, Parse, Query, Sync  # noqa: E402

STATEMENT = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
PARAMETRIZED = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
PREPARED = "P_1"  # a name like the ones pgbench -M prepared gives
PROTOCOLS = ("simple", "extended", "prepared")
CONNECTION = "bench"


def _rows() -> bytes:
    """The result: one int4 column, one row."""
    column = be.RowDescriptionField("abalance", 0, 0, 23, 4, -1, 0)
    return (be.RowDescription((column,)).encode() + be.DataRow((b"0",)).encode()
            + be.CommandComplete("SELECT 1").encode() + be.ReadyForQuery("I").encode())


def answer(protocol: str = "simple") -> bytes:
    """What PostgreSQL answers one of pgbench's statements (`message`) in `protocol`."""
    bound = be.Simple(b"2").encode() + _rows()  # BindComplete first
    return {"simple": _rows(), "extended": be.Simple(b"1").encode() + bound,
            "prepared": bound}[protocol]


def message(protocol: str, aid: int) -> bytes:
    """pgbench -S's statement as its client library sends it in `protocol`: a Query; a
    Parse/Bind/Describe/Execute/Sync run; or a Bind of the statement prepared once
    (`prepare`) with its Describe/Execute/Sync."""
    if protocol == "simple":
        return Query(STATEMENT.format(aid)).encode()
    run = (Bind("", "" if protocol == "extended" else PREPARED, (), (str(aid).encode(),), ())
           .encode() + Describe("P", "").encode() + Execute("", 0).encode() + Sync().encode())
    return Parse("", PARAMETRIZED, ()).encode() + run if protocol == "extended" else run


def prepare(protocol: str) -> tuple[bytes, bytes]:
    """What a session sends once before its first statement in `protocol`, and the
    answer (the prepared protocol's Parse/Sync; nothing for the others)."""
    if protocol != "prepared":
        return b"", b""
    return (Parse(PREPARED, PARAMETRIZED, ()).encode() + Sync().encode(),
            be.Simple(b"1").encode() + be.ReadyForQuery("I").encode())


def _session(k: int, catalogs: CatalogCache, engine: PolicyEngine,
             writer: AuditWriter | None) -> tuple[Relay, MemoryTransport, MemoryTransport]:
    """A relay as `Session._relay` builds one, for a session of group ci."""
    facts = SessionFacts.build(
        Identity("bench", "https://bench", ("ci",), {}, "jwt", None), session_id=f"s{k}",
        started_at=time.time(), name=CONNECTION, database=CONNECTION, user="bench",
        application_name="pgbench", client_addr="127.0.0.1", tls=True, networks={})
    ctx = AuditContext.from_input(facts.input_for({})) if writer is not None else None
    gate = StatementGate(facts=facts, connection=CONNECTION, catalogs=catalogs,
                         policy=lambda: engine, audit=writer, audit_ctx=ctx)
    on_result: Callable[..., None] | None = None
    if writer is not None:
        # The session's own completion record (Session._statement_done), on the state a
        # session holds for it.
        session = Session.__new__(Session)
        session.id, session.audit_ctx = f"s{k}", ctx
        session.totals = records.SessionTotals()
        session._templates = TemplateCache(writer)
        session.server = type("Server", (), {"audit": writer})()
        assert ctx is not None  # (made above, with the writer)
        session._audit(records.session_start(ctx))
        on_result = session._statement_done
    client, upstream = Endpoint(), Endpoint()
    to_client, to_server = MemoryTransport(keep=False), MemoryTransport(keep=False)
    client.transport, upstream.transport = to_client, to_server  # type: ignore[assignment]
    relay = Relay(f"s{k}", client, upstream, 1 << 20, gate, safety_net="mask",
                  results=ResultMasker(lambda oid, attnum: None), on_result=on_result)
    relay.start()
    return relay, to_client, to_server


def measure(catalog: Catalog, policy_dir: Path, *, audit_dir: Path | None = None,
            protocol: str = "simple", sessions: int = 6, n: int = 5000, rounds: int = 3,
            warmup: int = 500, sweep_mb: float = 0.0) -> dict[str, Any]:
    """µs of this process's CPU per statement, the quietest of `rounds` rounds: each
    round sends `n` statements (new literals) on each of `sessions` sessions in turn, then
    replays every answer, as an event loop sees 8 pgbench clients. With `audit_dir`, every
    statement gets its decision and completion records there (signed, durability: os).

    `sweep_mb`: copy that many MB before each statement, evicting the caches as a live
    gateway's neighbours do (PostgreSQL's backends and pgbench share its cores): the
    path then runs cold, and costs grow towards live ones. The copy's own CPU is in the
    result; compare two measurements with the same sweep."""
    catalogs = CatalogCache(fetch=None)  # type: ignore[arg-type]
    catalogs.put(CONNECTION, catalog)
    engine = PolicyEngine.from_path(str(policy_dir))
    writer = None
    if audit_dir is not None:
        generate_keypair(audit_dir / "audit.pem", audit_dir / "audit.pub")
        writer = AuditWriter(FileSink(audit_dir / "log", "gw1"), instance="gw1",
                             signer=Signer.from_pem_file(audit_dir / "audit.pem"))
        writer.start()
    quiet = logging.getLogger("pgwarden")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # no per-decision log lines
    rng = random.Random(1)
    queries = [message(protocol, rng.randint(1, 100_000)) for _ in range(997)]
    reply = answer(protocol)
    setup, setup_reply = prepare(protocol)
    size = int(sweep_mb * (1 << 20))
    source, target = bytearray(size), bytearray(size)
    sweeps = 0

    async def run() -> dict[str, Any]:
        relays = [_session(k, catalogs, engine, writer) for k in range(sessions)]
        for relay, _, _ in relays:
            if setup:
                relay.from_client(setup)
                relay.from_upstream(setup_reply)

        def turns(count: int) -> int:
            nonlocal sweeps
            sent = 0
            for i in range(count):
                for k, (relay, _, _) in enumerate(relays):
                    query = queries[(i * sessions + k) % len(queries)]
                    if size:
                        target[:] = source
                        sweeps += 1
                    relay.from_client(query)
                    sent += len(query)
                for relay, _, _ in relays:
                    relay.from_upstream(reply)
            return sent

        sent = len(setup) * sessions + turns(warmup)
        best = float("inf")
        for _ in range(rounds):
            start = time.process_time()
            sent += turns(n)
            if writer is not None:
                # every record of the round sealed and written within it (a ledger keeps
                # statement ends unsealed until the writer thread's next batch)
                writer.flush()
            best = min(best, (time.process_time() - start) / (n * sessions) * 1e6)
        # What was timed is the allowed statement's path: every query went to the server
        # as the client sent it, and every answer to the client.
        last = queries[(n * sessions - 1) % len(queries)]  # (each round sends the same)
        if (sum(to_server.written for _, _, to_server in relays) != sent
                or relays[-1][2].last != last):
            raise RuntimeError("the gateway did not forward every statement as sent "
                               "(is it allowed by this policy?)")
        got = sum(to_client.written for _, to_client, _ in relays)
        if got != (warmup + rounds * n) * sessions * len(reply) + len(setup_reply) * sessions:
            raise RuntimeError("the relay did not pass every answer on")
        return {"us_per_statement": round(best, 2),
                "statements": (warmup + rounds * n) * sessions, "sweeps": sweeps}

    try:
        return asyncio.run(run())
    finally:
        quiet.setLevel(level)
        if writer is not None:
            writer.close()


def compare(catalog: Catalog, policy_dir: Path, *, turns: int = 2,
            **kwargs: Any) -> dict[str, float]:
    """`measure` with policy alone and with the audit trail too (in a scratch directory),
    taking turns, the quietest of each. (The first run in a process also pays for memory
    it touches for the first time, which costs a lot on some virtual machines.)"""
    policy = audited = float("inf")
    for _ in range(turns):
        policy = min(policy, measure(catalog, policy_dir, **kwargs)["us_per_statement"])
        with tempfile.TemporaryDirectory(prefix="statement-path-") as d:
            audited = min(audited, measure(catalog, policy_dir, audit_dir=Path(d),
                                           **kwargs)["us_per_statement"])
    return {"policy_us": policy, "audit_us": audited, "audit_adds_us": round(audited - policy, 2)}


def load_catalog(dsn: str) -> Catalog:
    import psycopg

    from gateway.catalog import read_catalog

    with psycopg.connect(dsn) as conn:
        return read_catalog(conn)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dsn", help="a database with pgbench's tables (pgbench -i)")
    p.add_argument("--policy", type=Path, default=REPO / "policies" / "pci")
    p.add_argument("--protocol", choices=PROTOCOLS, default="simple")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("-n", type=int, default=5000, help="statements per session per round")
    p.add_argument("--sweep", type=float, default=0.0, metavar="MB",
                   help="copy MB of memory before each statement: the path runs with cold "
                        "caches, as live (both measurements include the copy)")
    args = p.parse_args(argv)
    if args.sweep < 0:
        p.error("--sweep must not be negative")
    out = compare(load_catalog(args.dsn), args.policy, n=args.n, rounds=args.rounds,
                  protocol=args.protocol, sweep_mb=args.sweep)
    swept = f", a {args.sweep:g} MB sweep before each (in both)" if args.sweep else ""
    print(f"pgbench's statement ({args.protocol}) in-process{swept}, µs of CPU: "
          f"policy {out['policy_us']}, "
          f"policy + audit {out['audit_us']} (+{out['audit_adds_us']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
