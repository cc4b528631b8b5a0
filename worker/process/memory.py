"""How much memory a worker's processes hold, from /proc."""

from __future__ import annotations

import contextlib
import os

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
