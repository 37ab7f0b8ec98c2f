"""Two builds of pgwarden under the same pgbench load, taking turns: gateway CPU per
transaction.

    python tools/bench_ab.py 8c44bbe                  # that commit against the working tree
    python tools/bench_ab.py A B --mode pol --protocol extended --runs 3

`bench.py`'s ratios move between runs of one build by as much as a change moves them:
the machine's other work lands on whichever target runs at the time. Comparing two
builds per transaction is steadier. One PostgreSQL serves both; each build's gateway
(one worker, TLS, the starter policy; `--mode audit` also records every statement) gets
`--rounds` pgbench runs, the builds alternating `--runs` times. What is reported is the
gateway's CPU time (utime + stime of its processes, /proc) per transaction, and TPS.

A ref other than ``.`` (the working tree) is checked out into a temporary `git worktree`
and its C modules are built in place; each gateway is checked to run that build's code.
Linux only (/proc).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench

REPO = bench.REPO_ROOT


def checkout(stack: contextlib.ExitStack, ref: str) -> Path:
    """The source tree of `ref`, with its C modules built (``.``: the working tree)."""
    if ref == ".":
        return REPO
    where = worktree(stack, ref)
    subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()",
                    "build_ext", "--inplace", "-q"], cwd=where, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return where


def worktree(stack: contextlib.ExitStack, ref: str) -> Path:
    """`ref` checked out in a temporary directory, both gone when `stack` closes."""
    parent = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    # (callbacks run last first: the worktree goes, then the directory it was made in)
    stack.callback(shutil.rmtree, parent, ignore_errors=True)
    where = parent / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(where),
                    ref], check=True)
    stack.callback(subprocess.run, ["git", "-C", str(REPO), "worktree", "remove", "--force",
                                    str(where)], check=False)
    return where


def tree_cpu(pid: int) -> int:
    """Clock ticks of CPU used by `pid` and its children (every thread)."""
    total, pids = 0, [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            pids += [int(p) for p in f.read().split()]
    for p in pids:
        for task in os.listdir(f"/proc/{p}/task"):
            with open(f"/proc/{p}/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


def machine_cpu(stat: str | None = None) -> int:
    """Clock ticks the whole machine spent busy (all CPUs, /proc/stat's first line, or
    `stat`): also what the gateway makes others do, such as the writeback of its log."""
    if stat is None:
        with open("/proc/stat") as f:
            stat = f.readline()
    user, nice, system, _idle, _iowait, irq, softirq = map(int, stat.split()[1:8])
    return user + nice + system + irq + softirq


def runs_tree(pid: int, tree: Path) -> bool:
    """Whether the gateway `pid` (or its workers) imported its code from `tree`."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        pids = [pid] + [int(p) for p in f.read().split()]
    for p in pids:
        with open(f"/proc/{p}/maps") as f:
            if str(tree / "gateway") in f.read():
                return True
    return False


def measure(pg: bench.EmbeddedPostgres, password: str, tree: Path,
            args: argparse.Namespace) -> list[tuple[float, float, float]]:
    """(TPS, gateway µs of CPU per transaction, the machine's) of each round on `tree`'s
    gateway."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)  # the gateway subprocess imports this tree
    try:
        with contextlib.ExitStack() as stack:
            gw, target = bench.start_gateway(stack, pg, password, 1, 3600,
                                             args.mode != "relay", args.mode == "audit")
            assert gw.proc is not None
            if tree != REPO and not os.environ.get("PGWARDEN_PURE_PYTHON") \
                    and not runs_tree(gw.proc.pid, tree):
                raise SystemExit(f"the gateway did not load its C modules from {tree}")
            bench.run_pgbench(target, args.protocol, args.clients, 2)  # warm-up
            out = []
            for _ in range(args.rounds):
                before, machine = tree_cpu(gw.proc.pid), machine_cpu()
                done = subprocess.run(bench.pgbench_cmd(target, args.protocol, args.clients,
                                                        args.duration),
                                      env=target.env, capture_output=True, text=True)
                used, busy = tree_cpu(gw.proc.pid) - before, machine_cpu() - machine
                tps = bench.parse_pgbench(done.stdout)[0]
                per_txn = 1e6 / os.sysconf("SC_CLK_TCK") / (tps * args.duration)
                out.append((tps, used * per_txn, busy * per_txn))
            return out
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="a git ref, or . for the working tree")
    p.add_argument("head", nargs="?", default=".", help="default: the working tree")
    p.add_argument("--mode", choices=("relay", "pol", "audit"), default="audit")
    p.add_argument("--protocol", choices=bench.WORKLOADS, default="simple",
                   help="pgbench -S over a protocol, or tpcb (see tools/bench.py)")
    p.add_argument("--runs", type=int, default=2, help="turns per build")
    p.add_argument("--rounds", type=int, default=3, help="pgbench runs per turn")
    p.add_argument("--duration", type=int, default=8, help="seconds per pgbench run")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--scale", type=int, default=10)
    args = p.parse_args()
    password = secrets.token_urlsafe(18)
    with contextlib.ExitStack() as stack:
        trees = {ref: checkout(stack, ref) for ref in (args.base, args.head)}
        print(f"[ab] starting PostgreSQL (scale {args.scale})", file=sys.stderr)
        pg = bench.start_postgres(stack, password, args.scale)
        results: dict[str, list[tuple[float, float, float]]] = {ref: [] for ref in trees}
        for turn in range(args.runs):
            for ref, tree in trees.items():
                print(f"[ab] {ref}: turn {turn + 1}/{args.runs}", file=sys.stderr)
                results[ref] += measure(pg, password, tree, args)
    script = " ".join(bench.script_args(args.protocol))
    print(f"pgbench {script} -c {args.clients}, gateway mode {args.mode}, "
          f"{args.runs} turn(s) x {args.rounds} round(s) of {args.duration} s per build")
    print("  CPU µs per transaction, the median of the rounds (each round's in brackets)")
    medians = {}
    for ref, rounds in results.items():
        medians[ref] = statistics.median(us for _, us, _ in rounds), \
            statistics.median(m for _, _, m in rounds)
        tps = statistics.median(t for t, _, _ in rounds)
        each = " ".join(f"{us:.1f}" for _, us, _ in rounds)
        print(f"  {ref:12s} gateway {medians[ref][0]:6.1f} ({each})  "
              f"machine {medians[ref][1]:6.1f}  TPS {tps:,.0f}")
    for i, what in enumerate(("gateway", "machine")):
        base, head = medians[args.base][i], medians[args.head][i]
        print(f"  {args.head} - {args.base}, {what}: {head - base:+.1f} µs per transaction "
              f"({(head - base) / base:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
