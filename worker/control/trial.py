"""Trying a ready new version on live traffic before the switch: the canary. The roster gives
it its share of requests; canary.judge decides."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

from .canary import CanaryPolicy, Counts, judge
from .record import Step, SwapRecord, WorkerFailed
from .roster import Roster
from .worker import Worker

log = logging.getLogger("mlflow_bluegreen.worker.control.supervisor")

T = TypeVar("T")


class Until(Protocol):
    """The supervisor's wait, during which its loop goes on handling events."""

    def __call__(self, awaitable: Awaitable[T], /) -> Awaitable[T]: ...


async def run_canary(
    worker: Worker,
    old: Worker,
    policy: CanaryPolicy,
    record: SwapRecord,
    *,
    roster: Roster,
    until: Until,
    drain_timeout: float,
) -> None:
    """Let the new worker answer a share of live traffic, then judge it against `old`."""
    record.step = Step.CANARY
    old_before, new_before = Counts.of(old.in_flight), Counts.of(worker.in_flight)
    step = time.monotonic()
    roster.begin_canary(worker, policy.percent / 100.0)
    log.info(
        "canary: %g %% of traffic to %s for %g s",
        policy.percent,
        worker.version,
        policy.seconds,
    )
    new_exit = asyncio.ensure_future(worker.wait_exit())
    old_exit = asyncio.ensure_future(old.wait_exit())
    try:
        done, _pending = await until(
            asyncio.wait(
                (new_exit, old_exit),
                timeout=policy.seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        )
    finally:
        new_exit.cancel()
        old_exit.cancel()
        roster.end_canary()
    exited = new_exit in done
    if old_exit in done and not exited:
        # Nothing else serves now: judge on what the canary answered so far, at once.
        log.warning("old worker %s v%s exited during the canary", old.slot, old.version)
    else:
        # Requests it took before the end count too: judge once they are answered.
        await until(worker.in_flight.wait_idle(drain_timeout))
    record.step_done(Step.CANARY, round(time.monotonic() - step, 3))
    verdict = judge(
        policy,
        Counts.of(old.in_flight).since(old_before),
        Counts.of(worker.in_flight).since(new_before),
        old_version=old.version,
        new_version=worker.version,
        new_exited=exited,
        old_exited=old_exit in done,
    )
    record.canary = verdict.figures
    log.info("canary of %s: %s", worker.version, record.canary)
    if verdict.reason is not None:
        raise WorkerFailed(Step.CANARY, verdict.reason)
