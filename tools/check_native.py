"""Run the compiled row walker's tests under AddressSanitizer and UndefinedBehaviorSanitizer.

    .venv/bin/python tools/check_native.py [--examples N]

`gateway/masking/_rowwalk.c` reads bytes an upstream server chose. This builds it with
``-fsanitize=address,undefined`` into a temporary directory, loads that build in place of
the installed one, and runs tests/test_rowwalk_native.py (random, truncated and corrupted
DataRow runs, compared with the Python walker) with every Python object allocated by
malloc, so a read past any buffer is caught. Needs gcc with libasan and libubsan.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "gateway" / "masking" / "_rowwalk.c"
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"

RUNNER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("gateway.masking._rowwalk", {so!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.modules["gateway.masking._rowwalk"] = mod
import gateway.masking.rows as rows
assert rows._native is mod
import pytest
# -s: pytest must not capture fd 2, where a sanitizer reports before it aborts
sys.exit(pytest.main(["-q", "-s", "-p", "no:cacheprovider", "tests/test_rowwalk_native.py",
                      "tests/test_result_masking_units.py"]))
"""


def runtime(name: str) -> str:
    return subprocess.run(["gcc", f"-print-file-name={name}"], check=True,
                          capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=3000,
                   help="hypothesis examples per property (the suite's default is 300-400)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pgwarden-asan-") as tmp:
        so = str(Path(tmp) / f"_rowwalk{SUFFIX}")
        subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
                        "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                        "-fno-omit-frame-pointer", f"-I{sysconfig.get_paths()['include']}",
                        str(SOURCE), "-o", so], check=True)
        env = dict(os.environ, PYTHONMALLOC="malloc", ASAN_OPTIONS="detect_leaks=0",
                   LD_PRELOAD=f"{runtime('libasan.so')}:{runtime('libubsan.so')}",
                   PGWARDEN_WALK_EXAMPLES=str(args.examples))
        env.pop("PGWARDEN_PURE_PYTHON", None)
        return subprocess.run([sys.executable, "-c", RUNNER.format(so=so)], cwd=ROOT,
                              env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
