"""The swap state machine: which worker is active, and how a new version replaces it.

One loop owns every transition, so two swaps never overlap:

    wanted version changes
      -> start the idle slot -> signature guard -> GET /ping 200 -> warm-up 2xx
      -> [canary: a share of live traffic for a while, judged against the old worker]
      -> switch `active` -> drain the old worker -> stop it (or keep it warm: linger)
    any failure before the switch: stop the new worker, keep the old, back off

The switch is one assignment of `active`; the proxy reads it once per request.

With `linger`, the replaced worker stays up without traffic for that long: the alias moving
back to it, `rollback()`, or the new worker dying or failing its health checks switch back to
it at once, with no cold start. Never more than two workers run: a swap to a third version
stops the lingering one first, since it needs its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import aiohttp

from .backoff import Backoff
from .inflight import InFlight
from .process import WorkerFailed
from .signature import breaking_changes

log = logging.getLogger(__name__)

SLOTS = ("blue", "green")


class Worker(Protocol):
    slot: str
    version: str
    in_flight: InFlight
    pid: int | None
    port: int | None
    base_url: str
    read_timeout: float
    """Seconds to wait for the worker's next bytes of an answer."""
    session: aiohttp.ClientSession | None
    fresh_session: aiohttp.ClientSession | None
    """A pool that never reuses a connection: for the one retry after a stale keep-alive."""
    timings: dict[str, float]
    """Seconds of each step `start` took before launching the server (download, prepare_env)."""

    async def start(self) -> None: ...
    async def wait_ready(self, timeout: float) -> None: ...
    async def warm_up(self) -> bool: ...
    async def input_schema(self) -> Any | None: ...
    async def healthy(self) -> bool: ...
    async def stop(self, grace: float) -> None: ...
    async def wait_exit(self) -> int | None: ...
    def kill_now(self) -> None: ...
    def rss_bytes(self) -> int: ...
    @property
    def alive(self) -> bool: ...
    def status(self) -> dict[str, Any]: ...


WorkerFactory = Callable[[str, str], Worker]
"""(slot, version) -> a worker not yet started."""


class SwapObserver(Protocol):
    """Told about every transition; the proxy's metrics implement it."""

    def swap_finished(self, record: SwapRecord) -> None: ...
    def active_changed(self, worker: Worker | None) -> None: ...
    def worker_up(self, slot: str, up: bool) -> None: ...


class _NoObserver:
    def swap_finished(self, record: SwapRecord) -> None:
        pass

    def active_changed(self, worker: Worker | None) -> None:
        pass

    def worker_up(self, slot: str, up: bool) -> None:
        pass


@dataclass
class SwapRecord:
    to_version: str
    from_version: str | None
    slot: str
    cause: str
    started_at: float = field(default_factory=time.time)
    result: str = "in_progress"
    step: str = "start"
    error: str | None = None
    output: list[str] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    drained: bool | None = None
    canary: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["from"] = data.pop("from_version")
        data["to"] = data.pop("to_version")
        return data


def _step_done(record: SwapRecord, step: str, seconds: float) -> None:
    """Note a step's time in the record and give it a log line of its own, with the figures as
    fields for JSON logs."""
    record.steps[step] = seconds
    log.info(
        "swap %s -> %s: %s %.3f s",
        record.from_version,
        record.to_version,
        step,
        seconds,
        extra={
            "swap_step": step,
            "seconds": seconds,
            "from_version": record.from_version,
            "to_version": record.to_version,
        },
    )


@dataclass(frozen=True)
class CanaryPolicy:
    """Send `percent` % of live traffic to a ready new version for `seconds` before switching;
    reject it if its share of failed answers exceeds the old worker's by more than
    `max_error_increase` (a fraction: 0.01 is one percentage point)."""

    percent: float
    seconds: float
    max_error_increase: float = 0.01


class NoRollback(Exception):
    """There is no lingering version to go back to."""


