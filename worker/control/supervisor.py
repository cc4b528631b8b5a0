"""The swap state machine: which worker is active, and how a new version replaces it.

One loop owns every transition, so two swaps never overlap and no role changes behind its back:

    wanted version changes
      -> start the idle slot -> signature guard -> GET /ping 200 -> warm-up 2xx
      -> [canary: a share of live traffic for a while, judged against the old worker]
      -> switch `active` -> drain the old worker -> stop it (or keep it warm: linger)
    any failure before the switch: stop the new worker, keep the old, back off

What happens to workers meanwhile (an exit, failed health checks, the end of a linger, a stop
finished) is only reported by their watchers, as events in the loop's inbox (events.py). The
loop handles them between its own steps and while it waits for one (`_until`), so a worker
that dies during a swap's boot is dealt with at once, by the same loop.

The switch is one assignment of `roles.active`; the proxy reads it once per request.

With `linger`, the replaced worker stays up without traffic for that long: the alias moving
back to it, `rollback()`, or the new worker dying or failing its health checks switch back to
it at once, with no cold start. Never more than two workers run: a swap to a third version
stops the lingering one first, since it needs its slot.

An active worker that dies is restarted at once; one that dies twice in a row soon after taking
traffic makes its version fail like one that never got ready. Whenever nothing serves and the
wanted version is backing off, the version that served before it is brought back meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any, TypeVar

from .bring_up import bring_up
from .canary import CanaryPolicy, Counts, judge
from .events import Event, Exited, Inbox, LingerOver, Stopped, Unhealthy, Wake
from .failures import Failures
from .observer import NoObserver, SwapObserver
from .record import Result, Step, SwapRecord, WorkerFailed
from .roles import SLOTS, Roles
from .watchers import Stopper, report_exit, watch_linger
from .worker import Worker, WorkerFactory

log = logging.getLogger(__name__)

T = TypeVar("T")


class NoRollback(Exception):
    """There is no lingering version to go back to."""


class Supervisor:
    """Keeps the wanted version serving, one swap at a time."""

    def __init__(
        self,
        factory: WorkerFactory,
        *,
        startup_timeout: float = 600.0,
        drain_timeout: float = 30.0,
        stop_grace: float = 10.0,
        retry_base: float = 2.0,
        retry_cap: float = 300.0,
        observer: SwapObserver | None = None,
        history_size: int = 50,
        linger: float = 0.0,
        canary: CanaryPolicy | None = None,
        allow_signature_change: bool = False,
        health_interval: float = 1.0,
        health_failures: int = 3,
        crash_window: float = 60.0,
    ) -> None:
        self._factory = factory
        self.startup_timeout = startup_timeout
        self.drain_timeout = drain_timeout
        self.stop_grace = stop_grace
        self.observer: SwapObserver = observer or NoObserver()
        self.linger = linger
        self.canary_policy = canary
        self.allow_signature_change = allow_signature_change
        self.health_interval = health_interval
        self.health_failures = health_failures
        self.roles = Roles()
        self._inbox = Inbox()
        self._failures = Failures(retry_base, retry_cap, crash_window)
        self.served = False  # a worker has been active at least once
        # Versions that took traffic, latest last: what to bring back while the wanted one fails.
        self._served_versions: deque[str] = deque(maxlen=8)
        # (version, input schema) of the last version that took traffic: what callers rely on,
        # and what the signature guard compares a new version with, even once it is gone.
        self._served_schema: tuple[str, Any] | None = None
        self._inputs: dict[Worker, Any] = {}  # input schema of each worker brought up
        self._switched = asyncio.Event()  # pulsed on every change of `active`
        self.wanted: str | None = None
        self.registry_version: str | None = None  # what the registry names, pinned or not
        self.pinned: dict[str, Any] | None = None  # set by rollback(), cleared by resume()
        self.current: SwapRecord | None = None
        self.history: deque[SwapRecord] = deque(maxlen=history_size)
        self._next_cause = "initial"
        self._last_slot: str | None = None
        self._lookup_seconds: float | None = None
        # Tasks that only watch and report: exits, the linger timer and its health checks.
        self._watchers: set[asyncio.Task[None]] = set()
        self._linger_timer: asyncio.Task[None] | None = None
        # Drain-then-stop of each retiring worker, through the one stop per worker.
        self._retirements: dict[Worker, asyncio.Task[bool]] = {}
        self._stopper = Stopper(self._inbox, stop_grace, drain_timeout)

    # -- what the proxy reads ------------------------------------------------------------------

    @property
    def active(self) -> Worker | None:
        return self.roles.active

    @property
    def canary(self) -> Worker | None:
        return self.roles.canary

    @property
    def lingering(self) -> Worker | None:
        return self.roles.lingering

    @property
    def ready(self) -> bool:
        return self.roles.active is not None

    def route(self) -> Worker | None:
        """The worker for the next request: the active one, or during a canary sometimes the
        new one."""
        roles = self.roles
        canary = roles.canary
        if canary is not None and (roles.active is None or random.random() < roles.canary_share):
            return canary  # also all of it when the old worker died: the canary is warm
        return roles.active

    def worker_for(self, version: str) -> Worker | None:
        """The worker serving `version` that may take traffic: active, canary or lingering."""
        return self.roles.serving(version)

    async def wait_for_worker(self, timeout: float, exclude: Worker | None = None) -> Worker | None:
        """The active worker once there is one other than `exclude`; None after `timeout`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.roles.active is None or self.roles.active is exclude:
                    await self._switched.wait()
        active = self.roles.active
        return active if active is not None and active is not exclude else None

    def workers(self) -> list[tuple[str, Worker]]:
        """Every worker that runs, with its role."""
        return [(str(role), worker) for role, worker in self.roles.all()]

    def in_flight(self) -> int:
        return sum(w.in_flight.count for _role, w in self.roles.all())

    def failure_for(self, version: str) -> dict[str, Any] | None:
        return self._failures.describe(version)

    # -- what the watcher and the admin port ask for ------------------------------------------

    def want(self, version: str, lookup_seconds: float | None = None) -> None:
        """Serve `version` as soon as it is ready. The latest call wins. While pinned by
        `rollback()` the registry's answer is only noted, for `resume()`. `lookup_seconds`: how
        long the registry took to name it, for the swap's history."""
        version = str(version)
        if version != self.wanted:
            self._lookup_seconds = lookup_seconds
        self.registry_version = version
        if self.pinned is not None:
            if version != self.pinned.get("registry_version"):
                log.info("registry names %s; pinned to %s until resumed", version, self.wanted)
                self.pinned["registry_version"] = version
            return
        self._set_wanted(version, "registry moved")

    def _set_wanted(self, version: str, cause: str) -> None:
        if version != self.wanted:
            if self.wanted is not None:
                log.info("wanted version %s -> %s (%s)", self.wanted, version, cause)
                self._next_cause = cause
            self.wanted = version
        self._inbox.post(Wake())

    def retry_now(self) -> None:
        """Forget the backoff of failed versions: an operator asked to try again."""
        self._failures.clear()
        self._inbox.post(Wake())

    async def rollback(self, timeout: float = 10.0) -> Worker:
        """Switch to the lingering version now and stay on it, whatever the registry says,
        until `resume()`. NoRollback if no version lingers."""
        lingering = self.roles.warm_lingering()
        if lingering is None:
            raise NoRollback(
                "no previous version is kept warm: start the sidecar with --linger to keep "
                "one for that long after each swap"
            )
        version = lingering.version
        self.pinned = {
            "version": version,
            "since": time.time(),
            "registry_version": self.registry_version,
        }
        log.warning("rollback to %s requested: pinned there until resumed", version)
        self._set_wanted(version, "rollback")
        async with asyncio.timeout(timeout):
            while self.roles.active is None or self.roles.active.version != version:
                await self._switched.wait()
        return self.roles.active

    def resume(self) -> str | None:
        """Follow the registry again after `rollback()`; the version it names now, if known."""
        if self.pinned is None:
            return self.wanted
        log.info("resumed: following the registry again (%s)", self.registry_version)
        self.pinned = None
        if self.registry_version is not None:
            self._set_wanted(self.registry_version, "resume after rollback")
        return self.registry_version

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            self._handle_events()
            target = self._target()
            if target is None:
                await self._inbox.wait()
                continue
            delay = self._retry_delay(target)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._inbox.wait()
                continue
            fallback = target != self.wanted
            # A fallback's cause is its own: the wanted version's next try keeps the cause
            # that set it off.
            cause = (
                f"fallback: {self.wanted} cannot serve now; {target} served before"
                if fallback
                else self._next_cause
            )
            if self.roles.warm_lingering(target) is not None:
                self._switch_back(target, cause)
            else:
                await self._swap(target, cause, vetted=fallback)

    async def _until(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` while handling the events that come meanwhile: the loop goes on
        acting on exits and health checks while a swap waits for a boot or a drain."""
        task = asyncio.ensure_future(awaitable)
        try:
            while not task.done():
                posted = asyncio.ensure_future(self._inbox.wait())
                try:
                    await asyncio.wait((task, posted), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    posted.cancel()
                self._handle_events()
            self._handle_events()  # what the task reported as it ended
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                task.add_done_callback(_retrieve)

    def _target(self) -> str | None:
        wanted = self.wanted
        if wanted is None:
            return None
        active = self.roles.active
        if active is not None:
            return None if active.version == wanted else wanted
        if self._retry_delay(wanted) > 0:
            return self._fallback_version() or wanted
        return wanted

    def _fallback_version(self) -> str | None:
        """With nothing serving and the wanted version backing off after a failure: the latest
        other version that took traffic, to serve meanwhile. None while pinned by a rollback."""
        if self.pinned is not None:
            return None
        for version in reversed(self._served_versions):
            if version != self.wanted and self._retry_delay(version) <= 0:
                return version
        return None

    def _retry_delay(self, version: str) -> float:
        if self.roles.warm_lingering(version) is not None:
            return 0.0  # it served fine a moment ago: no backoff applies
        return self._failures.retry_in(version)

    def _idle_slot(self) -> str:
        active = self.roles.active
        busy = active.slot if active is not None else self._last_slot
        return SLOTS[1] if busy == SLOTS[0] else SLOTS[0]

    # -- events: what the watchers reported --------------------------------------------------

    def _handle_events(self) -> None:
        for event in self._inbox.take():
            self._handle(event)

    def _handle(self, event: Event) -> None:
        roles = self.roles
        match event:
            case Exited(worker, code) if worker is roles.lingering:
                log.warning(
                    "lingering worker %s v%s exited with code %s", worker.slot, worker.version, code
                )
                self._end_linger("it exited")
            case Exited(worker, code) if worker is roles.active:
                self._active_exited(worker, code)
            case Unhealthy(worker, failures):
                # Pinned by a rollback: the operator chose the active version over this one.
                if worker is roles.active and roles.warm_lingering() and not self.pinned:
                    self._fall_back(worker, f"{failures} failed health checks")
            case LingerOver(worker) if worker is roles.lingering:
                self._end_linger(f"linger of {self.linger:g} s over")
            case Stopped(worker):
                roles.retiring.discard(worker)
                self._inputs.pop(worker, None)
                self._retirements.pop(worker, None)
                self.observer.worker_up(worker.slot, False)
                self.observer.worker_stopped(worker)
            case _:
                pass  # a wake-up, or news of a worker that has moved on since

    def _active_exited(self, worker: Worker, code: int | None) -> None:
        """Restart the version (after a fallback to a lingering worker, if one is warm)."""
        self._failures.exited(worker.version, code, time.monotonic() - self.roles.active_from)
        if self.roles.warm_lingering() is not None and not self.pinned:
            self._fall_back(worker, f"exited with code {code}")
            return
        log.error(
            "active worker %s v%s exited with code %s; restarting it",
            worker.slot,
            worker.version,
            code,
        )
        self._set_active(None)
        self._next_cause = "restart after exit"
        self.observer.worker_up(worker.slot, False)
        # The restart takes the other slot: no need to wait for this stop, which reaps what is
        # left of its process group.
        self._retire(worker, drain=False)

    def _fall_back(self, failed: Worker, reason: str) -> None:
        """The active worker is unfit: the lingering one takes the traffic at once, and the
        failed version is started again (the loop sees `wanted` is not served)."""
        worker, record = self._switch_to_lingering(f"fallback: active worker {reason}")
        self._succeeded(record)
        log.error(
            "active %s v%s %s: traffic back on %s v%s; restarting %s",
            failed.slot,
            failed.version,
            reason,
            worker.slot,
            worker.version,
            failed.version,
        )
        self._next_cause = f"restart after {reason}"
        self.observer.worker_up(failed.slot, False)
        self._retire(failed, drain=False)  # the restart waits for its slot

    # -- role changes: each in one place -------------------------------------------------------

    def _set_active(self, worker: Worker | None) -> None:
        roles = self.roles
        outgoing = roles.active
        if outgoing is not None:
            self._failures.served_its_time(outgoing.version, time.monotonic() - roles.active_from)
        roles.make_active(worker)
        if worker is not None:
            self.served = True
            with contextlib.suppress(ValueError):
                self._served_versions.remove(worker.version)
            self._served_versions.append(worker.version)
            self._served_schema = (worker.version, self._inputs.get(worker))
        self._switched.set()
        self._switched = asyncio.Event()
        self.observer.active_changed(worker)

    def _begin_canary(self, worker: Worker, share: float) -> None:
        self.roles.canary, self.roles.canary_share = worker, share
        self.observer.worker_up(worker.slot, True)

    def _end_canary(self) -> None:
        self.roles.canary = None

    def _begin_linger(self, worker: Worker) -> None:
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
            interval=self.health_interval,
            failures_allowed=self.health_failures,
            pinned=lambda: self.pinned is not None,
        )
        self._linger_timer = self._spawn_watcher(watch, f"linger-{worker.slot}")

    def _take_lingering(self) -> Worker | None:
        """The lingering worker, which lingers no more (its timer cancelled)."""
        worker = self.roles.lingering
        timer, self._linger_timer = self._linger_timer, None
        if timer is not None:
            timer.cancel()
        self.roles.lingering = None
        self.roles.lingering_until = None
        return worker

    def _end_linger(self, why: str) -> None:
        worker = self._take_lingering()
        if worker is not None:
            log.info("stopping lingering %s v%s: %s", worker.slot, worker.version, why)
            self._retire(worker)

    def _retire(
        self, worker: Worker, record: SwapRecord | None = None, *, drain: bool = True
    ) -> asyncio.Task[bool]:
        """Let `worker` finish its requests (if `drain`), then stop it, in a task that reports
        Stopped. It stays in `roles.retiring` until then, also through a shutdown: close()
        finishes the stop. The task's result: whether it drained in time."""
        task = self._retirements.get(worker)
        if task is None:
            self.roles.retiring.add(worker)
            task = asyncio.create_task(
                self._stopper.drain_and_stop(worker, record, drain), name=f"retire-{worker.slot}"
            )
            self._retirements[worker] = task
        return task

    def _switch_to_lingering(self, cause: str) -> tuple[Worker, SwapRecord]:
        """Make the lingering worker active: it is warm, so the switch is all there is to do.
        Returns it and the swap's record (not finished yet)."""
        old = self.roles.active
        began = time.monotonic()
        worker = self._take_lingering()
        assert worker is not None
        record = SwapRecord(
            to_version=worker.version,
            from_version=old.version if old else None,
            slot=worker.slot,
            cause=cause,
        )
        self._set_active(worker)
        self._last_slot = worker.slot
        record.step_done(Step.SWITCH, round(time.monotonic() - began, 6))
        return worker, record

    def _switch_back(self, version: str, cause: str) -> None:
        """To the lingering worker: no start, no warm-up, no drain to wait."""
        old = self.roles.active
        worker, record = self._switch_to_lingering(f"{cause} (to the lingering worker)")
        self._next_cause = "registry moved"
        self._failures.succeeded(version)
        log.info(
            "swap %s -> %s: switched back to the lingering %s",
            record.from_version,
            version,
            worker.slot,
        )
        if old is not None:
            self._begin_linger(old)
            record.step_done(Step.LINGER, self.linger)
        self._succeeded(record)

    # -- a swap ------------------------------------------------------------------------------

    async def _swap(self, version: str, cause: str, *, vetted: bool = False) -> None:
        """Bring `version` up in the idle slot and switch to it. `vetted`: it took traffic
        before, and is brought back because the wanted version cannot serve: no signature
        guard, since serving the callers' previous version beats serving nothing."""
        if self.roles.lingering is not None:
            # The new version needs the lingering worker's slot.
            self._end_linger("replaced by a swap to another version")
        old = self.roles.active
        slot = self._idle_slot()
        # A lingering worker whose time ran out may still be stopping in that slot.
        await self._until(self._slot_freed(slot))
        record = SwapRecord(
            to_version=version,
            from_version=old.version if old else None,
            slot=slot,
            cause=cause,
        )
        self.current = record
        log.info(
            "swap %s -> %s on %s: starting (%s)", record.from_version, version, slot, record.cause
        )
        if self._lookup_seconds is not None:
            record.step_done(Step.RESOLVE, round(self._lookup_seconds, 3))
            self._lookup_seconds = None
        worker = self._factory(slot, version)
        self.roles.starting = worker
        try:
            guard = None if vetted or self.allow_signature_change else self._served_schema
            self._inputs[worker] = await self._until(
                bring_up(worker, record, startup_timeout=self.startup_timeout, guard=guard)
            )
            if old is not None and old.alive and self.canary_policy is not None:
                await self._run_canary(worker, old, self.canary_policy, record)
        except WorkerFailed as failure:
            self.roles.starting = None
            await self._reject(worker, record, failure)
            return
        except BaseException:
            self.roles.starting = None
            self._end_canary()
            with contextlib.suppress(Exception):
                await self._stopper.stopped(worker)
            raise
        self.roles.starting = None

        step = time.monotonic()
        self._set_active(worker)  # the switch: from here on new requests go to `worker`
        self._end_canary()
        self._last_slot = slot
        self._next_cause = "registry moved"
        self._failures.succeeded(version)
        record.step_done(Step.SWITCH, round(time.monotonic() - step, 6))
        self.observer.worker_up(slot, True)
        log.info("swap %s -> %s: switched to %s", record.from_version, version, slot)
        self._spawn_watcher(report_exit(worker, self._inbox), f"watch-{worker.slot}")

        # An old worker that died during the swap is being stopped already.
        if old is not None and old.alive:
            if self.linger > 0:
                self._begin_linger(old)
                record.step_done(Step.LINGER, self.linger)
            else:
                record.step = Step.DRAIN
                record.drained = await self._until(self._retire(old, record))
        self._succeeded(record)

    async def _slot_freed(self, slot: str) -> None:
        stops = [task for w, task in self._retirements.items() if w.slot == slot]
        if stops:
            await asyncio.wait(stops)

    async def _run_canary(
        self, worker: Worker, old: Worker, policy: CanaryPolicy, record: SwapRecord
    ) -> None:
        """Let the new worker answer a share of live traffic, then judge it against `old`."""
        record.step = Step.CANARY
        old_before, new_before = Counts.of(old.in_flight), Counts.of(worker.in_flight)
        step = time.monotonic()
        self._begin_canary(worker, policy.percent / 100.0)
        log.info(
            "canary: %g %% of traffic to %s for %g s",
            policy.percent,
            worker.version,
            policy.seconds,
        )
        new_exit = asyncio.ensure_future(worker.wait_exit())
        old_exit = asyncio.ensure_future(old.wait_exit())
        try:
            done, _pending = await self._until(
                asyncio.wait(
                    (new_exit, old_exit),
                    timeout=policy.seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            )
        finally:
            new_exit.cancel()
            old_exit.cancel()
            self._end_canary()
        exited = new_exit in done
        old_died = old_exit in done and not exited
        if old_died:
            # Nothing else serves now: judge on what the canary answered so far, at once.
            log.warning("old worker %s v%s exited during the canary", old.slot, old.version)
        else:
            # Requests it took before the end count too: judge once they are answered.
            await self._until(worker.in_flight.wait_idle(self.drain_timeout))
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

    async def _reject(self, worker: Worker, record: SwapRecord, failure: WorkerFailed) -> None:
        # A canary may be answering requests: let them finish before the worker goes.
        await self._until(self._retire(worker))
        version = record.to_version
        delay = self._failures.swap_failed(version, failure.step, str(failure))
        record.error = str(failure)
        record.output = failure.output
        record.end(Result.BLOCKED if failure.step == Step.SIGNATURE else Result.FAILED)
        self._finish(record)
        active = self.roles.active
        log.error(
            "swap %s -> %s %s at %s: %s; still serving %s; next attempt in %.1f s%s",
            record.from_version,
            version,
            record.result,
            failure.step,
            failure.reason,
            active.version if active else "nothing",
            delay,
            "".join(f"\n    | {line}" for line in failure.output[-5:]),
        )

    def _succeeded(self, record: SwapRecord) -> None:
        record.step = Step.DONE
        record.end(Result.SUCCEEDED, precision=6)
        self._finish(record)
        log.info(
            "swap %s -> %s: succeeded in %.3f s %s",
            record.from_version,
            record.to_version,
            record.seconds,
            {str(k): v for k, v in record.steps.items()},
            extra={
                "steps": {str(k): v for k, v in record.steps.items()},
                "seconds": record.seconds,
                "from_version": record.from_version,
                "to_version": record.to_version,
            },
        )

    def _finish(self, record: SwapRecord) -> None:
        self.current = None
        self.history.append(record)
        self.observer.swap_finished(record)

    # -- watchers and stoppers: they report, the loop decides ---------------------------------

    def _spawn_watcher(self, watch: Awaitable[None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(watch)
        task.set_name(name)
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return task

    # -- shutdown ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every worker. Call after the `run` task is cancelled."""
        for task in (*self._watchers, *self._retirements.values()):
            task.cancel()
        self._take_lingering()
        # Also those whose stop began and whose stopper was cancelled: each stop runs once.
        workers = {w for _role, w in self.roles.all()} | self._stopper.stopping()
        self._end_canary()
        self._set_active(None)
        await asyncio.gather(*(self._stopper.stop(w) for w in workers), return_exceptions=True)
        self.roles.retiring.clear()
        self._retirements.clear()
        for worker in workers:
            self._inputs.pop(worker, None)
            self.observer.worker_up(worker.slot, False)
            self.observer.worker_stopped(worker)

    def kill_now(self) -> None:
        for _role, worker in self.roles.all():
            worker.kill_now()

    def status(self) -> dict[str, Any]:
        roles = self.roles
        return {
            "wanted_version": self.wanted,
            "active": _describe(roles.active, since=roles.active_since),
            "lingering": _describe(roles.lingering, until=roles.lingering_until),
            "canary": _describe(roles.canary, percent=100 * roles.canary_share),
            "pinned": self.pinned,
            "swap_in_progress": self.current.as_dict() if self.current else None,
            "failed_versions": {v: self._failures.describe(v) for v in self._failures.versions()},
            "history": [r.as_dict() for r in reversed(self.history)],
        }


def _describe(worker: Worker | None, **extra: Any) -> dict[str, Any] | None:
    return None if worker is None else {**worker.status(), **extra}


def _retrieve(task: asyncio.Future[Any]) -> None:
    """A task cancelled on our way out: its outcome is nobody's business now."""
    if not task.cancelled():
        task.exception()
