"""What inline masking and the PAN safety net cost, through pgwarden, on this machine.

    .venv/bin/python tools/bench_masking.py [--rows 100000] [--repeat 5] [--duration 10]
        [--rounds 5] [--clients 8] [--json out.json]

1. Large result: ``SELECT id, holder, pan FROM mask_bench`` (100k rows, every pan a
   Luhn-valid card number) fetched whole with psycopg (text and binary) through pgwarden
   with ``pan`` masked by the policy, versus the same query with no mask and the safety
   net off (the strict baseline: no masking work at all), and versus PostgreSQL directly.
   Both run with the compiled row loops where they are built, and again without them.
   Target: masked ≥ 0.5x unmasked.
2. pgbench ``-S`` through pgwarden (relay, no policy) with ``masking.safety_net: mask``
   versus ``off``. Target: within 10%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from bench import (
    DB,
    DEBIAN_PGBENCH,
    HOST,
    ROLE,
    Target,
    client_env,
    parse_pgbench,
    run_pgbench,
    start_postgres,
)

from gateway.devtools.embedded_pg import EmbeddedPostgres
from gateway.devtools.harness import GatewayProcess, UpstreamSpec
from gateway.masking import rows as masking_rows

POLICY = """package pgwarden

import rego.v1

mask[key] := "pan_last4" if {
	data.pgwarden.masked
	some c in input.statement.columns
	c.name == "pan"
	key := concat(".", [c.schema, c.table, c.name])
}

decision := {"allow": true, "reasons": [], "mask": mask, "require_approval": false,
	"approvers": [], "row_limit": null, "db_role": null}