@dataclass
class _Failure:
    backoff: Backoff
    retry_at: float
    error: str


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
    ) -> None:
        self._factory = factory
        self.startup_timeout = startup_timeout
        self.drain_timeout = drain_timeout
        self.stop_grace = stop_grace
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self.observer: SwapObserver = observer or _NoObserver()
        self.linger = linger
        self.canary_policy = canary
        self.allow_signature_change = allow_signature_change
        self.health_interval = health_interval
        self.health_failures = health_failures
        self.active: Worker | None = None
        self.active_since: float | None = None
        self.served = False  # a worker has been active at least once
        self._switched = asyncio.Event()  # pulsed on every change of `active`
        self.wanted: str | None = None
        self.registry_version: str | None = None  # what the registry names, pinned or not
        self.pinned: dict[str, Any] | None = None  # set by rollback(), cleared by resume()
        self.current: SwapRecord | None = None
        self.history: deque[SwapRecord] = deque(maxlen=history_size)
        self._failures: dict[str, _Failure] = {}
        self._wake = asyncio.Event()
        self._next_cause = "initial"
        self._last_slot: str | None = None
        self._starting: Worker | None = None
        self._retiring: set[Worker] = set()
        self._watchers: set[asyncio.Task[None]] = set()
        # A replaced worker kept warm, without traffic, until `lingering_until` (wall clock).
        self.lingering: Worker | None = None
        self.lingering_until: float | None = None
        self._linger_task: asyncio.Task[None] | None = None
        # A new version taking `canary_share` of the traffic before the switch.
        self.canary: Worker | None = None
        self.canary_share = 0.0
        self._lookup_seconds: float | None = None

    # -- what the watcher and the admin port call ----------------------------------------------

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
        self._wake.set()

    def retry_now(self) -> None:
        """Forget the backoff of failed versions: an operator asked to try again."""
        self._failures.clear()
        self._wake.set()

    async def rollback(self, timeout: float = 10.0) -> Worker:
        """Switch to the lingering version now and stay on it, whatever the registry says,
        until `resume()`. NoRollback if no version lingers."""
        lingering = self.lingering
        if lingering is None or not lingering.alive:
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
            while self.active is None or self.active.version != version:
                await self._switched.wait()
        return self.active

    def resume(self) -> str | None:
        """Follow the registry again after `rollback()`; the version it names now, if known."""
        if self.pinned is None:
            return self.wanted
        log.info("resumed: following the registry again (%s)", self.registry_version)
        self.pinned = None
        if self.registry_version is not None:
            self._set_wanted(self.registry_version, "resume after rollback")
        return self.registry_version

    @property
    def ready(self) -> bool:
        return self.active is not None

    def _set_active(self, worker: Worker | None) -> None:
        self.active = worker
        self.active_since = time.time() if worker is not None else None
        self.served = self.served or worker is not None
        self._switched.set()
        self._switched = asyncio.Event()

    async def wait_for_worker(self, timeout: float, exclude: Worker | None = None) -> Worker | None:
        """The active worker once there is one other than `exclude`; None after `timeout`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.active is None or self.active is exclude:
                    await self._switched.wait()
        active = self.active
        return active if active is not None and active is not exclude else None

    def route(self) -> Worker | None:
        """The worker for the next request: the active one, or during a canary sometimes the
        new one."""
        canary = self.canary
        if canary is not None and random.random() < self.canary_share:
            return canary
        return self.active

    def worker_for(self, version: str) -> Worker | None:
        """The worker serving `version` that may take traffic: active, canary or lingering."""
        for worker in (self.active, self.canary, self.lingering):
            if worker is not None and worker.version == version:
                return worker
        return None

    def workers(self) -> list[tuple[str, Worker]]:
        """Every worker that runs, with its role; each once (a canary is also `_starting`)."""
        roles = [
            ("active", self.active),
            ("canary", self.canary),
            ("lingering", self.lingering),
            ("starting", self._starting if self._starting is not self.canary else None),
            *(("retiring", w) for w in self._retiring),
        ]
        return [(role, w) for role, w in roles if w is not None]

    def in_flight(self) -> int:
        return sum(w.in_flight.count for _role, w in self.workers())

    def failure_for(self, version: str) -> dict[str, Any] | None:
        failure = self._failures.get(version)
        if failure is None:
            return None
        return {
            "attempts": failure.backoff.attempts,
            "retry_in": max(0.0, round(failure.retry_at - time.monotonic(), 1)),
            "error": failure.error,
        }

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            self._wake.clear()
            target = self._target()
            if target is None:
                await self._wake.wait()
                continue
            delay = self._retry_delay(target)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            if self._can_switch_back(target):
                self._switch_back(target)
            else:
                await self._swap(target)

    def _target(self) -> str | None:
        if self.wanted is None:
            return None
        if self.active is not None and self.active.version == self.wanted:
            return None
        return self.wanted

    def _retry_delay(self, version: str) -> float:
        if self._can_switch_back(version):
            return 0.0  # it served fine a moment ago: no backoff applies
        failure = self._failures.get(version)
        return 0.0 if failure is None else failure.retry_at - time.monotonic()

    def _idle_slot(self) -> str:
        busy = self.active.slot if self.active is not None else self._last_slot
        return SLOTS[1] if busy == SLOTS[0] else SLOTS[0]

    def _can_switch_back(self, version: str) -> bool:
        lingering = self.lingering
        return lingering is not None and lingering.version == version and lingering.alive

    async def _swap(self, version: str) -> None:
        if self.lingering is not None:
            # The new version needs the lingering worker's slot.
            await self._end_linger("replaced by a swap to another version")
        old = self.active
        slot = self._idle_slot()
        # A lingering worker whose time ran out may still be stopping in that slot.
        while any(w.slot == slot for w in self._retiring):  # noqa: ASYNC110 - rare and short
            await asyncio.sleep(0.05)
        record = SwapRecord(
            to_version=version,
            from_version=old.version if old else None,
            slot=slot,
            cause=self._next_cause,
        )
        self.current = record
        began = time.monotonic()
        log.info(
            "swap %s -> %s on %s: starting (%s)", record.from_version, version, slot, record.cause
        )
        if self._lookup_seconds is not None:
            _step_done(record, "resolve", round(self._lookup_seconds, 3))
            self._lookup_seconds = None
        worker = self._factory(slot, version)
        self._starting = worker
        try:
            await self._bring_up(worker, old, record)
            if old is not None and self.canary_policy is not None:
                await self._run_canary(worker, old, record)
        except WorkerFailed as failure:
            self._starting = None
            await self._reject(worker, record, failure, began)
            return
        except BaseException:
            self._starting = None
            self.canary = None
            with contextlib.suppress(Exception):
                await worker.stop(self.stop_grace)
            raise
        self._starting = None

        step = time.monotonic()
        self._set_active(worker)  # the switch: from here on new requests go to `worker`
        self.canary = None
        self._last_slot = slot
        self._next_cause = "registry moved"
        self._failures.pop(version, None)
        _step_done(record, "switch", round(time.monotonic() - step, 6))
        self.observer.active_changed(worker)
        self.observer.worker_up(slot, True)
        log.info("swap %s -> %s: switched to %s", record.from_version, version, slot)
        self._watch(worker)

        if old is not None:
            if self.linger > 0:
                self._begin_linger(old)
                _step_done(record, "linger", self.linger)
            else:
                record.step = "drain"
                record.drained = await self._retire(old, record)
        self._succeeded(record, began)

    def _switch_to_lingering(self, cause: str) -> tuple[Worker, SwapRecord, float]:
        """Make the lingering worker active: it is warm, so the switch is all there is to do.
        Returns it, the swap's record (not finished yet) and when the swap began."""
        old = self.active
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
        _step_done(record, "switch", round(time.monotonic() - began, 6))
        self.observer.active_changed(worker)
        return worker, record, began

    def _switch_back(self, version: str) -> None:
        """To the lingering worker: no start, no warm-up, no drain to wait."""
        old = self.active
        worker, record, began = self._switch_to_lingering(
            f"{self._next_cause} (to the lingering worker)"
        )
        self._next_cause = "registry moved"
        self._failures.pop(version, None)
        log.info(
            "swap %s -> %s: switched back to the lingering %s",
            record.from_version,
            version,
            worker.slot,
        )
        if old is not None:
            self._begin_linger(old)
            _step_done(record, "linger", self.linger)
        self._succeeded(record, began)

    def _succeeded(self, record: SwapRecord, began: float) -> None:
        record.result = "succeeded"
        record.step = "done"
        record.seconds = round(time.monotonic() - began, 6)
        self._finish(record)
        log.info(
            "swap %s -> %s: succeeded in %.3f s %s",
            record.from_version,
            record.to_version,
            record.seconds,
            record.steps,
            extra={
                "steps": record.steps,
                "seconds": record.seconds,
                "from_version": record.from_version,
                "to_version": record.to_version,
            },
        )

    async def _bring_up(self, worker: Worker, old: Worker | None, record: SwapRecord) -> None:
        step = time.monotonic()
        try:
            await worker.start()
        except OSError as error:
            raise WorkerFailed("start", f"could not launch: {error}") from error
        prepared = dict(worker.timings)  # download, prepare_env: before the boot
        for name, seconds in prepared.items():
            _step_done(record, name, seconds)
        launched = time.monotonic() - step - sum(prepared.values())
        _step_done(record, "start", round(max(launched, 0.0), 3))
        step = time.monotonic()  # the health clock measures the boot alone
        if old is not None and not self.allow_signature_change:
            record.step = "signature"
            await self._check_signature(old, worker, record)
        record.step = "ready"
        # --startup-timeout bounds download, environment build and boot together.
        await worker.wait_ready(max(self.startup_timeout - sum(prepared.values()), 1.0))
        _step_done(record, "ready", round(time.monotonic() - step, 3))
        log.info(
            "worker %s v%s ready in %.2f s", worker.slot, worker.version, record.steps["ready"]
        )
        step = time.monotonic()
        record.step = "warm_up"
        warmed = await worker.warm_up()
        _step_done(record, "warm_up", round(time.monotonic() - step, 3))
        if not warmed:
            log.warning("version %s has no input example: warm-up skipped", worker.version)

    async def _check_signature(self, old: Worker, new: Worker, record: SwapRecord) -> None:
        """Block a version whose inputs would break the active version's callers. Runs while
        the new worker boots, so a blocked version costs no wait for its cold start."""
        step = time.monotonic()
        before, after = await asyncio.gather(old.input_schema(), new.input_schema())
        _step_done(record, "signature", round(time.monotonic() - step, 3))
        problems = breaking_changes(before, after)
        if problems:
            raise WorkerFailed(
                "signature",
                f"inputs incompatible with version {old.version}: {'; '.join(problems)} "
                "(--allow-signature-change lets it through)",
            )

    async def _run_canary(self, worker: Worker, old: Worker, record: SwapRecord) -> None:
        """Let the new worker answer a share of live traffic, then judge it against `old`."""
        policy = self.canary_policy
        assert policy is not None
        record.step = "canary"
        old_before = (old.in_flight.answered, old.in_flight.failed)
        new_before = (worker.in_flight.answered, worker.in_flight.failed)
        step = time.monotonic()
        self.canary_share = policy.percent / 100.0
        self.canary = worker
        self.observer.worker_up(worker.slot, True)
        log.info(
            "canary: %g %% of traffic to %s for %g s",
            policy.percent,
            worker.version,
            policy.seconds,
        )
        exited = False
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(policy.seconds):
                    await worker.wait_exit()
                    exited = True
        finally:
            self.canary = None
        # Requests it took before the end count too: judge once they are answered.
        await worker.in_flight.wait_idle(self.drain_timeout)
        _step_done(record, "canary", round(time.monotonic() - step, 3))
        figures = {
            name: {
                "answered": w.in_flight.answered - before[0],
                "failed": w.in_flight.failed - before[1],
            }
            for name, w, before in (("old", old, old_before), ("new", worker, new_before))
        }
        rates = {
            name: (f["failed"] / f["answered"] if f["answered"] else 0.0)
            for name, f in figures.items()
        }
        worse_by = rates["new"] - rates["old"]
        passed = not exited and worse_by <= policy.max_error_increase
        record.canary = {
            "percent": policy.percent,
            "seconds": policy.seconds,
            "old": {**figures["old"], "version": old.version, "error_rate": round(rates["old"], 4)},
            "new": {
                **figures["new"],
                "version": worker.version,
                "error_rate": round(rates["new"], 4),
            },
            "passed": passed,
        }
        log.info("canary of %s: %s", worker.version, record.canary)
        if exited:
            raise WorkerFailed("canary", "the new worker exited during the canary")
        if not passed:
            raise WorkerFailed(
                "canary",
                f"failed {rates['new']:.1%} of {figures['new']['answered']} requests against "
                f"{rates['old']:.1%} on version {old.version} (allowed: "
                f"+{policy.max_error_increase:.1%})",
            )

    async def _reject(
        self, worker: Worker, record: SwapRecord, failure: WorkerFailed, began: float
    ) -> None:
        # A canary may be answering requests: let them finish before the worker goes.
        await worker.in_flight.wait_idle(self.drain_timeout)
        await worker.stop(self.stop_grace)
        self.observer.worker_up(worker.slot, False)
        version = record.to_version
        previous = self._failures.get(version)
        backoff = previous.backoff if previous else Backoff(self._retry_base, self._retry_cap)
        # A signature does not change by itself: asking again soon only costs a cold start.
        delay = self._retry_cap if failure.step == "signature" else backoff.next_delay()
        self._failures[version] = _Failure(backoff, time.monotonic() + delay, str(failure))
        record.result = "blocked" if failure.step == "signature" else "failed"
        record.error = str(failure)
        record.output = failure.output
        record.seconds = round(time.monotonic() - began, 3)
        self._finish(record)
        serving = self.active.version if self.active else "nothing"
        log.error(
            "swap %s -> %s %s at %s: %s; still serving %s; next attempt in %.1f s%s",
            record.from_version,
            version,
            record.result,
            failure.step,
            failure.reason,
            serving,
            delay,
            "".join(f"\n    | {line}" for line in failure.output[-5:]),
        )

    def _finish(self, record: SwapRecord) -> None:
        self.current = None
        self.history.append(record)
        self.observer.swap_finished(record)

    async def _retire(self, worker: Worker, record: SwapRecord | None = None) -> bool:
        self._retiring.add(worker)
        try:
            step = time.monotonic()
            drained = await worker.in_flight.wait_idle(self.drain_timeout)
            if record is not None:
                _step_done(record, "drain", round(time.monotonic() - step, 3))
            if not drained:
                log.warning(
                    "worker %s v%s still had %d requests after %g s; stopping it anyway",
                    worker.slot,
                    worker.version,
                    worker.in_flight.count,
                    self.drain_timeout,
                )
            step = time.monotonic()
            await worker.stop(self.stop_grace)
            if record is not None:
                _step_done(record, "stop", round(time.monotonic() - step, 3))
            self.observer.worker_up(worker.slot, False)
            return drained
        finally:
            self._retiring.discard(worker)

    # -- linger --------------------------------------------------------------------------------

    def _begin_linger(self, worker: Worker) -> None:
        """Keep the replaced `worker` warm for `linger` seconds; meanwhile watch the new one."""
        self.lingering = worker
        self.lingering_until = time.time() + self.linger
        log.info(
            "keeping %s v%s warm for %g s (instant rollback)",
            worker.slot,
            worker.version,
            self.linger,
        )
        self._linger_task = asyncio.create_task(
            self._linger_then_stop(worker), name=f"linger-{worker.slot}"
        )

    def _cancel_linger_timer(self) -> None:
        task, self._linger_task = self._linger_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _take_lingering(self) -> Worker | None:
        """The lingering worker, which lingers no more (its timer cancelled)."""
        worker = self.lingering
        self._cancel_linger_timer()
        self.lingering = None
        self.lingering_until = None
        return worker

    async def _end_linger(self, why: str) -> None:
        worker = self._take_lingering()
        if worker is not None:
            log.info("stopping lingering %s v%s: %s", worker.slot, worker.version, why)
            await self._retire(worker)

    async def _linger_then_stop(self, worker: Worker) -> None:
        """Health-check the active worker while `worker` lingers; fall back to `worker` if the
        active one fails `health_failures` checks in a row; stop `worker` when the time is up."""
        deadline = time.monotonic() + self.linger
        failures = 0
        while (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(self.health_interval, remaining))
            active = self.active
            if self.lingering is not worker or active is None:
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
                self.health_failures,
            )
            if failures >= self.health_failures and self.lingering is worker:
                await self._fall_back(active, f"{failures} failed health checks")
                return
        if self.lingering is worker:
            self._linger_task = None  # this task is ending: nothing to cancel
            await self._end_linger(f"linger of {self.linger:g} s over")

    async def _fall_back(self, failed: Worker, reason: str) -> None:
        """The active worker is unfit: the lingering one takes the traffic at once, and the
        failed version is started again (the loop sees `wanted` is not served)."""
        worker, record, began = self._switch_to_lingering(f"fallback: active worker {reason}")
        self._succeeded(record, began)
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
        await failed.stop(self.stop_grace)
        self._wake.set()

    def _watch(self, worker: Worker) -> None:
        """Restart the version if its worker dies while it is active (after a fallback to a
        lingering worker, if one is warm); forget it if it dies while lingering."""

        async def watch() -> None:
            code = await worker.wait_exit()
            if worker is self.lingering:
                log.warning(
                    "lingering worker %s v%s exited with code %s", worker.slot, worker.version, code
                )
                await self._end_linger("it exited")
                return
            if self.active is not worker:
                return
            if self.lingering is not None and self.lingering.alive:
                await self._fall_back(worker, f"exited with code {code}")
                return
            log.error(
                "active worker %s v%s exited with code %s; restarting it",
                worker.slot,
                worker.version,
                code,
            )
            self._set_active(None)
            self._next_cause = "restart after exit"
            self.observer.active_changed(None)
            self.observer.worker_up(worker.slot, False)
            await worker.stop(self.stop_grace)  # reaps what is left of its process group
            self._wake.set()

        task = asyncio.create_task(watch(), name=f"watch-{worker.slot}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    # -- shutdown ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every worker. Call after the `run` task is cancelled."""
        for task in list(self._watchers):
            task.cancel()
        self._cancel_linger_timer()
        workers = [w for _role, w in self.workers()]
        self.lingering = None
        self.canary = None
        self._set_active(None)
        self.observer.active_changed(None)
        await asyncio.gather(*(w.stop(self.stop_grace) for w in workers), return_exceptions=True)
        for worker in workers:
            self.observer.worker_up(worker.slot, False)

    def kill_now(self) -> None:
        for _role, worker in self.workers():
            worker.kill_now()

    def _describe(self, worker: Worker | None, **extra: Any) -> dict[str, Any] | None:
        return None if worker is None else {**worker.status(), **extra}

    def status(self) -> dict[str, Any]:
        return {
            "wanted_version": self.wanted,
            "active": self._describe(self.active, since=self.active_since),
            "lingering": self._describe(self.lingering, until=self.lingering_until),
            "canary": self._describe(self.canary, percent=100 * self.canary_share),
            "pinned": self.pinned,
            "swap_in_progress": self.current.as_dict() if self.current else None,
            "failed_versions": {v: self.failure_for(v) for v in self._failures},
            "history": [r.as_dict() for r in reversed(self.history)],
        }
