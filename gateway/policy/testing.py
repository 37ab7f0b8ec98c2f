"""``pgwarden policy test``: an ``opa test``-like runner on regopy.

Discovery: every rule named ``test_*`` (not a function) in every package of the loaded
paths is a test; ``todo_test_*`` rules are reported as skipped. ``run`` filters by a
regular expression searched in the fully qualified name (``data.pkg.test_name``), like
``opa test --run``.

Evaluation: all tests are compiled into one regopy bundle (one entrypoint each) with the
same settings as the gateway (strict builtin errors), then evaluated one by one with no
input. A test passes when it evaluates to ``true``; ``false``/undefined/any other value
is a failure; an engine error (conflict, builtin error...) is an error. ``print()``
output is captured per test.

Formats: ``pretty`` (``PASS: 12/12``; failures as ``FAIL: data.pkg.test_x``), ``json``
(OPA's fields: location, package, name, fail, error, skip, duration in ns, plus
output) and ``junit`` (JUnit XML, one testsuite per package).
"""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.policy.errors import PolicyCompileError
from gateway.policy.runtime import (
    EvalError,
    capture_c_stdout,
    check_known_crashes,
    compile_policy,
    probe_compile,
)
from gateway.policy.source import PolicySource

__all__ = [
    "FORMATS",
    "TestResult",
    "discover_tests",
    "format_results",
    "run_source_tests",
    "run_tests",
]

FORMATS = ("pretty", "json", "junit")
TEST_PREFIX = "test_"
SKIP_PREFIX = "todo_test_"


@dataclass(frozen=True)
class TestResult:
    """One test's outcome."""

    __test__ = False  # not a pytest class

    package: str  # "data.pgwarden_test"
    name: str  # "test_reader_sees_masked_pan"
    status: str  # "pass" | "fail" | "error" | "skip"
    duration_ns: int
    file: str
    line: int
    col: int = 1
    message: str | None = None  # why it failed / the error
    output: str = ""  # captured print() output

    @property
    def fqname(self) -> str:
        return f"{self.package}.{self.name}"

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class _Test:
    package: str
    name: str
    file: str
    line: int
    col: int
    skip: bool

    @property
    def fqname(self) -> str:
        return f"data.{self.package}.{self.name}"

    @property
    def entrypoint(self) -> str:
        return "/".join([*self.package.split("."), self.name])


def discover_tests(source: PolicySource, run: str | None = None) -> list[_Test]:
    """Test rules in ``source``, in file then line order, filtered by ``run``.

    Raises ``re.error`` for a bad ``run`` pattern.
    """
    pattern = re.compile(run) if run else None
    tests: list[_Test] = []
    seen: set[tuple[str, str]] = set()
    for file, info in sorted(source.infos()):
        if info.package is None:
            continue
        for rule in info.rules:
            if rule.is_function or rule.ref != rule.name:
                continue
            if rule.name.startswith(SKIP_PREFIX):
                skip = True
            elif rule.name.startswith(TEST_PREFIX):
                skip = False
            else:
                continue
            key = (info.package, rule.name)
            if key in seen:  # incremental definitions: one test
                continue
            seen.add(key)
            test = _Test(info.package, rule.name, file, rule.line, rule.col, skip)
            if pattern is not None and not pattern.search(test.fqname):
                continue
            tests.append(test)
    return tests


def run_tests(paths: list[str], run: str | None = None, *, probe: bool = False) -> list[TestResult]:
    """Load ``paths`` (directories/files), compile once, run every test.

    Raises PolicyLoadError / PolicyCompileError (with file:line) for unusable input and
    ``re.error`` for a bad ``run`` pattern. Returns an empty list when no test matches.
    ``probe``: compile in a child process first (rego-cpp can abort on some input).
    """
    return run_source_tests(PolicySource.from_paths(paths), run, probe=probe)


def run_source_tests(
    source: PolicySource, run: str | None = None, *, probe: bool = False
) -> list[TestResult]:
    """:func:`run_tests` for an already loaded source (e.g. a verified bundle)."""
    tests = discover_tests(source, run)
    runnable = [t for t in tests if not t.skip]
    entrypoints = [t.entrypoint for t in runnable]
    source.check_rules_vs_data(include_tests=True)
    if probe:
        check_known_crashes(source.modules)
        crash = probe_compile(source.modules, source.data, entrypoints)
        if crash is not None:
            raise PolicyCompileError(source.origin, crash)
    # Compile even when nothing matched: a broken module is reported either way.
    compiled = compile_policy(source.modules, source.data, entrypoints)
    results: list[TestResult] = []
    with capture_c_stdout() as cap:
        for test in tests:
            pkg = f"data.{test.package}"
            if test.skip:
                results.append(
                    TestResult(pkg, test.name, "skip", 0, test.file, test.line, test.col)
                )
                continue
            started = time.perf_counter_ns()
            status, message = "pass", None
            try:
                value = compiled.evaluate(test.entrypoint)
                if value is not True:
                    status = "fail"
                    message = _describe(value)
            except EvalError as exc:
                status, message = "error", str(exc)
            duration = time.perf_counter_ns() - started
            results.append(
                TestResult(
                    pkg,
                    test.name,
                    status,
                    duration,
                    test.file,
                    test.line,
                    test.col,
                    message,
                    cap.take(),
                )
            )
    return results


