"""tools/bench_ab.py's measuring parts on this process (the A/B itself runs by hand)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_ab.py"


@pytest.fixture(scope="module")
def ab() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pgwarden_bench_ab", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tree_cpu_counts_this_process_and_its_threads(ab: ModuleType) -> None:
    before = ab.tree_cpu(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn 0.3 s of CPU
        pass
    used = (ab.tree_cpu(os.getpid()) - before) / os.sysconf("SC_CLK_TCK")
    assert 0.2 <= used <= 2.0


def test_the_working_tree_needs_no_checkout_and_is_told_apart(ab: ModuleType,
                                                             tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        assert ab.checkout(stack, ".") == ab.REPO
    from gateway import native

    # the check reads the C modules mapped from the tree (none with PGWARDEN_PURE_PYTHON)
    assert ab.runs_tree(os.getpid(), ab.REPO) == bool(native.loaded())
    assert not ab.runs_tree(os.getpid(), tmp_path)
