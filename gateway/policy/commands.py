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

    p = policy_sub.add_parser("check")            # see gateway.bundle.commands
    p.add_argument("paths", nargs="*")
    ... return cmd_policy_check(args.paths, args.format, args.entrypoint, strict=args.strict)

Every command reads a directory, a ``.rego``/data file or a bundle ``.tar.gz`` alike
(signatures are not checked here: ``pgwarden bundle verify`` does that).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import TextIO

from gateway.policy.engine import PolicyEngine
from gateway.policy.errors import PolicyCompileError, PolicyError, PolicyLoadError
from gateway.policy.gaps import PolicyWarning, policy_gaps
from gateway.policy.runtime import (
    capture_c_stdout,
    check_known_crashes,
    compile_policy,
    probe_compile,
)
from gateway.policy.source import DEFAULT_ENTRYPOINT, PolicySource, normalize_entrypoint
from gateway.policy.testing import FORMATS, format_results, run_tests

__all__ = [
    "CHECK_FORMATS",
    "DEFAULT_TEST_PATHS",
    "cmd_policy_check",
    "cmd_policy_eval",
    "cmd_policy_test",
]

CHECK_FORMATS = ("pretty", "json")

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


def _error_dict(exc: PolicyError) -> dict[str, object]:
    return {"file": exc.file, "line": exc.line, "col": exc.col, "code": "error",
            "severity": "error", "message": exc.message}


def cmd_policy_check(
    paths: Sequence[str],
    fmt: str = "pretty",
    entrypoint: str | None = None,
    *,
    strict: bool = False,
    probe: bool = True,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Compile every module (tests included) the way the gateway would and list what OPA
    and the embedded engine would do differently (:func:`policy_gaps`).

    Errors (load and compile errors with file:line, a rule that clashes with data, the
    entrypoint missing when it was asked for) → exit 1. Warnings (an OPA builtin or regex
    feature regopy lacks, v0 syntax, unsafe variables...) are printed; they fail the
    check only with ``strict``. 2: a path that does not exist or a bad argument.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if fmt not in CHECK_FORMATS:
        print(f"policy check: unknown format {fmt!r} (use {', '.join(CHECK_FORMATS)})",
              file=err)
        return 2
    paths = list(paths) or list(DEFAULT_TEST_PATHS)
    errors: list[PolicyError] = []
    warnings: list[PolicyWarning] = []
    source: PolicySource | None = None
    try:
        source = PolicySource.from_paths(paths)
    except PolicyLoadError as exc:
        if exc.message == "no such file or directory":
            print(f"policy check: {exc}", file=err)
            return 2
        errors.append(exc)
    except PolicyError as exc:
        errors.append(exc)
    if source is not None:
        try:
            check_known_crashes(source.modules)
            if probe:
                crash = probe_compile(source.modules, source.data, [])
                if crash is not None:
                    raise PolicyCompileError(source.origin, crash)
            with capture_c_stdout():
                compile_policy(source.modules, source.data, [])
            source.check_rules_vs_data(include_tests=True)
        except PolicyError as exc:
            errors.append(exc)
        explicit = entrypoint or source.entrypoint
        try:
            ep = normalize_entrypoint(explicit or DEFAULT_ENTRYPOINT)
        except ValueError as exc:
            print(f"policy check: {exc}", file=err)
            return 2
        if not source.defines(ep):
            ref = "data." + ep.replace("/", ".")
            if explicit:
                errors.append(PolicyCompileError(
                    source.origin, f"entrypoint {ref} is not defined by any module or data"))
            else:
                warnings.append(PolicyWarning(
                    source.origin, 0, 0, "no-entrypoint",
                    f"no module defines {ref}: as a gateway policy it would refuse every "
                    "statement"))
        warnings.extend(policy_gaps(source))
    failing = [w for w in warnings if w.severity == "warning"]
    if fmt == "json":
        doc = {"errors": [_error_dict(e) for e in errors],
               "warnings": [w.to_dict() for w in warnings]}
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        for e in errors:
            out.write(f"{e.location or '<policy>'}: error: {e.message}\n")
        for w in warnings:
            out.write(f"{w}\n")
        modules = len(source.modules) if source is not None else 0
        out.write(f"policy check: {len(errors)} error(s), {len(failing)} warning(s) in "
                  f"{modules} module(s)\n")
    out.flush()
    if errors or (strict and failing):
        return 1
    return 0
