"""Which versions failed, and when each may be tried again: failed swaps and crash loops."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from .backoff import Backoff
from .record import JudgedWorse, Step, WorkerFailed

log = logging.getLogger("mlflow_bluegreen.worker.control.supervisor")


@dataclass
class Failure:
    backoff: Backoff
    retry_at: float  # monotonic
    error: str


@dataclass
class CrashLoop:
    """Exits of one version's active worker soon after it took traffic, in a row."""

    backoff: Backoff
    count: int = 0


class Failures:
    def __init__(self, retry_base: float, retry_cap: float, crash_window: float) -> None:
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        # An active worker that exits within this many seconds of taking traffic exited early:
        # twice in a row, and its version is failing, like one that never got ready.
        self.crash_window = crash_window
        self._failed: dict[str, Failure] = {}
        self._crash_loops: dict[str, CrashLoop] = {}

    def retry_in(self, version: str) -> float:
        """Seconds until `version` may be tried again; 0 or less when it may now."""
        failure = self._failed.get(version)
        return 0.0 if failure is None else failure.retry_at - time.monotonic()

    def swap_failed(self, version: str, failure: WorkerFailed) -> float:
        """Note a failed swap to `version`; the delay before its next attempt (infinite for a
        version judged worse on live traffic: judged_worse)."""
        step, error = failure.step, str(failure)
        if isinstance(failure, JudgedWorse):
            self.judged_worse(version, error)
            return math.inf
        previous = self._failed.get(version)
        backoff = previous.backoff if previous else Backoff(self._retry_base, self._retry_cap)
        # A signature does not change by itself: asking again soon only costs a cold start.
        delay = self._retry_cap if step == Step.SIGNATURE else backoff.next_delay()
        self._failed[version] = Failure(backoff, time.monotonic() + delay, error)
        return delay

    def judged_worse(self, version: str, error: str) -> None:
        """`version` served live traffic worse than the version it would replace (canary,
        shadow, or after its switch): trying it again would only cost clients the same again.
        Not tried until the registry names another version and then this one again
        (registry_named), or an operator asks (clear)."""
        previous = self._failed.get(version)
        backoff = previous.backoff if previous else Backoff(self._retry_base, self._retry_cap)
        backoff.next_delay()  # one more attempt, for /status
        self._failed[version] = Failure(backoff, math.inf, error)

    def registry_named(self, version: str) -> None:
        """The registry names `version`: a rolled-back other version may be tried again
        should the registry name it later."""
        for other, failure in list(self._failed.items()):
            if other != version and math.isinf(failure.retry_at):
                del self._failed[other]

    def exited(self, version: str, code: int | None, served: float) -> None:
        """Count an exit of the active worker `served` seconds after it took traffic. The first
        is restarted at once like any crash; from the second in a row the version backs off
        like one that failed to start."""
        if served >= self.crash_window:
            self._crash_loops.pop(version, None)
            return
        loop = self._crash_loops.setdefault(
            version, CrashLoop(Backoff(self._retry_base, self._retry_cap))
        )
        loop.count += 1
        if loop.count < 2:
            return
        delay = loop.backoff.next_delay()
        error = (
            f"{Step.EXIT}: code {code} {served:.1f} s after taking traffic, "
            f"{loop.count} times in a row"
        )
        self._failed[version] = Failure(loop.backoff, time.monotonic() + delay, error)
        log.error("version %s is crash-looping (%s); next attempt in %.1f s", version, error, delay)

    def served_its_time(self, version: str, served: float) -> None:
        """It stopped serving after the crash window: no crash loop."""
        if served >= self.crash_window:
            self._crash_loops.pop(version, None)

    def succeeded(self, version: str) -> None:
        self._failed.pop(version, None)

    def clear(self) -> None:
        """Forget every backoff: an operator asked to try again."""
        self._failed.clear()
        self._crash_loops.clear()

    def describe(self, version: str) -> dict[str, Any] | None:
        failure = self._failed.get(version)
        if failure is None:
            return None
        if math.isinf(failure.retry_at):
            return {
                "attempts": failure.backoff.attempts,
                "retry_in": None,
                "retry_when": "the registry names another version and then this one again, "
                "or POST /reload",
                "error": failure.error,
            }
        return {
            "attempts": failure.backoff.attempts,
            "retry_in": max(0.0, round(failure.retry_at - time.monotonic(), 1)),
            "error": failure.error,
        }

    def versions(self) -> list[str]:
        return list(self._failed)
