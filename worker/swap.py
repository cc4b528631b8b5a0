"""The swap state machine: which worker is active, and how a new version replaces it.

One loop owns every transition, so two swaps never overlap:

    wanted version changes
      -> start the idle slot -> GET /ping 200 -> warm-up 2xx      (any failure: stop the new
      -> switch `active` -> drain the old worker -> stop it        worker, keep the old, back off)

The switch is one assignment of `active`; the proxy reads it once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import aiohttp

from .backoff import Backoff
from .inflight import InFlight
from .process import WorkerFailed

log = logging.getLogger(__name__)

SLOTS = ("blue", "green")


class Worker(Protocol):
    slot: str
    version: str
    in_flight: InFlight
    pid: int | None
    port: int | None
    base_url: str
    session: aiohttp.ClientSession | None
    fresh_session: aiohttp.ClientSession | None
    """A pool that never reuses a connection: for the one retry after a stale keep-alive."""

    async def start(self) -> None: ...
    async def wait_ready(self, timeout: float) -> None: ...
    async def warm_up(self) -> bool: ...
    async def stop(self, grace: float) -> None: ...
    async def wait_exit(self) -> int | None: ...
    def kill_now(self) -> None: ...
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

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["from"] = data.pop("from_version")
        data["to"] = data.pop("to_version")
        return data


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
    ) -> None:
        self._factory = factory
        self.startup_timeout = startup_timeout
        self.drain_timeout = drain_timeout
        self.stop_grace = stop_grace
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self.observer: SwapObserver = observer or _NoObserver()
        self.active: Worker | None = None
        self.active_since: float | None = None
        self.served = False  # a worker has been active at least once
        self._switched = asyncio.Event()  # pulsed on every change of `active`
        self.wanted: str | None = None
        self.current: SwapRecord | None = None
        self.history: deque[SwapRecord] = deque(maxlen=history_size)
        self._failures: dict[str, _Failure] = {}
        self._wake = asyncio.Event()
        self._next_cause = "initial"
        self._last_slot: str | None = None
        self._starting: Worker | None = None
        self._retiring: set[Worker] = set()
        self._watchers: set[asyncio.Task[None]] = set()

    # -- what the watcher and the admin port call ----------------------------------------------

    def want(self, version: str) -> None:
        """Serve `version` as soon as it is ready. The latest call wins."""
        version = str(version)
        if version != self.wanted:
            if self.wanted is not None:
                log.info("wanted version %s -> %s", self.wanted, version)
                self._next_cause = "registry moved"
            self.wanted = version
        self._wake.set()

    def retry_now(self) -> None:
        """Forget the backoff of failed versions: an operator asked to try again."""
        self._failures.clear()
        self._wake.set()

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

    def in_flight(self) -> int:
        workers = {self.active, self._starting, *self._retiring} - {None}
        return sum(w.in_flight.count for w in workers if w is not None)

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
            await self._swap(target)

    def _target(self) -> str | None:
        if self.wanted is None:
            return None
        if self.active is not None and self.active.version == self.wanted:
            return None
        return self.wanted

    def _retry_delay(self, version: str) -> float:
        failure = self._failures.get(version)
        return 0.0 if failure is None else failure.retry_at - time.monotonic()

    def _idle_slot(self) -> str:
        busy = self.active.slot if self.active is not None else self._last_slot
        return SLOTS[1] if busy == SLOTS[0] else SLOTS[0]

    async def _swap(self, version: str) -> None:
        old = self.active
        slot = self._idle_slot()
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
        worker = self._factory(slot, version)
        self._starting = worker
        try:
            await self._bring_up(worker, record)
        except WorkerFailed as failure:
            self._starting = None
            await self._reject(worker, record, failure, began)
            return
        except BaseException:
            self._starting = None
            with contextlib.suppress(Exception):
                await worker.stop(self.stop_grace)
            raise
        self._starting = None

        step = time.monotonic()
        self._set_active(worker)  # the switch: from here on new requests go to `worker`
        self._last_slot = slot
        self._next_cause = "registry moved"
        self._failures.pop(version, None)
        record.steps["switch"] = round(time.monotonic() - step, 6)
        self.observer.active_changed(worker)
        self.observer.worker_up(slot, True)
        log.info("swap %s -> %s: switched to %s", record.from_version, version, slot)
        self._watch(worker)

        if old is not None:
            record.step = "drain"
            record.drained = await self._retire(old, record)
        record.result = "succeeded"
        record.step = "done"
        record.seconds = round(time.monotonic() - began, 3)
        self._finish(record)
        log.info(
            "swap %s -> %s: succeeded in %.2f s %s",
            record.from_version,
            version,
            record.seconds,
            record.steps,
        )

    async def _bring_up(self, worker: Worker, record: SwapRecord) -> None:
        step = time.monotonic()
        try:
            await worker.start()
        except OSError as error:
            raise WorkerFailed("start", f"could not launch: {error}") from error
        record.step = "ready"
        await worker.wait_ready(self.startup_timeout)
        record.steps["ready"] = round(time.monotonic() - step, 3)
        log.info(
            "worker %s v%s ready in %.2f s", worker.slot, worker.version, record.steps["ready"]
        )
        step = time.monotonic()
        record.step = "warm_up"
        warmed = await worker.warm_up()
        record.steps["warm_up"] = round(time.monotonic() - step, 3)
        if not warmed:
            log.warning("version %s has no input example: warm-up skipped", worker.version)

    async def _reject(
        self, worker: Worker, record: SwapRecord, failure: WorkerFailed, began: float
    ) -> None:
        await worker.stop(self.stop_grace)
        version = record.to_version
        previous = self._failures.get(version)
        backoff = previous.backoff if previous else Backoff(self._retry_base, self._retry_cap)
        delay = backoff.next_delay()
        self._failures[version] = _Failure(backoff, time.monotonic() + delay, str(failure))
        record.result = "failed"
        record.error = str(failure)
        record.output = failure.output
        record.seconds = round(time.monotonic() - began, 3)
        self._finish(record)
        serving = self.active.version if self.active else "nothing"
        log.error(
            "swap %s -> %s failed at %s: %s; still serving %s; next attempt in %.1f s%s",
            record.from_version,
            version,
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

    async def _retire(self, worker: Worker, record: SwapRecord) -> bool:
        self._retiring.add(worker)
        try:
            step = time.monotonic()
            drained = await worker.in_flight.wait_idle(self.drain_timeout)
            record.steps["drain"] = round(time.monotonic() - step, 3)
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
            record.steps["stop"] = round(time.monotonic() - step, 3)
            self.observer.worker_up(worker.slot, False)
            return drained
        finally:
            self._retiring.discard(worker)

    def _watch(self, worker: Worker) -> None:
        """Restart the version if its worker dies while it is active."""

        async def watch() -> None:
            code = await worker.wait_exit()
            if self.active is not worker:
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
        workers = [w for w in (self.active, self._starting, *self._retiring) if w is not None]
        self._set_active(None)
        self.observer.active_changed(None)
        await asyncio.gather(*(w.stop(self.stop_grace) for w in workers), return_exceptions=True)
        for worker in workers:
            self.observer.worker_up(worker.slot, False)

    def kill_now(self) -> None:
        for worker in (self.active, self._starting, *self._retiring):
            if worker is not None:
                worker.kill_now()

    def status(self) -> dict[str, Any]:
        active = None
        if self.active is not None:
            active = {**self.active.status(), "since": self.active_since}
        return {
            "wanted_version": self.wanted,
            "active": active,
            "swap_in_progress": self.current.as_dict() if self.current else None,
            "failed_versions": {v: self.failure_for(v) for v in self._failures},
            "history": [r.as_dict() for r in reversed(self.history)],
        }
