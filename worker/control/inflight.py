"""Counts the requests a worker is serving, so a swap can wait for them before stopping it, and
those it has answered and failed, so a canary can be judged against the version it would replace.

Every wait in this package uses `asyncio.timeout`, not `asyncio.wait_for`: on Python 3.11
`wait_for` can swallow a cancellation that arrives as the awaited event fires, which left a
cancelled supervisor waiting forever."""

from __future__ import annotations

import asyncio
import contextlib


class InFlight:
    __slots__ = ("_idle", "answered", "count", "failed")

    def __init__(self) -> None:
        self.count = 0
        self.answered = 0
        self.failed = 0  # answered with a 5xx of the worker's or ours (502, 504)
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self, failed: bool = False) -> None:
        self.count -= 1
        self.answered += 1
        self.failed += failed
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True when every request finished within `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return self.count == 0
