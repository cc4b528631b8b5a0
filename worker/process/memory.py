"""How much memory a worker's processes hold, from /proc."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from .procfs import group_pids

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def group_rss_bytes(pgid: int) -> int:
    """Sum of resident memory of the processes in group `pgid` (0 off Linux)."""
    total = 0
    for pid in group_pids(pgid):
        # A process that exited while we looked counts for nothing.
        with (
            contextlib.suppress(OSError, IndexError, ValueError),
            open(f"/proc/{pid}/statm", "rb") as statm,
        ):
            total += int(statm.read().split()[1]) * _PAGE_SIZE
    return total


CGROUP_ROOT = "/sys/fs/cgroup"


def own_cgroup(proc_self_cgroup: str = "/proc/self/cgroup") -> str | None:
    """This process's cgroup v2 path ("0::/kubepods/..."), None without cgroup v2."""
    try:
        with open(proc_self_cgroup) as lines:
            for line in lines:
                hierarchy, _controllers, path = line.rstrip("\n").split(":", 2)
                if hierarchy == "0":
                    return path
    except (OSError, ValueError):
        return None
    return None


def _read_int(path: str) -> int | None:
    """The number in a cgroup file; None where it is missing or says "max"."""
    try:
        with open(path) as file:
            text = file.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def memory_headroom(
    limit: int | None,
    in_use: Callable[[], int],
    *,
    cgroup_root: str = CGROUP_ROOT,
    proc_self_cgroup: str = "/proc/self/cgroup",
) -> int | None:
    """Bytes the sidecar may still use before its memory limit: `limit` (--memory-limit) or
    its cgroup's memory.max, less the cgroup's memory.current or, without one, `in_use()`.
    None when no limit is known."""
    path = own_cgroup(proc_self_cgroup)
    directory = os.path.join(cgroup_root, path.lstrip("/")) if path is not None else None
    if limit is None and directory is not None:
        limit = _read_int(os.path.join(directory, "memory.max"))
    if limit is None:
        return None
    current = _read_int(os.path.join(directory, "memory.current")) if directory else None
    return limit - (current if current is not None else in_use())
