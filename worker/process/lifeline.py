"""Ties between the sidecar and its workers' processes that hold however the sidecar dies."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence

_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def become_subreaper() -> bool:
    """Adopt our workers' orphaned descendants (uvicorn outlives `mlflow models serve` by a
    moment when stopped), so we reap them instead of leaving zombies when we run as PID 1."""
    if _libc is None:
        return False
    return bool(_libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


# Run in the child before the real command: SIGKILL it when the sidecar dies, however it dies
# (MLflow itself makes uvicorn follow its parent with SIGTERM, which frees the port). Not a
# preexec_fn: with one, Popen forks the whole sidecar and blocks the event loop meanwhile
# (15-22 ms for a 234 MiB sidecar, measured); without one CPython uses vfork (0.5 ms).
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):  # the parent died before prctl took effect
    os._exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def dying_with_us(command: Sequence[str]) -> list[str]:
    """`command`, made to be SIGKILLed when this process dies. The process keeps its pid: the
    prelude execs the command in place."""
    if _libc is None:
        return list(command)
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]
