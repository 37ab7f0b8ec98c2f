"""Run the C modules' tests under AddressSanitizer and UndefinedBehaviorSanitizer.

    .venv/bin/python tools/check_native.py [--examples N]

`gateway/masking/_rowwalk.c`, `gateway/masking/_prefilter.c` and `gateway/wire/_framing.c`
read bytes an upstream server and a client sent, `gateway/enforce/_shape.c` lexes a
client's SQL, `gateway/audit/_seal.c` writes the audit trail's lines, and
`gateway/policy/_input.c` hands the policy input to rego-cpp. This builds them with
``-fsanitize=address,undefined`` into a temporary directory, loads those builds in place
of the installed ones, and runs the tests that compare them with their Python twins on
random, truncated and corrupted input, with every Python object allocated by malloc, so
a read past any buffer is caught. Needs gcc with libasan and libubsan.
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
if str(ROOT) not in sys.path:  # run as a plain script: the checkout's gateway package
    sys.path.insert(0, str(ROOT))

from gateway.native import MODULES as NATIVE  # noqa: E402

MODULES = {name: ROOT / (name.replace(".", "/") + ".c") for name in NATIVE}  # -> source
TESTS = ["tests/test_rowwalk_native.py", "tests/test_result_masking_units.py",
         "tests/test_framing_native.py", "tests/test_single_run_native.py", "tests/test_wire.py",
         "tests/test_seal_native.py",
         "tests/test_audit_template.py", "tests/test_audit_ledger.py",
         "tests/test_statement_done_native.py", "tests/test_audit_filesink_native.py",
         "tests/test_audit_writer.py", "tests/test_shape_native.py",
         "tests/test_policy_input_native.py", "tests/test_safety_net_native.py"]
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"

RUNNER = """
import importlib.util, sys
for name, so in {builds!r}.items():
    spec = importlib.util.spec_from_file_location(name, so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[name] = mod
import gateway.masking.rows as rows
import gateway.wire.framing as framing
import gateway.audit.chain as chain
import gateway.enforce.shapes as shapes
import gateway.policy.runtime as runtime
import gateway.masking.safety_net as safety_net
assert rows._native is sys.modules["gateway.masking._rowwalk"]
assert framing._native is sys.modules["gateway.wire._framing"]
assert chain._native is sys.modules["gateway.audit._seal"]
assert shapes._native is sys.modules["gateway.enforce._shape"]
assert runtime._native is sys.modules["gateway.policy._input"]
assert safety_net._native is sys.modules["gateway.masking._prefilter"]
import pytest
# -s: pytest must not capture fd 2, where a sanitizer reports before it aborts
sys.exit(pytest.main(["-q", "-s", "-p", "no:cacheprovider", *{tests!r}]))
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
        builds = {}
        for name, source in MODULES.items():
            so = str(Path(tmp) / f"{name.rsplit('.', 1)[1]}{SUFFIX}")
            subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-g", "-Wall", "-Wextra",
                            "-Werror", "-fsanitize=address,undefined",
                            "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer",
                            f"-I{sysconfig.get_paths()['include']}", str(source), "-o", so],
                           check=True)
            builds[name] = so
        env = dict(os.environ, PYTHONMALLOC="malloc", ASAN_OPTIONS="detect_leaks=0",
                   LD_PRELOAD=f"{runtime('libasan.so')}:{runtime('libubsan.so')}",
                   PGWARDEN_NATIVE_EXAMPLES=str(args.examples))
        env.pop("PGWARDEN_PURE_PYTHON", None)
        return subprocess.run([sys.executable, "-c", RUNNER.format(builds=builds, tests=TESTS)],
                              cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
