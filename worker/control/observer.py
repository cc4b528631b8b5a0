"""The seam between the state machine and what watches it (metrics, the proxy's pools)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .record import SwapRecord
from .worker import Worker


class SwapObserver(Protocol):
    """Told about every change, by the one place in the supervisor that makes it."""

    def swap_finished(self, record: SwapRecord) -> None: ...
    def active_changed(self, worker: Worker | None) -> None: ...
    def worker_up(self, slot: str, up: bool) -> None: ...
    def worker_stopped(self, worker: Worker) -> None:
        """The worker is stopped and reaped: nothing will reach it at its address again."""

    def shadow_outcome(self, outcome: str) -> None:
        """A shadow copy was agreed, disagreed or dropped (shadow.ShadowRun)."""


class NoObserver:
    def swap_finished(self, record: SwapRecord) -> None:
        pass

    def active_changed(self, worker: Worker | None) -> None:
        pass

    def worker_up(self, slot: str, up: bool) -> None:
        pass

    def worker_stopped(self, worker: Worker) -> None:
        pass

    def shadow_outcome(self, outcome: str) -> None:
        pass


class Observers:
    """Several observers, told in turn."""

    def __init__(self, observers: Sequence[SwapObserver]) -> None:
        self._observers = tuple(observers)

    def swap_finished(self, record: SwapRecord) -> None:
        for observer in self._observers:
            observer.swap_finished(record)

    def active_changed(self, worker: Worker | None) -> None:
        for observer in self._observers:
            observer.active_changed(worker)

    def worker_up(self, slot: str, up: bool) -> None:
        for observer in self._observers:
            observer.worker_up(slot, up)

    def worker_stopped(self, worker: Worker) -> None:
        for observer in self._observers:
            observer.worker_stopped(worker)

    def shadow_outcome(self, outcome: str) -> None:
        for observer in self._observers:
            observer.shadow_outcome(outcome)
