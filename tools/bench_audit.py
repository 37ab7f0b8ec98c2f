"""Audit append throughput with hash chaining, on this machine.

    .venv/bin/python tools/bench_audit.py [--records 200000] [--sessions 64] [--dir DIR]
        [--json out.json]

Cases (each a fresh log; the signing key is Ed25519, checkpoints every 10,000 records):

* ``seal``: chaining only (canonical JSON, PAN guard, sha256), no I/O.
* ``append os``: AuditWriter + file sink, ``durability: os``: the caller appends and the
  writer thread writes in batches; records/s from the first append to the last write.
* ``append fsync``: the same with ``durability: fsync`` (one fdatasync per batch).
* ``wait fsync``: ``--sessions`` asyncio tasks each append a record and await its
  durability before the next, like statements waiting for their decision record: what
  group commit gives when every statement waits.
* ``templated os``: ``append os`` the way the gateway appends a record of a shape its
  session recorded before (``TemplateCache``: a decision of the same statement and
  answer, a statement's completion with its own seq, rows and duration in the holes):
  the canonical bytes encoded once, then filled, hashed and queued per record.

The first three encode every record anew, as the gateway does for a shape it has not
seen in the session: the worst case. The usual one, repeats, is ``templated os``.

Two record kinds: a ``decision`` (about 1.4 kB: who, where, the statement's analysis as the
policy saw it, the decision; the analysis encoding reused through ``statement_digest`` as
the gate would) and a ``statement`` completion record (about 0.6 kB).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from gateway.audit import (  # noqa: E402
    AuditContext,
    AuditWriter,
    Signer,
    WriterOptions,
    generate_keypair,
    records,
)
from gateway.audit.chain import Chain  # noqa: E402
from gateway.audit.filesink import FileSink  # noqa: E402
from gateway.audit.template import TemplateCache  # noqa: E402
from gateway.policy.decision import Decision, FrozenMap  # noqa: E402
from gateway.proxy.session import _STATEMENT_HOLES as STATEMENT_HOLES  # noqa: E402

FACTS = {
    "identity": {"subject": "repo:acme/payments:ref:refs/heads/main",
                 "issuer": "https://token.actions.githubusercontent.com", "groups": ["ci"],
                 "claims": {"repository": "acme/payments"}, "method": "jwt"},
    "connection": {"name": "cardholder", "database": "payments", "user": "ci-bot",
                   "application_name": "psql", "client_addr": "10.20.0.7", "tls": True,
                   "networks": ["ci-runners"]},
    "session": {"id": "3f2a9c1d0b4e5a6f", "started_at": "2025-01-15T09:30:00.000000Z"},
}
STATEMENT = {
    "sql": "SELECT id, pan, amount_cents FROM cards WHERE id = 42", "fingerprint":
    "a1b2c3d4e5f60718", "command": "SELECT", "kind": "read",
    "relations": [{"schema": "public", "name": "cards", "access": ["read"], "relkind": "r",
                   "temp": False}],
    "columns": [{"schema": "public", "table": "cards", "name": "id", "tags": [],
                 "usage": ["output", "filter"]},
                {"schema": "public", "table": "cards", "name": "pan", "tags": ["pan"],
                 "usage": ["output"]},
                {"schema": "public", "table": "cards", "name": "amount_cents", "tags": [],
                 "usage": ["output"]}],
    "functions": [], "has_where": True, "limit": None, "index": 0, "count": 1,
    "protocol": "simple", "sql_string_functions": False, "unresolved": [], "details": {},
}


def sample_records() -> dict[str, dict[str, Any]]:
    ctx = AuditContext.from_input(FACTS)
    inp = {**FACTS, "statement": STATEMENT, "approval": {"granted": False, "id": None}}
    dec = Decision(allow=True, mask=FrozenMap({"public.cards.pan": "pan_last4"}),
                   bundle_revision="2025-01-15.1",
                   bundle_hash=hashlib.sha256(b"bundle").hexdigest())
    return {
        "decision": records.decision_record(ctx, decision=dec, input_doc=inp, duration_us=38,
                                            statement_digest="bench-digest"),
        "statement": records.statement_record(ctx, decision_seq=41, outcome="masked",
                                              command="SELECT", rows=1, masked_values=1,
                                              duration_us=412),
    }


def bench_seal(rec: dict[str, Any], n: int) -> float:
    chain = Chain("bench")
    t0 = time.perf_counter()
    for _ in range(n):
        chain.seal(rec)
    return n / (time.perf_counter() - t0)


def new_writer(directory: Path, signer: Signer, durability: str) -> AuditWriter:
    w = AuditWriter(FileSink(directory, "bench", fsync=durability == "fsync"), instance="bench",
                    signer=signer, options=WriterOptions(durability=durability,
                                                         checkpoint_every=10_000,
                                                         checkpoint_seconds=0))
    w.start()
    w.flush()
    return w


def bench_append(directory: Path, signer: Signer, rec: dict[str, Any], n: int,
                 durability: str) -> float:
    w = new_writer(directory, signer, durability)
    t0 = time.perf_counter()
    for _ in range(n):
        w.append(rec)
    w.flush()
    rate = n / (time.perf_counter() - t0)
    w.close()
    return rate


def bench_templated(directory: Path, signer: Signer, rec: dict[str, Any], n: int) -> float:
    w = new_writer(directory, signer, "os")
    cache = TemplateCache(w)
    statement = rec.get("type") == "statement"
    holes = STATEMENT_HOLES if statement else ()  # (the session's own: same template)
    pin = object()  # (the gateway pins a decision template to its Decision object)

    def build() -> dict[str, Any]:
        return rec

    batch = w.options.batch_records
    t0 = time.perf_counter()
    for i in range(n):
        # every statement record its own values, as a session's completions have
        values = (i, i % 100, i % 3, 100 + i % 900) if statement else ()
        cache.append(("bench",), build, holes, values, pin=pin, wake=False)
        if i % batch == 0:  # (the gateway's admit() wakes the writer once a batch waits)
            w.wake()
    w.flush()
    rate = n / (time.perf_counter() - t0)
    w.close()
    return rate


def bench_wait(directory: Path, signer: Signer, rec: dict[str, Any], n: int,
               sessions: int) -> float:
    w = new_writer(directory, signer, "fsync")
    per = max(1, n // sessions)

    async def session() -> None:
        for _ in range(per):
            seq = w.append(rec)
            if not w.is_durable(seq):
                await w.wait_durable(seq)

    async def main() -> None:
        await asyncio.gather(*(session() for _ in range(sessions)))

    t0 = time.perf_counter()
    asyncio.run(main())
    rate = per * sessions / (time.perf_counter() - t0)
    w.close()
    return rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp directory)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    base = Path(args.dir or tempfile.mkdtemp(prefix="pgwarden-bench-audit-"))
    base.mkdir(parents=True, exist_ok=True)
    generate_keypair(base / "bench.pem", base / "bench.pub")
    signer = Signer.from_pem_file(base / "bench.pem")
    samples = sample_records()
    n = args.records
    fsync_n = max(1000, n // 4)
    results: dict[str, dict[str, float]] = {}
    print(f"audit append throughput, records/s ({platform.python_version()}, "
          f"{n} records, {args.sessions} waiting sessions, files in {base})")
    print(f"{'case':<16}" + "".join(f"{k:>14}" for k in samples))
    cases = [
        ("seal", lambda r, k: bench_seal(r, n)),
        ("append os", lambda r, k: bench_append(base / f"os-{k}", signer, r, n, "os")),
        ("append fsync",
         lambda r, k: bench_append(base / f"fsync-{k}", signer, r, fsync_n, "fsync")),
        ("wait fsync",
         lambda r, k: bench_wait(base / f"wait-{k}", signer, r, fsync_n, args.sessions)),
        ("templated os", lambda r, k: bench_templated(base / f"tpl-{k}", signer, r, n)),
    ]
    for name, run in cases:
        row = {}
        for kind, rec in samples.items():
            row[kind] = run(rec, kind)
        results[name] = row
        print(f"{name:<16}" + "".join(f"{row[k]:>14,.0f}" for k in samples))
    sizes = {k: len(Chain("bench").seal(r).line) for k, r in samples.items()}
    print("record bytes    " + "".join(f"{sizes[k]:>14}" for k in samples))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "record_bytes": sizes,
                                               "records": n}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
