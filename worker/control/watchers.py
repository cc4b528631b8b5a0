"""What watches workers for the supervisor's loop: exits, the active worker's health while
another lingers, and stops. Each only reports to the loop's inbox; none changes a role."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .compare import Limits, Verdict, compare
from .events import Exited, Inbox, Judged, LingerOver, Stopped, Unhealthy
from .record import Step, SwapRecord
from .roles import Roles
from .worker import Worker

log = logging.getLogger("mlflow_bluegreen.worker.control.supervisor")


async def report_exit(worker: Worker, inbox: Inbox) -> None:
    code = await worker.wait_exit()
    inbox.post(Exited(worker, code))


async def watch_linger(
    lingering: Worker,
    roles: Roles,
    inbox: Inbox,
    *,
    seconds: float,
    interval: float,
    failures_allowed: int,
    pinned: Callable[[], bool],
) -> None:
    """Health-check the active worker while `lingering` lingers: report it Unhealthy after
    `failures_allowed` failed checks in a row, and LingerOver when the time is up."""
    deadline = time.monotonic() + seconds
    failures = 0
    while (remaining := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(interval, remaining))
        active = roles.active
        if roles.lingering is not lingering or active is None:
            return
        if await active.healthy():
            failures = 0
            continue
        failures += 1
        log.warning(
            "active %s v%s failed health check %d of %d",
            active.slot,
            active.version,
            failures,
            failures_allowed,
        )
        # Pinned by a rollback: the operator chose the active version over this one.
        if failures >= failures_allowed and not pinned():
            # The loop falls back (and cancels this timer) unless things changed meanwhile;
            # then the checks go on, and so does the linger.
            inbox.post(Unhealthy(active, failures))
            failures = 0
    inbox.post(LingerOver(lingering))


async def judge_after_switch(
    active: Worker,
    lingering: Worker,
    roles: Roles,
    inbox: Inbox,
    record: SwapRecord,
    *,
    limits: Limits,
    seconds: float,
    interval: float = 1.0,
) -> None:
    """While `lingering` lingers, compare what `active` answered since the switch with what
    `lingering` answered in as many seconds before it; report Judged at the first regression,
    or with the last verdict when the linger ends or the roles change."""
    switched = time.monotonic()
    deadline = switched + seconds
    since = active.in_flight.counts()
    baseline = lingering.in_flight.counts().since(lingering.in_flight.counts_at(switched - seconds))
    while True:
        await asyncio.sleep(max(0.0, min(interval, deadline - time.monotonic())))
        comparison = compare(
            limits,
            baseline,
            active.in_flight.counts().since(since),
            old_version=lingering.version,
            new_version=active.version,
        )
        comparison.figures["seconds"] = round(time.monotonic() - switched, 1)
        over = time.monotonic() >= deadline or roles.active is not active
        if comparison.verdict is Verdict.REJECTED or over or roles.lingering is not lingering:
            inbox.post(Judged(active, comparison, record))
            return


class Stopper:
    """Stops workers: one stop per worker, which nothing cancels once begun, so a shutdown can
    still wait for a stop whose requester was cancelled."""

    def __init__(self, inbox: Inbox, grace: float, drain_timeout: float) -> None:
        self._inbox = inbox
        self.grace = grace
        self.drain_timeout = drain_timeout
        self._stopping: dict[Worker, asyncio.Task[None]] = {}

    def stopping(self) -> set[Worker]:
        return set(self._stopping)

    def stop(self, worker: Worker) -> asyncio.Task[None]:
        """`worker.stop()` in a task of its own, one per worker, tracked until done."""
        task = self._stopping.get(worker)
        if task is None:
            task = asyncio.create_task(self._stop_quietly(worker), name=f"stop-{worker.slot}")
            self._stopping[worker] = task
        return task

    async def stopped(self, worker: Worker) -> None:
        """Stop `worker` and wait for it. A caller cancelled meanwhile does not abort the stop."""
        await asyncio.shield(self.stop(worker))

    async def drain_and_stop(self, worker: Worker, record: SwapRecord | None, drain: bool) -> bool:
        """Let `worker` finish its requests (if `drain`), stop it, report Stopped. Whether it
        drained in time."""
        drained = True
        if drain:
            step = time.monotonic()
            drained = await worker.in_flight.wait_idle(self.drain_timeout)
            if record is not None:
                record.step_done(Step.DRAIN, round(time.monotonic() - step, 3))
            if not drained:
                log.warning(
                    "worker %s v%s still had %d requests after %g s; stopping it anyway",
                    worker.slot,
                    worker.version,
                    worker.in_flight.count,
                    self.drain_timeout,
                )
        step = time.monotonic()
        await self.stopped(worker)
        if record is not None:
            record.step_done(Step.STOP, round(time.monotonic() - step, 3))
        self._inbox.post(Stopped(worker))
        return drained

    async def _stop_quietly(self, worker: Worker) -> None:
        try:
            await worker.stop(self.grace)
        except Exception:  # a stop that fails must not keep the slot busy forever
            log.exception("stopping worker %s v%s failed", worker.slot, worker.version)
        finally:
            self._stopping.pop(worker, None)
