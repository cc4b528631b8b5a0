"""Trying a ready new version on live traffic before the switch: shadow copies (answers only
compared) and the canary (a share answered by it). The roster gives each its traffic;
shadow.judge_shadow and canary.judge decide."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .canary import MAX_RUN, CanaryPolicy, judge
from .compare import Limits, Verdict
from .record import JudgedWorse, Step, SwapRecord, WorkerFailed
from .roster import Roster
from .shadow import ShadowPolicy, ShadowRun, judge_shadow
from .worker import Worker

log = logging.getLogger("mlflow_bluegreen.worker.control.supervisor")

T = TypeVar("T")

POLL = 0.25  # seconds between looks at the counts of a run that needs more answers


class Until(Protocol):
    """The supervisor's wait, during which its loop goes on handling events."""

    def __call__(self, awaitable: Awaitable[T], /) -> Awaitable[T]: ...


async def run_for(
    seconds: float, enough: Callable[[], bool], *exits: asyncio.Future[int | None]
) -> set[asyncio.Future[int | None]]:
    """Run for `seconds`, then on while not `enough()`, up to MAX_RUN x `seconds`; sooner when
    one of `exits` is done. The exits done."""
    began = time.monotonic()
    while True:
        elapsed = time.monotonic() - began
        if elapsed >= seconds and (enough() or elapsed >= MAX_RUN * seconds):
            return set()
        wait = seconds - elapsed if elapsed < seconds else min(POLL, MAX_RUN * seconds - elapsed)
        done, _pending = await asyncio.wait(
            exits, timeout=wait, return_when=asyncio.FIRST_COMPLETED
        )
        if done:
            return done


async def run_shadow(
    worker: Worker,
    active: Worker,
    policy: ShadowPolicy,
    record: SwapRecord,
    *,
    roster: Roster,
    until: Until,
    report: Callable[[str], None],
    drain_timeout: float,
) -> None:
    """Copy a share of live predictions to the new worker, compare, and judge it."""
    record.step = Step.SHADOW
    step = time.monotonic()
    run = ShadowRun(worker, policy, active.version, report)
    roster.begin_shadow(run)
    log.info(
        "shadow: a copy of %g %% of predictions to %s for %g s",
        policy.percent,
        worker.version,
        policy.seconds,
    )
    new_exit = asyncio.ensure_future(worker.wait_exit())
    try:
        done = await until(
            run_for(policy.seconds, lambda: run.compared >= policy.min_pairs, new_exit)
        )
        if not done:
            await until(run.wait_idle(drain_timeout))  # copies sent count too
    finally:
        new_exit.cancel()
        roster.end_shadow()
    record.step_done(Step.SHADOW, round(time.monotonic() - step, 3))
    run.open = False
    verdict = judge_shadow(run)
    record.shadow = verdict.figures
    log.info("shadow of %s: %s", worker.version, record.shadow)
    if done:
        raise WorkerFailed(Step.SHADOW, "the new worker exited during the shadow run")
    if verdict.verdict is Verdict.REJECTED:
        assert verdict.reason is not None
        raise JudgedWorse(Step.SHADOW, verdict.reason)


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
    old_before, new_before = old.in_flight.counts(), worker.in_flight.counts()
    step = time.monotonic()
    roster.begin_canary(worker, policy.percent / 100.0)
    log.info(
        "canary: %g %% of traffic to %s for %g s",
        policy.percent,
        worker.version,
        policy.seconds,
    )

    def enough() -> bool:
        needed = policy.limits.min_requests
        return (
            worker.in_flight.answered - new_before.answered >= needed
            and old.in_flight.answered - old_before.answered >= needed
        )

    new_exit = asyncio.ensure_future(worker.wait_exit())
    old_exit = asyncio.ensure_future(old.wait_exit())
    try:
        done = await until(run_for(policy.seconds, enough, new_exit, old_exit))
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
        old.in_flight.counts().since(old_before),
        worker.in_flight.counts().since(new_before),
        old_version=old.version,
        new_version=worker.version,
        new_exited=exited,
        old_exited=old_exit in done,
    )
    record.canary = verdict.figures
    log.info("canary of %s: %s", worker.version, record.canary)
    if verdict.verdict is Verdict.UNJUDGED:
        log.warning("canary of %s unjudged (%s): promoting it", worker.version, verdict.reason)
    if verdict.verdict is Verdict.REJECTED:
        assert verdict.reason is not None
        if exited:
            raise WorkerFailed(Step.CANARY, verdict.reason)
        raise JudgedWorse(Step.CANARY, verdict.reason)


@dataclass(frozen=True)
class Trials:
    """How a new version is judged by what clients see: shadow copies and a canary before the
    switch, and (with a linger) the automatic rollback after it."""

    shadow: ShadowPolicy | None = None
    canary: CanaryPolicy | None = None
    after_switch: Limits | None = None


async def try_on_live_traffic(
    worker: Worker,
    old: Worker,
    record: SwapRecord,
    trials: Trials,
    *,
    roster: Roster,
    until: Until,
    drain_timeout: float,
    report: Callable[[str], None],
) -> None:
    """Whichever trials are set, shadow first (it costs clients nothing), then the canary;
    WorkerFailed at the first the new version fails."""
    if trials.shadow is not None:
        await run_shadow(
            worker,
            old,
            trials.shadow,
            record,
            roster=roster,
            until=until,
            report=report,
            drain_timeout=drain_timeout,
        )
    if trials.canary is not None and old.alive:
        await run_canary(
            worker,
            old,
            trials.canary,
            record,
            roster=roster,
            until=until,
            drain_timeout=drain_timeout,
        )
