"""tools/bench_ab.py's measuring parts on this process (the A/B itself runs by hand)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
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


def test_machine_cpu_counts_busy_time_not_idle_time(ab: ModuleType) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    assert ab.machine_cpu("cpu  1 20 300 4000 50000 600000 7000000 8 9 10\n") == 7600321
    start = ab.machine_cpu()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert (ab.machine_cpu() - start) / os.sysconf("SC_CLK_TCK") >= 0.2


def test_the_working_tree_needs_no_checkout_and_is_told_apart(ab: ModuleType,
                                                             tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        assert ab.checkout(stack, ".") == ab.REPO
    from gateway import native

    # the check reads the C modules mapped from the tree (none with PGWARDEN_PURE_PYTHON)
    assert ab.runs_tree(os.getpid(), ab.REPO) == bool(native.loaded())
    assert not ab.runs_tree(os.getpid(), tmp_path)


def test_a_checked_out_ref_leaves_no_worktree_or_directory_behind(ab: ModuleType) -> None:
    if shutil.which("git") is None or subprocess.run(
            ["git", "-C", str(ab.REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("the source tree is not a git checkout: there is no ref to check out")

    def worktrees() -> str:
        return subprocess.run(["git", "-C", str(ab.REPO), "worktree", "list", "--porcelain"],
                              capture_output=True, text=True, check=True).stdout

    with contextlib.ExitStack() as stack:
        where = ab.worktree(stack, "HEAD")
        assert (where / "pyproject.toml").is_file()
        assert str(where) in worktrees()
    assert not where.parent.exists()
    assert str(where) not in worktrees()
