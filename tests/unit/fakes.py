"""Workers that behave like `mlflow models serve` in milliseconds, for the swap state machine."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from mlflow_bluegreen.worker.control import Step, WorkerFailed
from mlflow_bluegreen.worker.control.inflight import InFlight


@dataclass
class Plan:
    """How workers of one version behave."""

    fail_at: str | None = None  # "start", "ready" or "warm_up"
    inputs: Any | None = None  # the signature's input schema
    healthy: bool = True
    ready_delay: float = 0.0
    stop_delay: float = 0.0


@dataclass
class Fleet:
    """Creates fake workers and remembers everything they did."""

    plans: dict[str, Plan] = field(default_factory=dict)
    created: list[FakeWorker] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    max_running: int = 0

    def __call__(self, slot: str, version: str) -> FakeWorker:
        worker = FakeWorker(self, slot, version, self.plans.get(version, Plan()))
        self.created.append(worker)
        return worker

    def running(self) -> list[FakeWorker]:
        return [w for w in self.created if w.running]

    def note(self, worker: FakeWorker, what: str) -> None:
        self.events.append((what, worker.slot, worker.version))
        self.max_running = max(self.max_running, len(self.running()))

    def started(self, version: str) -> int:
        return sum(1 for what, _s, v in self.events if what == "start" and v == version)


class FakeWorker:
    def __init__(self, fleet: Fleet, slot: str, version: str, plan: Plan) -> None:
        self.fleet = fleet
        self.slot = slot
        self.version = version
        self.plan = plan
        self.in_flight = InFlight()
        self.pid: int | None = None
        self.port: int | None = None
        self.base_url = "http://fake"
        self.read_timeout = 5.0
        self.session = None
        self.fresh_session = None
        self.timings: dict[str, float] = {}
        self.running = False
        self.output: deque[str] = deque(["loading model", "Traceback: boom"], maxlen=40)
        self._exited = asyncio.Event()
        self.returncode: int | None = None

    async def start(self) -> None:
        if self.plan.fail_at == "start":
            raise OSError("no such executable")
        self.running = True
        self.pid = 1000 + len(self.fleet.created)
        self.fleet.note(self, "start")

    async def wait_ready(self, timeout: float) -> None:
        await asyncio.sleep(self.plan.ready_delay)
        if self.plan.fail_at == "ready":
            raise WorkerFailed(Step.START, "exited with code 1 before ready", list(self.output))

    async def warm_up(self) -> bool:
        if self.plan.fail_at == "warm_up":
            raise WorkerFailed(Step.WARM_UP, "answered 500: boom", list(self.output))
        return True

    async def stop(self, grace: float) -> None:
        await asyncio.sleep(self.plan.stop_delay)
        if self.running:
            self.running = False
            self.fleet.note(self, "stop")
        self._exited.set()

    def crash(self, code: int = -9) -> None:
        self.running = False
        self.returncode = code
        self.fleet.note(self, "crash")
        self._exited.set()

    async def wait_exit(self) -> int | None:
        await self._exited.wait()
        return self.returncode

    def kill_now(self) -> None:
        self.running = False

    @property
    def alive(self) -> bool:
        return self.running

    async def input_schema(self) -> Any | None:
        return self.plan.inputs

    async def healthy(self) -> bool:
        return self.running and self.plan.healthy

    def rss_bytes(self) -> int:
        return 1_000_000 if self.running else 0

    def status(self) -> dict[str, Any]:
        return {"slot": self.slot, "version": self.version, "pid": self.pid, "port": self.port}
