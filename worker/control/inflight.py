"""Counts the requests a worker is serving, so a swap can wait for them before stopping it, and
what it answered (tally.Counts), so a new version can be judged against the one it replaces.

Every wait in this package uses `asyncio.timeout`, not `asyncio.wait_for`: on Python 3.11
`wait_for` can swallow a cancellation that arrives as the awaited event fires, which left a
cancelled supervisor waiting forever."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

from .tally import BUCKETS, Counts, bucket_of

MARK_EVERY = 1.0  # seconds between snapshots kept for `counts_at`
MARKS_KEPT = 1200  # 20 minutes of them, under constant traffic


class InFlight:
    __slots__ = (
        "_idle",
        "_latency",
        "_marks",
        "_next_mark",
        "client_errors",
        "count",
        "ok",
        "other",
        "server_errors",
    )

    def __init__(self) -> None:
        self.count = 0
        self.ok = 0
        self.client_errors = 0
        self.server_errors = 0
        self.other = 0
        self._latency = [0] * BUCKETS
        self._idle = asyncio.Event()
        self._idle.set()
        # (monotonic, Counts) every MARK_EVERY s while answers come: what it answered by then.
        self._marks: deque[tuple[float, Counts]] = deque(maxlen=MARKS_KEPT)
        now = time.monotonic()
        self._marks.append((now, Counts()))
        self._next_mark = now + MARK_EVERY

    @property
    def answered(self) -> int:
        return self.ok + self.client_errors + self.server_errors + self.other

    @property
    def failed(self) -> int:
        """Answered with a 5xx of the worker's or ours (502, 504)."""
        return self.server_errors

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self, status: int | None = None, seconds: float = 0.0) -> None:
        """A request is over: answered with `status` after `seconds`, or, None, not answered
        (the client went away: nobody's verdict)."""
        self.count -= 1
        if status is not None:
            if 200 <= status < 300:
                self.ok += 1
            elif 400 <= status < 500:
                self.client_errors += 1
            elif status >= 500:
                self.server_errors += 1
            else:
                self.other += 1
            self._latency[bucket_of(seconds)] += 1
            now = time.monotonic()
            if now >= self._next_mark:
                self._marks.append((now, self.counts()))
                self._next_mark = now + MARK_EVERY
        if self.count == 0:
            self._idle.set()

    def counts(self) -> Counts:
        return Counts(
            self.ok, self.client_errors, self.server_errors, self.other, tuple(self._latency)
        )

    def counts_at(self, moment: float) -> Counts:
        """What it had answered by `moment` (monotonic), to within MARK_EVERY; before its
        oldest snapshot kept, what it had by then."""
        for when, counts in reversed(self._marks):
            if when <= moment:
                return counts
        return self._marks[0][1]

    async def wait_idle(self, timeout: float) -> bool:
        """True when every request finished within `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return self.count == 0
