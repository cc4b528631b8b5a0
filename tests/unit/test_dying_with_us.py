"""Worker processes die with the sidecar, however it dies, and are spawned without a fork of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlflow_bluegreen.worker.process.lifeline import dying_with_us

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_the_command_runs_in_place_with_its_arguments_and_environment() -> None:
    show = "import os, sys; print(sys.argv[1:], os.environ['PROBE'])"
    child = subprocess.run(
        dying_with_us([sys.executable, "-c", show, "a b", "", "c"]),
        env={**os.environ, "PROBE": "seen"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "['a b', '', 'c'] seen"


def test_the_pid_spawned_is_the_command_itself() -> None:
    # Signals and waits go to the pid Popen returns: it must be the command, not a wrapper.
    with subprocess.Popen(
        dying_with_us([sys.executable, "-c", "import os; print(os.getpid())"]),
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        out, _ = child.communicate(timeout=30)
    assert int(out) == child.pid


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state  # dead, waiting for whoever adopted it to reap it


def _orphan_after_parent_killed(guarded: bool) -> tuple[int, bool]:
    """A parent spawns SLEEPER and is SIGKILLed: the sleeper's pid and whether it died too."""
    spawn = "dying_with_us(SLEEPER)" if guarded else "SLEEPER"
    parent_code = (
        "import subprocess, sys, time\n"
        "from mlflow_bluegreen.worker.process.lifeline import dying_with_us\n"
        f"SLEEPER = {SLEEPER!r}\n"
        f"child = subprocess.Popen({spawn})\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE) as parent:
        assert parent.stdout is not None
        sleeper = int(parent.stdout.readline())
        time.sleep(0.5)  # the prelude has made its prctl call and exec'd the sleeper
        assert not _gone(sleeper)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 5
    while not _gone(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sleeper, _gone(sleeper)


def test_a_worker_is_killed_when_the_sidecar_is_sigkilled() -> None:
    _pid, died = _orphan_after_parent_killed(guarded=True)
    assert died


def test_without_the_prelude_the_orphan_would_live_on() -> None:
    # The control: what the test above would see if dying_with_us did nothing.
    pid, died = _orphan_after_parent_killed(guarded=False)
    try:
        assert not died
    finally:
        os.kill(pid, signal.SIGKILL)
