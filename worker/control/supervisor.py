"""The swap state machine: which worker is active, and how a new version replaces it.

One loop owns every transition, so two swaps never overlap and no role changes behind its back:

    wanted version changes
      -> start the idle slot -> signature guard -> GET /ping 200 -> warm-up 2xx
      -> [shadow: copies of live requests, answers compared] -> [canary: a share of live
         traffic, judged against the old worker] (trial.py)
      -> switch `active` -> drain the old worker -> stop it (or keep it warm: linger, and
         roll back automatically should the new one serve worse meanwhile)
    any failure before the switch: stop the new worker, keep the old, back off

What happens to workers meanwhile (an exit, failed health checks, the end of a linger, a stop
finished) is only reported by their watchers, as events in the loop's inbox (events.py). The
loop handles them between its own steps and while it waits for one (`_until`), so a worker
that dies during a swap's boot is dealt with at once, by the same loop.

The switch is one assignment of `roles.active`; the proxy reads it once per request. With
`linger`, the replaced worker stays up without traffic for that long: the alias moving back to
it, `rollback()`, or the new worker dying or failing its health checks switch back to it at
once, with no cold start. Never more than two workers run: a swap to a third version stops the
lingering one first, since it needs its slot.

An active worker that dies is restarted at once; one that dies twice in a row soon after taking
traffic makes its version fail like one that never got ready. Whenever nothing serves and the
wanted version is backing off, the version that served before it is brought back meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .bring_up import bring_up
from .compare import Comparison, Verdict
from .events import (
    Event,
    Exited,
    Inbox,
    Judged,
    LingerOver,
    RollbackAsked,
    Stopped,
    Unhealthy,
    Wake,
)
from .failures import Failures
from .intent import Intent
from .observer import SwapObserver
from .policy import SwapPolicy, choose
from .record import Result, Step, SwapRecord, WorkerFailed, log_rejected, log_succeeded
from .roster import Roster
from .targets import idle_slot, next_target, retry_delay
from .trial import Trials, try_on_live_traffic
from .watchers import Stopper
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
        trials: Trials | None = None,
        allow_signature_change: bool = False,
        health_interval: float = 1.0,
        health_failures: int = 3,
        crash_window: float = 60.0,
        swap_policy: SwapPolicy = SwapPolicy.AVAILABILITY,
        memory_headroom: Callable[[], int | None] = lambda: None,
    ) -> None:
        self._factory = factory
        self.startup_timeout = startup_timeout
        self.drain_timeout = drain_timeout
        self.trials = trials or Trials()
        self.allow_signature_change = allow_signature_change
        self.swap_policy = swap_policy
        self._memory_headroom = memory_headroom  # bytes left under the memory limit, if known
        self.intent = Intent()
        self._inbox = Inbox()
        self._failures = Failures(retry_base, retry_cap, crash_window)
        self.roster = Roster(
            self._inbox,
            Stopper(self._inbox, stop_grace, drain_timeout),
            self._failures,
            linger=linger,
            health_interval=health_interval,
            health_failures=health_failures,
            pinned=lambda: self.intent.pinned is not None,
        )
        self.roles = self.roster.roles
        if observer is not None:
            self.observer = observer
        self.current: SwapRecord | None = None
        self.history: deque[SwapRecord] = deque(maxlen=history_size)

    @property
    def observer(self) -> SwapObserver:
        return self.roster.observer

    @observer.setter
    def observer(self, observer: SwapObserver) -> None:
        self.roster.observer = observer

    # -- what the proxy and the admin port read ------------------------------------------------

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

    @property
    def served(self) -> bool:
        """A worker has been active at least once."""
        return self.roster.served

    @property
    def wanted(self) -> str | None:
        return self.intent.wanted

    @property
    def pinned(self) -> dict[str, Any] | None:
        return self.intent.pinned

    async def wait_for_worker(self, timeout: float, exclude: Worker | None = None) -> Worker | None:
        return await self.roster.wait_for_active(timeout, exclude)

    def workers(self) -> list[tuple[str, Worker]]:
        """Every worker that runs, with its role."""
        return [(str(role), worker) for role, worker in self.roles.all()]

    def in_flight(self) -> int:
        return self.roles.in_flight()

    def _set_active(self, worker: Worker | None) -> None:
        """For tests of the proxy alone: `worker` serves, without a swap."""
        self.roster.make_active(worker)

    def failure_for(self, version: str) -> dict[str, Any] | None:
        return self._failures.describe(version)

    # -- what the watcher and the admin port ask for ------------------------------------------

    def want(self, version: str, lookup_seconds: float | None = None) -> None:
        """Serve `version` as soon as it is ready. The latest call wins. While pinned by
        `rollback()` the registry's answer is only noted, for `resume()`. `lookup_seconds`: how
        long the registry took to name it, for the swap's history."""
        self._failures.registry_named(str(version))
        if self.intent.registry_names(str(version), lookup_seconds):
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
        self._inbox.post(RollbackAsked(version))
        async with asyncio.timeout(timeout):
            return await self.roster.wait_for_version(version)

    def resume(self) -> str | None:
        """Follow the registry again after `rollback()`; the version it names now, if known."""
        if self.intent.pinned is None:
            return self.intent.wanted
        if self.intent.resume():
            self._inbox.post(Wake())
        return self.intent.registry_version

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            self._handle_events()
            target = next_target(
                self.intent.wanted,
                self.roles,
                self._retry_delay,
                self.roster.served_versions,
                pinned=self.intent.pinned is not None,
            )
            if target is None:
                await self._inbox.wait()
                continue
            delay = self._retry_delay(target)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    # Rolled back: not again until the registry or an operator says so.
                    async with asyncio.timeout(None if math.isinf(delay) else delay):
                        await self._inbox.wait()
                continue
            fallback = target != self.intent.wanted
            # A fallback's cause is its own: the wanted version's next try keeps the cause
            # that set it off.
            cause = (
                f"fallback: {self.intent.wanted} cannot serve now; {target} served before"
                if fallback
                else self.intent.next_cause
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

    def _retry_delay(self, version: str) -> float:
        return retry_delay(version, self.roles, self._failures)

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
                self.roster.end_linger("it exited")
            case Exited(worker, code) if worker is roles.active:
                self._active_exited(worker, code)
            case Unhealthy(worker, failures):
                # Pinned by a rollback: the operator chose the active version over this one.
                if worker is roles.active and roles.warm_lingering() and not self.intent.pinned:
                    self._fall_back(worker, f"{failures} failed health checks")
            case LingerOver(worker) if worker is roles.lingering:
                self.roster.end_linger(f"linger of {self.roster.linger:g} s over")
            case Stopped(worker):
                self.roster.stopped(worker)
            case RollbackAsked(version):
                self.intent.pin(version)  # the loop, next, switches back to the lingering one
            case Judged(worker, comparison, record):
                record.after_switch = comparison.figures
                # Pinned by a rollback: the operator chose the active version.
                if (
                    comparison.verdict is Verdict.REJECTED
                    and worker is roles.active
                    and roles.warm_lingering() is not None
                    and not self.intent.pinned
                ):
                    self._roll_back(worker, comparison)
            case _:
                pass  # a wake-up, or news of a worker that has moved on since

    def _active_exited(self, worker: Worker, code: int | None) -> None:
        """Restart the version (after a fallback to a lingering worker, if one is warm)."""
        self._failures.exited(worker.version, code, time.monotonic() - self.roles.active_from)
        if self.roles.warm_lingering() is not None and not self.intent.pinned:
            self._fall_back(worker, f"exited with code {code}")
            return
        log.error(
            "active worker %s v%s exited with code %s; restarting it",
            worker.slot,
            worker.version,
            code,
        )
        self.roster.make_active(None)
        self.intent.next_cause = "restart after exit"
        # The restart takes the other slot: no need to wait for this stop, which reaps what is
        # left of its process group.
        self.roster.retire_failed(worker)

    def _fall_back(self, failed: Worker, reason: str) -> None:
        """The active worker is unfit: the lingering one takes the traffic at once, and the
        failed version is started again (the loop sees `wanted` is not served)."""
        worker, record = self.roster.switch_to_lingering(f"fallback: active worker {reason}")
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
        self.intent.next_cause = f"restart after {reason}"
        self.roster.retire_failed(failed)  # the restart waits for its slot

    # -- swaps -------------------------------------------------------------------------------

    def _roll_back(self, worker: Worker, comparison: Comparison) -> None:
        """Back to the lingering version, and not this one again until the registry names
        another and then it again (or an operator asks)."""
        record = self.roster.roll_back(worker, comparison)
        self._failures.judged_worse(worker.version, record.cause)
        self._finish(record)

    def _switch_back(self, version: str, cause: str) -> None:
        """To the lingering worker: no start, no warm-up, no drain to wait."""
        old = self.roles.active
        worker, record = self.roster.switch_to_lingering(f"{cause} (to the lingering worker)")
        self.intent.next_cause = "registry moved"
        self._failures.succeeded(version)
        log.info(
            "swap %s -> %s: switched back to the lingering %s",
            record.from_version,
            version,
            worker.slot,
        )
        if old is not None:
            self.roster.begin_linger(old)
            record.step_done(Step.LINGER, self.roster.linger)
        self._succeeded(record)

    async def _swap(self, version: str, cause: str, *, vetted: bool = False) -> None:
        """Bring `version` up in the idle slot and switch to it. `vetted`: it took traffic
        before, and is brought back because the wanted version cannot serve: no signature
        guard, since serving the callers' previous version beats serving nothing."""
        roster = self.roster
        if self.roles.lingering is not None:
            # The new version needs the lingering worker's slot.
            roster.end_linger("replaced by a swap to another version")
        old = self.roles.active
        slot = idle_slot(self.roles, roster.last_slot)
        # A lingering worker whose time ran out may still be stopping in that slot.
        await self._until(roster.retired(slot))
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
        lookup = self.intent.take_lookup_seconds()
        if lookup is not None:
            record.step_done(Step.RESOLVE, round(lookup, 3))
        if old is not None and old.alive:
            choice = choose(self.swap_policy, self._memory_headroom(), old.rss_bytes())
            record.policy = {"policy": str(choice.policy), "why": choice.why}
            if choice.policy is SwapPolicy.MEMORY:
                # Should the new version fail, the loop brings the old one back, as for any
                # version that cannot serve.
                await self._until(roster.make_room(old, record))
        worker = self._factory(slot, version)
        roster.begin_start(worker)
        try:
            guard = None if vetted or self.allow_signature_change else roster.served_schema
            roster.inputs[worker] = await self._until(
                bring_up(worker, record, startup_timeout=self.startup_timeout, guard=guard)
            )
            if old is not None and old.alive:
                await try_on_live_traffic(
                    worker,
                    old,
                    record,
                    self.trials,
                    roster=roster,
                    until=self._until,
                    drain_timeout=self.drain_timeout,
                    report=self.observer.shadow_outcome,
                )
        except WorkerFailed as failure:
            roster.end_start()
            await self._reject(worker, record, failure)
            return
        except BaseException:
            roster.end_start()
            roster.end_canary()
            roster.end_shadow()
            with contextlib.suppress(Exception):
                await roster.stopper.stopped(worker)
            raise

        step = time.monotonic()
        roster.switch_to(worker)  # the switch: from here on new requests go to `worker`
        self.intent.next_cause = "registry moved"
        self._failures.succeeded(version)
        record.step_done(Step.SWITCH, round(time.monotonic() - step, 6))
        log.info("swap %s -> %s: switched to %s", record.from_version, version, slot)

        # An old worker that died during the swap is being stopped already.
        if old is not None and old.alive:
            if self.roster.linger > 0:
                roster.begin_linger(old)
                record.step_done(Step.LINGER, self.roster.linger)
                if self.trials.after_switch is not None:
                    roster.begin_judging(worker, record, self.trials.after_switch)
            else:
                record.step = Step.DRAIN
                record.drained = await self._until(roster.retire(old, record))
        self._succeeded(record)

    async def _reject(self, worker: Worker, record: SwapRecord, failure: WorkerFailed) -> None:
        # A canary may be answering requests: let them finish before the worker goes.
        await self._until(self.roster.retire(worker))
        delay = self._failures.swap_failed(record.to_version, failure)
        record.error = str(failure)
        record.output = failure.output
        record.end(Result.BLOCKED if failure.step == Step.SIGNATURE else Result.FAILED)
        self._finish(record)
        active = self.roles.active
        log_rejected(record, failure, active.version if active else "nothing", delay)

    def _succeeded(self, record: SwapRecord) -> None:
        record.step = Step.DONE
        record.end(Result.SUCCEEDED, precision=6)
        self._finish(record)
        log_succeeded(record)

    def _finish(self, record: SwapRecord) -> None:
        self.current = None
        self.history.append(record)
        self.observer.swap_finished(record)

    # -- shutdown and status -------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every worker. Call after the `run` task is cancelled."""
        await self.roster.close()

    def kill_now(self) -> None:
        self.roles.kill_now()

    def status(self) -> dict[str, Any]:
        return {
            "wanted_version": self.intent.wanted,
            **self.roles.status(),
            "pinned": self.intent.pinned,
            "swap_in_progress": self.current.as_dict() if self.current else None,
            "failed_versions": {v: self._failures.describe(v) for v in self._failures.versions()},
            "history": [r.as_dict() for r in reversed(self.history)],
        }


def _retrieve(task: asyncio.Future[Any]) -> None:
    """A task cancelled on our way out: its outcome is nobody's business now."""
    if not task.cancelled():
        task.exception()
