"""What the watchers of workers report to the supervisor's loop. They only report: the loop
decides what each means now (as gunicorn's signal handlers only queue the signal)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from .compare import Comparison
from .record import SwapRecord
from .worker import Worker


@dataclass(frozen=True)
class Exited:
    """A worker's process exited, whatever role it had."""

    worker: Worker
    code: int | None


@dataclass(frozen=True)
class Unhealthy:
    """The active worker failed `failures` health checks in a row while another lingers."""

    worker: Worker
    failures: int


@dataclass(frozen=True)
class LingerOver:
    worker: Worker


@dataclass(frozen=True)
class Stopped:
    """A retired worker is stopped and reaped: its slot is free."""

    worker: Worker


@dataclass(frozen=True)
class RollbackAsked:
    """An operator asked to go back to the lingering `version` and stay there."""

    version: str


@dataclass(frozen=True)
class Judged:
    """The active worker's answers since its switch, against what the lingering one answered
    before it: a regression (REJECTED), or the verdict at the end of the linger."""

    worker: Worker
    comparison: Comparison
    record: SwapRecord  # of the swap that switched to it


@dataclass(frozen=True)
class Wake:
    """Something the loop decides on changed (the wanted version, a pin, a backoff)."""


Event = Exited | Unhealthy | LingerOver | Stopped | RollbackAsked | Judged | Wake


class Inbox:
    """Events in the order they came; `wait()` returns once there is one."""

    def __init__(self) -> None:
        self._events: deque[Event] = deque()
        self._posted = asyncio.Event()

    def post(self, event: Event) -> None:
        self._events.append(event)
        self._posted.set()

    def take(self) -> list[Event]:
        events = list(self._events)
        self._events.clear()
        self._posted.clear()
        return events

    async def wait(self) -> None:
        await self._posted.wait()
