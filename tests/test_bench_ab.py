"""tools/bench_ab.py's measuring parts on this process (the A/B itself runs by hand)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_tool


@pytest.fixture(scope="module")
def ab() -> ModuleType:
    return load_tool("bench_ab")


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