"""

QUERY = "SELECT id, holder, pan FROM mask_bench"


def luhn_pan(n: int) -> str:
    body = f"4{n:014d}"
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return body + str((10 - total % 10) % 10)


def load_rows(pg: EmbeddedPostgres, password: str, rows: int) -> None:
    with psycopg.connect(host=HOST, port=pg.port, user=ROLE, password=password, dbname=DB,
                         autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS mask_bench")
        c.execute("CREATE TABLE mask_bench (id int PRIMARY KEY, holder text, pan text)")
        with c.cursor().copy("COPY mask_bench FROM STDIN") as copy:
            for i in range(rows):
                copy.write_row((i, f"Holder {i}", luhn_pan(i)))
        c.execute("ANALYZE mask_bench")


def start_gateway(stack: contextlib.ExitStack, pg: EmbeddedPostgres, password: str, *,
                  masked: bool | None, safety_net: str, pure_python: bool = False
                  ) -> GatewayProcess:
    """`masked`: None = relay only (no policy); else the policy masks pan or not.
    `pure_python`: every C module off (their Python twins run), even where built."""
    d = Path(tempfile.mkdtemp(prefix="bench-masking-"))
    stack.callback(shutil.rmtree, d, ignore_errors=True)
    policy_dir = None
    if masked is not None:
        policy_dir = d / "policy"
        policy_dir.mkdir()
        (policy_dir / "policy.rego").write_text(POLICY)
        (policy_dir / "data.json").write_text(json.dumps({"pgwarden": {"masked": masked}}))
    gw = GatewayProcess(d / "gw", {DB: UpstreamSpec(HOST, pg.port, DB, ROLE, password)},
                        policy_dir=policy_dir, enforce=masked is not None,
                        extra_yaml=f"masking:\n  safety_net: {safety_net}\n",
                        extra_env={"PGWARDEN_PURE_PYTHON": "1"} if pure_python else {})
    stack.callback(gw.stop)
    gw.start()
    return gw


def fetch_rate(conninfo: str, password: str, binary: bool, repeat: int) -> float:
    """Median rows/s of fetching the whole result, over `repeat` runs after one warm-up."""
    rates = []
    with psycopg.connect(conninfo, password=password, autocommit=True) as c:
        for i in range(repeat + 1):
            t0 = time.perf_counter()
            with c.cursor(binary=binary) as cur:
                cur.execute(QUERY)
                n = len(cur.fetchall())
            if i:
                rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--duration", type=int, default=10, help="pgbench seconds per run")
    p.add_argument("--rounds", type=int, default=5, help="pgbench runs per setting")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    password = secrets.token_urlsafe(18)
    out: dict[str, object] = {"rows": args.rows}
    with contextlib.ExitStack() as stack:
        print("starting PostgreSQL, loading pgbench and mask_bench", file=sys.stderr)
        pg = start_postgres(stack, password, 1)
        load_rows(pg, password, args.rows)
        masked = start_gateway(stack, pg, password, masked=True, safety_net="mask")
        masked_py = start_gateway(stack, pg, password, masked=True, safety_net="mask",
                                  pure_python=True)
        plain = start_gateway(stack, pg, password, masked=False, safety_net="mask")
        plain_off = start_gateway(stack, pg, password, masked=False, safety_net="off")
        plain_off_py = start_gateway(stack, pg, password, masked=False, safety_net="off",
                                     pure_python=True)
        direct = f"host={HOST} port={pg.port} user={ROLE} dbname={DB} sslmode=disable"
        large: dict[str, dict[str, float]] = {}
        for fmt, binary in (("text", False), ("binary", True)):
            row = {"direct": fetch_rate(direct, password, binary, args.repeat)}
            for name, gw in (("unmasked, safety net off", plain_off),
                             ("unmasked, safety net on", plain), ("masked", masked),
                             ("unmasked, off, Python", plain_off_py),
                             ("masked, Python", masked_py)):
                print(f"fetching {args.rows} rows ({fmt}) through pgwarden: {name}",
                      file=sys.stderr)
                row[name] = fetch_rate(gw.dsn(DB), gw.token(groups=("ci",)), binary,
                                       args.repeat)
            large[fmt] = row
        out["large_result_rows_per_s"] = large

        pgbench: dict[str, list[float]] = {}
        if DEBIAN_PGBENCH.exists():
            targets = {}
            for name, net in (("safety net off", "off"), ("safety net on", "mask")):
                gw = start_gateway(stack, pg, password, masked=None, safety_net=net)
                targets[name] = Target(name, DEBIAN_PGBENCH, client_env(
                    gw.port, "bench", gw.token(groups=("ci",)), "require"), True)
                run_pgbench(targets[name], "simple", args.clients, 2)  # warm-up
                pgbench[name] = []
            # Interleaved rounds, alternating which goes first: the machine's drift over a
            # minute is of the same size as the difference measured.
            for r in range(args.rounds):
                order = list(targets) if r % 2 == 0 else list(targets)[::-1]
                for name in order:
                    print(f"pgbench -S through pgwarden: {name} (round {r + 1})",
                          file=sys.stderr)
                    tps, *_ = parse_pgbench(run_pgbench(targets[name], "simple",
                                                        args.clients, args.duration))
                    pgbench[name].append(tps)
            out["pgbench_simple_tps"] = pgbench
        else:
            print(f"NOTE: {DEBIAN_PGBENCH} not found: skipping the pgbench comparison",
                  file=sys.stderr)

    loop = "compiled" if masking_rows.compiled() else "Python: the C helpers are not built"
    out["row_loops"] = loop
    print(f"\nSELECT of {args.rows} rows (id, holder, pan), fetched whole with psycopg, "
          f"median rows/s (row loops: {loop}). Unmasked is the same gateway and policy\n"
          "without the mask and with the safety net off (with it on, every row's PAN is "
          "caught by the content scan instead); the Python rows\nhave the C loops switched "
          "off (PGWARDEN_PURE_PYTHON), as on a machine without a C compiler, and compare "
          "with each other:")
    for fmt, row in large.items():
        print(f"  {fmt}:")
        for name, rate in row.items():
            base = row["unmasked, off, Python" if "Python" in name
                       else "unmasked, safety net off"]
            print(f"    {name:<26} {rate:>12,.0f}   {rate / base:5.2f}x of unmasked")
    if pgbench:
        off = statistics.median(pgbench["safety net off"])
        on = statistics.median(pgbench["safety net on"])
        print(f"\npgbench -S simple, {args.clients} clients, TLS, relay only, median TPS of "
              f"{args.rounds} interleaved runs of {args.duration} s:")
        print(f"  safety net off {off:>10,.0f}\n  safety net on  {on:>10,.0f}   "
              f"{on / off:5.2f}x of off")
        out["safety_net_ratio"] = on / off
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