def _describe(value: object) -> str:
    from gateway.policy.decision import UNDEFINED

    if value is UNDEFINED:
        return "evaluated to undefined"
    return f"evaluated to {json.dumps(value)[:200]}, not true"


# -- formatting -------------------------------------------------------------------------


def format_results(
    results: Sequence[TestResult], fmt: str = "pretty", verbose: bool = False
) -> str:
    """Render results as ``pretty``, ``json`` or ``junit``; ValueError for another fmt."""
    if fmt == "pretty":
        return _pretty(results, verbose)
    if fmt == "json":
        return _json(results)
    if fmt == "junit":
        return _junit(results)
    raise ValueError(f"unknown format {fmt!r} (use one of: {', '.join(FORMATS)})")


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f}ms" if ns < 1_000_000_000 else f"{ns / 1e9:.3f}s"


def _pretty(results: Sequence[TestResult], verbose: bool) -> str:
    lines: list[str] = []
    total = len(results)
    if total == 0:
        return "no tests found\n"
    for r in results:
        if r.status == "pass":
            if verbose:
                lines.append(f"PASS: {r.fqname} ({_ms(r.duration_ns)})")
        elif r.status == "skip":
            if verbose:
                lines.append(f"SKIPPED: {r.fqname} ({r.location})")
        elif r.status == "fail":
            lines.append(f"FAIL: {r.fqname} ({r.location}) {r.message or ''}".rstrip())
        else:
            lines.append(f"ERROR: {r.fqname} ({r.location}): {r.message or 'error'}")
        if r.output and (verbose or r.status in ("fail", "error")):
            lines.extend("  " + line for line in r.output.rstrip("\n").splitlines())
    counts = {
        s: sum(1 for r in results if r.status == s) for s in ("pass", "fail", "error", "skip")
    }
    if lines:
        lines.append("-" * 80)
    lines.append(f"PASS: {counts['pass']}/{total}")
    if counts["fail"]:
        lines.append(f"FAIL: {counts['fail']}/{total}")
    if counts["error"]:
        lines.append(f"ERROR: {counts['error']}/{total}")
    if counts["skip"]:
        lines.append(f"SKIPPED: {counts['skip']}/{total}")
    return "\n".join(lines) + "\n"


def _json(results: Sequence[TestResult]) -> str:
    out = []
    for r in results:
        item: dict[str, object] = {
            "location": {"file": r.file, "row": r.line, "col": r.col},
            "package": r.package,
            "name": r.name,
        }
        if r.status == "fail":
            item["fail"] = True
            item["message"] = r.message
        elif r.status == "error":
            item["error"] = {"message": r.message}
        elif r.status == "skip":
            item["skip"] = True
        item["duration"] = r.duration_ns
        if r.output:
            item["output"] = r.output
        out.append(item)
    return json.dumps(out, indent=2, ensure_ascii=False) + "\n"


_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(text: str | None) -> str:
    return _XML_BAD.sub("?", text or "")


def _junit(results: Sequence[TestResult]) -> str:
    def count(rs: Sequence[TestResult], status: str) -> str:
        return str(sum(1 for r in rs if r.status == status))

    def seconds(rs: Sequence[TestResult]) -> str:
        return f"{sum(r.duration_ns for r in rs) / 1e9:.6f}"

    root = ET.Element(
        "testsuites",
        {
            "name": "pgwarden policy test",
            "tests": str(len(results)),
            "failures": count(results, "fail"),
            "errors": count(results, "error"),
            "skipped": count(results, "skip"),
            "time": seconds(results),
        },
    )
    by_package: dict[str, list[TestResult]] = {}
    for r in results:
        by_package.setdefault(r.package, []).append(r)
    for package, rs in by_package.items():
        suite = ET.SubElement(
            root,
            "testsuite",
            {
                "name": _x(package),
                "tests": str(len(rs)),
                "failures": count(rs, "fail"),
                "errors": count(rs, "error"),
                "skipped": count(rs, "skip"),
                "time": seconds(rs),
            },
        )
        for r in rs:
            case = ET.SubElement(
                suite,
                "testcase",
                {
                    "name": _x(r.name),
                    "classname": _x(package),
                    "file": _x(r.file),
                    "line": str(r.line),
                    "time": f"{r.duration_ns / 1e9:.6f}",
                },
            )
            if r.status == "fail":
                el = ET.SubElement(case, "failure", {"message": _x(r.message), "type": "fail"})
                el.text = _x(f"{r.fqname} ({r.location}) {r.message or ''}")
            elif r.status == "error":
                el = ET.SubElement(case, "error", {"message": _x(r.message), "type": "error"})
                el.text = _x(f"{r.fqname} ({r.location}): {r.message or ''}")
            elif r.status == "skip":
                ET.SubElement(case, "skipped", {"message": "todo_test_"})
            if r.output:
                ET.SubElement(case, "system-out").text = _x(r.output)
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"
