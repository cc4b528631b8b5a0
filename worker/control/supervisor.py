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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import aiohttp

from ..model.signature import breaking_changes
from ..process.child import WorkerFailed
from .backoff import Backoff
from .inflight import InFlight

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


@dataclass
class _CrashLoop:
    """Exits of one version's active worker soon after it took traffic, in a row."""

    backoff: Backoff
    count: int = 0


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
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self.observer: SwapObserver = observer or _NoObserver()
        self.linger = linger
        self.canary_policy = canary
        self.allow_signature_change = allow_signature_change
        self.health_interval = health_interval
        self.health_failures = health_failures
        # An active worker that exits within this many seconds of taking traffic exited early:
        # twice in a row, and its version is failing, like one that never got ready.
        self.crash_window = crash_window
        self.active: Worker | None = None
        self.active_since: float | None = None
        self._active_from = 0.0  # monotonic twin of active_since
        self.served = False  # a worker has been active at least once
        # Versions that took traffic, latest last: what to bring back while the wanted one fails.
        self._served_versions: deque[str] = deque(maxlen=8)
        # (version, input schema) of the last version that took traffic: what callers rely on,
        # and what the signature guard compares a new version with, even once it is gone.
        self._served_schema: tuple[str, Any] | None = None
        self._inputs: dict[Worker, Any] = {}  # input schema of each worker brought up
        self._crash_loops: dict[str, _CrashLoop] = {}
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
        # Workers being drained or stopped: until they are gone their slot is busy and close()
        # still owes them a stop, even if whoever began it was cancelled meanwhile.
        self._retiring: set[Worker] = set()
        self._stopping: dict[Worker, asyncio.Task[None]] = {}
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
        self._crash_loops.clear()
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
        outgoing = self.active
        if outgoing is not None and time.monotonic() - self._active_from >= self.crash_window:
            self._crash_loops.pop(outgoing.version, None)  # it served its time: no crash loop
        self.active = worker
        self.active_since = time.time() if worker is not None else None
        self._active_from = time.monotonic()
        if worker is not None:
            self.served = True
            with contextlib.suppress(ValueError):
                self._served_versions.remove(worker.version)
            self._served_versions.append(worker.version)
            self._served_schema = (worker.version, self._inputs.get(worker))
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
        if canary is not None and (self.active is None or random.random() < self.canary_share):
            return canary  # also all of it when the old worker died: the canary is warm
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
            fallback = target != self.wanted
            # A fallback's cause is its own: the wanted version's next try keeps the cause
            # that set it off.
            cause = (
                f"fallback: {self.wanted} cannot serve now; {target} served before"
                if fallback
                else self._next_cause
            )
            if self._can_switch_back(target):
                self._switch_back(target, cause)
            else:
                await self._swap(target, cause, vetted=fallback)

    def _target(self) -> str | None:
        wanted = self.wanted
        if wanted is None:
            return None
        if self.active is not None:
            return None if self.active.version == wanted else wanted
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

    async def _swap(self, version: str, cause: str, *, vetted: bool = False) -> None:
        """Bring `version` up in the idle slot and switch to it. `vetted`: it took traffic
        before, and is brought back because the wanted version cannot serve: no signature
        guard, since serving the callers' previous version beats serving nothing."""
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
            cause=cause,
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
            await self._bring_up(worker, record, vetted=vetted)
            if old is not None and old.alive and self.canary_policy is not None:
                await self._run_canary(worker, old, record)
        except WorkerFailed as failure:
            self._starting = None
            await self._reject(worker, record, failure, began)
            return
        except BaseException:
            self._starting = None
            self.canary = None
            with contextlib.suppress(Exception):
                await self._stopped(worker)
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

        # An old worker that died during the swap is being stopped by its watcher already.
        if old is not None and old.alive:
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

    def _switch_back(self, version: str, cause: str) -> None:
        """To the lingering worker: no start, no warm-up, no drain to wait."""
        old = self.active
        worker, record, began = self._switch_to_lingering(f"{cause} (to the lingering worker)")
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

    async def _bring_up(self, worker: Worker, record: SwapRecord, *, vetted: bool) -> None:
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
        served = self._served_schema
        if (
            served is not None
            and served[0] != worker.version
            and not (vetted or self.allow_signature_change)
        ):
            record.step = "signature"
            await self._check_signature(served, worker, record)
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
        # Read once while the MLmodel is at hand (the worker read it for the warm-up): the
        # next version's guard compares with it even if this worker is gone by then.
        self._inputs[worker] = await worker.input_schema()

    async def _check_signature(
        self, served: tuple[str, Any], new: Worker, record: SwapRecord
    ) -> None:
        """Block a version whose inputs would break the callers of the version that served
        last (active, or dead and being restarted). Runs while the new worker boots, so a
        blocked version costs no wait for its cold start."""
        step = time.monotonic()
        version, before = served
        after = await new.input_schema()
        _step_done(record, "signature", round(time.monotonic() - step, 3))
        problems = breaking_changes(before, after)
        if problems:
            raise WorkerFailed(
                "signature",
                f"inputs incompatible with version {version}: {'; '.join(problems)} "
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
        new_exit = asyncio.ensure_future(worker.wait_exit())
        old_exit = asyncio.ensure_future(old.wait_exit())
        try:
            done, _pending = await asyncio.wait(
                (new_exit, old_exit), timeout=policy.seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            new_exit.cancel()
            old_exit.cancel()
            self.canary = None
        exited = new_exit in done
        old_died = old_exit in done and not exited
        if old_died:
            # Nothing else serves now: judge on what the canary answered so far, at once.
            log.warning("old worker %s v%s exited during the canary", old.slot, old.version)
        else:
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
        if old_died:
            record.canary["ended_early"] = "the old worker exited"
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
        await self._retire(worker)
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

    async def _retire(
        self, worker: Worker, record: SwapRecord | None = None, *, drain: bool = True
    ) -> bool:
        """Let `worker` finish its requests (if `drain`), then stop it. It stays in `_retiring`
        until stopped, also when this is cancelled half-way (shutdown): close() finishes it."""
        self._retiring.add(worker)
        drained = True
        if drain:
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
        await self._stopped(worker)
        if record is not None:
            _step_done(record, "stop", round(time.monotonic() - step, 3))
        self.observer.worker_up(worker.slot, False)
        self._retiring.discard(worker)
        return drained

    def _stop_task(self, worker: Worker) -> asyncio.Task[None]:
        """`worker.stop()` in a task of its own, one per worker, tracked until done."""
        task = self._stopping.get(worker)
        if task is None:
            task = asyncio.create_task(self._stop_quietly(worker), name=f"stop-{worker.slot}")
            self._stopping[worker] = task
        return task

    async def _stop_quietly(self, worker: Worker) -> None:
        try:
            await worker.stop(self.stop_grace)
        except Exception:  # a stop that fails must not keep the slot busy forever
            log.exception("stopping worker %s v%s failed", worker.slot, worker.version)
        finally:
            self._stopping.pop(worker, None)
            self._inputs.pop(worker, None)

    async def _stopped(self, worker: Worker) -> None:
        """Stop `worker` and wait for it. A caller cancelled meanwhile does not abort the stop."""
        await asyncio.shield(self._stop_task(worker))

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
            # Pinned by a rollback: the operator chose the active version over this one.
            if failures >= self.health_failures and self.lingering is worker and not self.pinned:
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
        self._wake.set()  # the restart waits for the failed worker's slot (`_retiring`)
        await self._retire(failed, drain=False)

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
            self._note_exit(worker, code)
            lingering = self.lingering
            if lingering is not None and lingering.alive and not self.pinned:
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
            self._wake.set()  # the restart takes the other slot: no need to wait for this stop
            await self._retire(worker, drain=False)  # reaps what is left of its process group

        task = asyncio.create_task(watch(), name=f"watch-{worker.slot}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    def _note_exit(self, worker: Worker, code: int | None) -> None:
        """Count an exit of the active worker soon after it took traffic. The first is restarted
        at once like any crash; from the second in a row the version backs off like one that
        failed to start, and the version that served before it (or the lingering one) serves
        meanwhile."""
        served = time.monotonic() - self._active_from
        version = worker.version
        if served >= self.crash_window:
            self._crash_loops.pop(version, None)
            return
        loop = self._crash_loops.setdefault(
            version, _CrashLoop(Backoff(self._retry_base, self._retry_cap))
        )
        loop.count += 1
        if loop.count < 2:
            return
        delay = loop.backoff.next_delay()
        error = (
            f"exit: code {code} {served:.1f} s after taking traffic, {loop.count} times in a row"
        )
        self._failures[version] = _Failure(loop.backoff, time.monotonic() + delay, error)
        log.error("version %s is crash-looping (%s); next attempt in %.1f s", version, error, delay)

    # -- shutdown ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every worker. Call after the `run` task is cancelled."""
        for task in list(self._watchers):
            task.cancel()
        self._cancel_linger_timer()
        # Also those whose stop began and whose stopper was cancelled: each stop runs once.
        workers = {w for _role, w in self.workers()} | set(self._stopping)
        self.lingering = None
        self.canary = None
        self._set_active(None)
        self.observer.active_changed(None)
        await asyncio.gather(*(self._stop_task(w) for w in workers), return_exceptions=True)
        self._retiring.clear()
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
