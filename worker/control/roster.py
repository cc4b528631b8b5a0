"""Every change of a worker's role, each made in one method that also tells the observer. Only the
supervisor's loop calls these; the proxy only reads `roles`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .compare import Comparison, Limits
from .events import Inbox
from .failures import Failures
from .observer import NoObserver, SwapObserver
from .record import Result, Step, SwapRecord
from .roles import Roles
from .shadow import ShadowRun
from .watchers import Stopper, judge_after_switch, report_exit, watch_linger
from .worker import Worker

log = logging.getLogger("mlflow_bluegreen.worker.control.supervisor")


class Roster:
    def __init__(
        self,
        inbox: Inbox,
        stopper: Stopper,
        failures: Failures,
        *,
        linger: float,
        health_interval: float,
        health_failures: int,
        pinned: Callable[[], bool],
    ) -> None:
        self.roles = Roles()
        self.observer: SwapObserver = NoObserver()
        self._inbox = inbox
        self.stopper = stopper
        self._failures = failures
        self.linger = linger
        self._health_interval = health_interval
        self._health_failures = health_failures
        self._pinned = pinned
        self._switched = asyncio.Event()  # pulsed on every change of `active`
        self.served = False  # a worker has been active at least once
        # Versions that took traffic, latest last: what to bring back while the wanted one fails.
        self.served_versions: deque[str] = deque(maxlen=8)
        # (version, input schema) of the last version that took traffic: what callers rely on,
        # and what the signature guard compares a new version with, even once it is gone.
        self.served_schema: tuple[str, Any] | None = None
        self.inputs: dict[Worker, Any] = {}  # input schema of each worker brought up
        self.last_slot: str | None = None
        # Tasks that only watch and report: exits, the linger timer and its health checks.
        self._watchers: set[asyncio.Task[None]] = set()
        self._linger_timer: asyncio.Task[None] | None = None
        # Drain-then-stop of each retiring worker, through the stopper's one stop per worker.
        self._retirements: dict[Worker, asyncio.Task[bool]] = {}

    # -- read by the proxy ---------------------------------------------------------------------

    async def wait_for_active(self, timeout: float, exclude: Worker | None = None) -> Worker | None:
        """The active worker once there is one other than `exclude`; None after `timeout`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.roles.active is None or self.roles.active is exclude:
                    await self._switched.wait()
        active = self.roles.active
        return active if active is not None and active is not exclude else None

    async def wait_for_version(self, version: str) -> Worker:
        """The active worker, once it serves `version`."""
        while (active := self.roles.active) is None or active.version != version:
            await self._switched.wait()
        return active

    # -- changes -------------------------------------------------------------------------------

    def make_active(self, worker: Worker | None) -> None:
        roles = self.roles
        outgoing = roles.active
        if outgoing is not None:
            self._failures.served_its_time(outgoing.version, time.monotonic() - roles.active_from)
        roles.make_active(worker)
        if worker is not None:
            self.served = True
            with contextlib.suppress(ValueError):
                self.served_versions.remove(worker.version)
            self.served_versions.append(worker.version)
            self.served_schema = (worker.version, self.inputs.get(worker))
        self._switched.set()
        self._switched = asyncio.Event()
        self.observer.active_changed(worker)

    def switch_to(self, worker: Worker) -> None:
        """`worker`, brought up by a swap, takes the traffic."""
        self.make_active(worker)
        self.end_canary()
        self.end_start()
        self.last_slot = worker.slot
        self.observer.worker_up(worker.slot, True)
        self._spawn_watcher(report_exit(worker, self._inbox), f"watch-{worker.slot}")

    def begin_start(self, worker: Worker) -> None:
        """A swap brings `worker` up."""
        self.roles.starting = worker

    def end_start(self) -> None:
        self.roles.starting = None

    def begin_canary(self, worker: Worker, share: float) -> None:
        self.roles.canary, self.roles.canary_share = worker, share
        self.observer.worker_up(worker.slot, True)

    def end_canary(self) -> None:
        self.roles.canary = None

    def begin_shadow(self, run: ShadowRun) -> None:
        self.roles.shadow = run

    def end_shadow(self) -> None:
        """No more copies; those sent still count, until the run is judged and closed."""
        self.roles.shadow = None

    def begin_linger(self, worker: Worker) -> None:
        """Keep the replaced `worker` warm for `linger` seconds; meanwhile watch the new one."""
        self.roles.lingering = worker
        self.roles.lingering_until = time.time() + self.linger
        log.info(
            "keeping %s v%s warm for %g s (instant rollback)",
            worker.slot,
            worker.version,
            self.linger,
        )
        watch = watch_linger(
            worker,
            self.roles,
            self._inbox,
            seconds=self.linger,
            interval=self._health_interval,
            failures_allowed=self._health_failures,
            pinned=self._pinned,
        )
        self._linger_timer = self._spawn_watcher(watch, f"linger-{worker.slot}")

    def take_lingering(self) -> Worker | None:
        """The lingering worker, which lingers no more (its timer cancelled)."""
        worker = self.roles.lingering
        timer, self._linger_timer = self._linger_timer, None
        if timer is not None:
            timer.cancel()
        self.roles.lingering = None
        self.roles.lingering_until = None
        return worker

    def end_linger(self, why: str) -> None:
        worker = self.take_lingering()
        if worker is not None:
            log.info("stopping lingering %s v%s: %s", worker.slot, worker.version, why)
            self.retire(worker)

    def switch_to_lingering(self, cause: str) -> tuple[Worker, SwapRecord]:
        """Make the lingering worker active: it is warm, so the switch is all there is to do.
        Returns it and the swap's record (not finished yet)."""
        old = self.roles.active
        began = time.monotonic()
        worker = self.take_lingering()
        assert worker is not None
        record = SwapRecord(
            to_version=worker.version,
            from_version=old.version if old else None,
            slot=worker.slot,
            cause=cause,
        )
        self.make_active(worker)
        self.last_slot = worker.slot
        record.step_done(Step.SWITCH, round(time.monotonic() - began, 6))
        return worker, record

    def roll_back(self, worker: Worker, comparison: Comparison) -> SwapRecord:
        """The active `worker` serves worse than the lingering one did (`comparison`): that one
        takes the traffic again at once. The record of it, finished."""
        cause = f"automatic rollback: {comparison.reason}"
        lingering, record = self.switch_to_lingering(cause)
        record.after_switch = comparison.figures
        self.retire(worker)  # its requests under way are answered
        record.step = Step.DONE
        record.end(Result.ROLLED_BACK, precision=6)
        log.error(
            "version %s rolled back to %s: %s; not tried again until the registry names "
            "another version and then it again, or POST /reload",
            worker.version,
            lingering.version,
            comparison.reason,
        )
        return record

    async def make_room(self, old: Worker, record: SwapRecord) -> None:
        """The memory policy: the active `old` worker drains and stops before the new one
        starts, so never two models are in memory. Requests that come meanwhile are held by
        the proxy (as while a crashed worker restarts) for the new version."""
        log.info(
            "swap %s -> %s: stopping %s first (%s)",
            old.version,
            record.to_version,
            old.slot,
            (record.policy or {}).get("why"),
        )
        record.step = Step.DRAIN
        self.make_active(None)
        record.drained = await self.retire(old, record)
        await self.retired()  # a lingering one too

    def begin_judging(self, worker: Worker, record: SwapRecord, limits: Limits) -> None:
        """Compare `worker`, just switched to, with the lingering one for as long as it
        lingers (automatic rollback)."""
        lingering = self.roles.lingering
        assert lingering is not None
        watch = judge_after_switch(
            worker, lingering, self.roles, self._inbox, record, limits=limits, seconds=self.linger
        )
        self._spawn_watcher(watch, f"judge-{worker.slot}")

    def retire(
        self, worker: Worker, record: SwapRecord | None = None, *, drain: bool = True
    ) -> asyncio.Task[bool]:
        """Let `worker` finish its requests (if `drain`), then stop it, in a task that reports
        Stopped. It stays in `roles.retiring` until then, also through a shutdown: close()
        finishes the stop. The task's result: whether it drained in time."""
        task = self._retirements.get(worker)
        if task is None:
            self.roles.retiring.add(worker)
            task = asyncio.create_task(
                self.stopper.drain_and_stop(worker, record, drain), name=f"retire-{worker.slot}"
            )
            self._retirements[worker] = task
        return task

    def retire_failed(self, worker: Worker) -> None:
        """A worker that died or is unfit: down at once, stopped without a drain."""
        self.observer.worker_up(worker.slot, False)
        self.retire(worker, drain=False)

    def stopped(self, worker: Worker) -> None:
        """A retired worker is gone: its slot is free."""
        self.roles.retiring.discard(worker)
        self._retirements.pop(worker, None)
        self.inputs.pop(worker, None)
        self.observer.worker_up(worker.slot, False)
        self.observer.worker_stopped(worker)

    def retired(self, slot: str | None = None) -> Awaitable[Any]:
        """Until what is retiring (in `slot`, or anywhere) is stopped."""
        stops = [t for w, t in self._retirements.items() if slot is None or w.slot == slot]
        return asyncio.wait(stops) if stops else asyncio.sleep(0)

    async def close(self) -> None:
        """Stop every worker, whatever its role. Call after the loop is cancelled."""
        for task in (*self._watchers, *self._retirements.values()):
            task.cancel()
        self.take_lingering()
        # Also those whose stop began and whose stopper was cancelled: each stop runs once.
        workers = {w for _role, w in self.roles.all()} | self.stopper.stopping()
        self.end_canary()
        self.make_active(None)
        await asyncio.gather(*(self.stopper.stop(w) for w in workers), return_exceptions=True)
        for worker in workers:
            self.stopped(worker)

    def _spawn_watcher(self, watch: Awaitable[None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(watch)
        task.set_name(name)
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return task
