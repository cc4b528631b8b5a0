"""Counts the requests a worker is serving, so a swap can wait for them before stopping it.

Every wait in this package uses `asyncio.timeout`, not `asyncio.wait_for`: on Python 3.11
`wait_for` can swallow a cancellation that arrives as the awaited event fires, which left a
cancelled supervisor waiting forever."""

from __future__ import annotations

import asyncio
import contextlib


class InFlight:
    __slots__ = ("_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True when every request finished within `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return self.count == 0
