"""``pgwarden policy test`` and ``pgwarden policy eval``, as plain functions.

They take already-parsed arguments and return the exit status (DESIGN §7: 0 success,
1 a failed check, 2 a usage or input error with a message that says what to fix), so
the CLI only has to wire argparse to them:

    p = policy_sub.add_parser("test")
    p.add_argument("paths", nargs="*")
    p.add_argument("--format", choices=FORMATS, default="pretty")
    p.add_argument("--run", "-r")
    p.add_argument("--verbose", "-v", action="store_true")
    ... return cmd_policy_test(args.paths, args.format, args.run, verbose=args.verbose)

    p = policy_sub.add_parser("eval")
    p.add_argument("--bundle", required=True)
    p.add_argument("--input", required=True)      # a file, or - for stdin
    p.add_argument("--entrypoint")
    ... return cmd_policy_eval(args.bundle, args.input, args.entrypoint)
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import TextIO

from gateway.policy.engine import PolicyEngine
from gateway.policy.errors import PolicyError
from gateway.policy.gaps import policy_gaps
from gateway.policy.runtime import capture_c_stdout
from gateway.policy.source import PolicySource
from gateway.policy.testing import FORMATS, format_results, run_tests

__all__ = ["DEFAULT_TEST_PATHS", "cmd_policy_eval", "cmd_policy_test"]

DEFAULT_TEST_PATHS = ("policies",)


def cmd_policy_test(
    paths: Sequence[str],
    fmt: str = "pretty",
    run: str | None = None,
    *,
    verbose: bool = False,
    probe: bool = True,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run ``test_*`` rules under ``paths`` (default ``policies/``).

    0: every test passed (skipped ``todo_test_*`` allowed); 1: a test failed or errored;
    2: bad arguments, a missing path, a file that does not load or compile (the message
    names file:line), or no test found. ``probe`` compiles in a child process first so
    that a rego-cpp abort is reported instead of killing the command.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if fmt not in FORMATS:
        print(f"policy test: unknown format {fmt!r} (use {', '.join(FORMATS)})", file=err)
        return 2
    if run is not None:
        try:
            re.compile(run)
        except re.error as exc:
            print(f"policy test: invalid --run pattern {run!r}: {exc}", file=err)
            return 2
    paths = list(paths) or list(DEFAULT_TEST_PATHS)
    try:
        results = run_tests(paths, run, probe=probe)
    except PolicyError as exc:
        print(f"policy test: {exc}", file=err)
        return 2
    if not results:
        where = ", ".join(paths)
        filt = f" matching {run!r}" if run else ""
        print(f"policy test: no test_ rules{filt} found in {where}", file=err)
        return 2
    out.write(format_results(results, fmt, verbose=verbose))
    out.flush()
    try:
        source = PolicySource.from_paths(paths)
    except PolicyError:  # pragma: no cover - loaded fine a moment ago
        source = None
    if source is not None:
        for warning in policy_gaps(source):
            if warning.severity == "warning":
                print(f"warning: {warning}", file=err)
    return 0 if all(r.status in ("pass", "skip") for r in results) else 1


def cmd_policy_eval(
    bundle_path: str,
    input_path: str,
    entrypoint: str | None = None,
    *,
    probe: bool = True,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Evaluate a policy (directory, .rego file or bundle .tar.gz) for one input document
    and print the validated decision as JSON.

    0: a decision was printed; 1: it was printed but is a policy error (the policy's
    answer was missing or malformed: see its ``error``); 2: bad input (missing or
    invalid files, compile errors, an entrypoint no module defines).
    ``input_path`` ``-`` reads stdin. Bundle signatures are not checked here.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        source = PolicySource.load(bundle_path)
    except PolicyError as exc:
        print(f"policy eval: {exc}", file=err)
        return 2
    try:
        if input_path == "-":
            text = sys.stdin.read()
        else:
            with open(input_path, encoding="utf-8-sig") as fh:
                text = fh.read()
    except OSError as exc:
        print(f"policy eval: {input_path}: cannot read: {exc.strerror or exc}", file=err)
        return 2
    except UnicodeDecodeError as exc:
        print(f"policy eval: {input_path}: not UTF-8 text ({exc.reason})", file=err)
        return 2
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        print(
            f"policy eval: {input_path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}",
            file=err,
        )
        return 2
    if not isinstance(doc, dict):
        print(f"policy eval: {input_path}: the input must be a JSON object", file=err)
        return 2
    try:
        engine = PolicyEngine(source, entrypoint, cache_size=0, probe=probe)
    except PolicyError as exc:
        print(f"policy eval: {exc}", file=err)
        return 2
    for warning in policy_gaps(source):
        if warning.severity == "warning":
            print(f"warning: {warning}", file=err)
    with capture_c_stdout() as cap:  # print() in the policy must not corrupt the JSON
        decision = engine.decide(doc)
        printed = cap.take()
    if printed:
        err.write(printed)
    out.write(decision.to_json(indent=2) + "\n")
    out.flush()
    return 0 if decision.error is None else 1
