"""Finding a worker's processes in /proc: a real process tree, as `mlflow models serve` makes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from mlflow_bluegreen.worker.process import procfs

# A leader that starts a child, which starts a grandchild, and a child that leaves the group
# (setsid, as a daemonising tool would); it prints their pids once all are running.
TREE = """
import os, subprocess, sys
sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
middle = subprocess.Popen([sys.executable, "-c", f'''
import subprocess, sys
grandchild = subprocess.Popen({sleep!r})
print(grandchild.pid, flush=True)
import time; time.sleep(60)
'''], stdout=subprocess.PIPE, text=True)
grandchild = int(middle.stdout.readline())
away = subprocess.Popen(sleep, start_new_session=True)
print(middle.pid, grandchild, away.pid, flush=True)
import time; time.sleep(60)
"""


@pytest.fixture
def tree():
    leader = subprocess.Popen(
        [sys.executable, "-c", TREE], stdout=subprocess.PIPE, start_new_session=True, text=True
    )
    assert leader.stdout is not None
    middle, grandchild, away = map(int, leader.stdout.readline().split())
    yield leader.pid, {leader.pid, middle, grandchild}, away
    os.killpg(leader.pid, signal.SIGKILL)
    os.kill(away, signal.SIGKILL)
    leader.wait()


def test_the_group_is_the_leader_and_the_descendants_that_stayed_in_it(tree) -> None:
    leader, members, away = tree
    found = list(procfs.group_pids(leader))
    assert found[0] == leader
    assert set(found) == members
    assert away not in found


@pytest.mark.skipif(not procfs._HAS_CHILDREN, reason="this kernel has no children files to walk")
def test_the_walk_finds_what_a_scan_of_all_proc_finds(tree, monkeypatch) -> None:
    leader, members, _away = tree
    walked = set(procfs.group_pids(leader))
    monkeypatch.setattr(procfs, "_HAS_CHILDREN", False)
    assert set(procfs.group_pids(leader)) == walked == members


def test_a_group_that_is_gone_has_no_processes() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    process.wait()
    assert list(procfs.group_pids(process.pid)) == []
