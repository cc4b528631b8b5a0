"""One pre-warmed spare: an interpreter that has imported MLflow's scoring server and waits, so
the next version's worker has only its model to load (spare_main.py is what it runs).

Kept by the sidecar: made when nothing else happens (a while after a swap, at low CPU
priority), handed to the next worker that can use it, then made again. With the local env
manager it runs our interpreter; with virtualenv or uv, the interpreter of the environment the
active version is served in, and the next version can use it when its requirements are the
same (MLflow names an environment after them: the same requirements, the same environment).
A spare that died, or that is stale (MLflow or any other package of its environment changed
since it started, or the environment workers get), is replaced, never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

from . import spare_main
from .model.venv import VIRTUAL_ENV_MANAGERS, PreparedEnv
from .process.child import ChildProcess
from .process.memory import group_rss_bytes
from .spare_main import READY
from .spec import WorkerSpec

log = logging.getLogger("mlflow_bluegreen.worker")

# After a swap, the new worker settles and the old one stops: a spare started at once would
# compete with both for the CPU.
QUIET_DELAY = 2.0
# A spare still importing when a swap wants it is waited for (the rest of its imports take less
# than a whole cold start), up to this long.
READY_WAIT = 30.0
# A spare that exits before its imports are done (an environment whose MLflow or uvicorn
# cannot be imported) would otherwise be made again every QUIET_DELAY: each try waits twice
# as long as the one before, up to this, until one is ready.
RETRY_LIMIT = 300.0

# What a spare runs: spare_main.py by its path, not `-m mlflow_bluegreen...`, because the
# environment of a model's requirements does not have our package. It uses the standard
# library, MLflow and uvicorn only.
SPARE_PROGRAM = f"exec(open({str(Path(spare_main.__file__))!r}).read())"


def _distributions(venv: PreparedEnv | None) -> Iterable[importlib.metadata.Distribution]:
    if venv is None:
        return importlib.metadata.distributions()
    return importlib.metadata.distributions(path=venv.site_packages())


def installed_fingerprint(environment: dict[str, str], venv: PreparedEnv | None = None) -> str:
    """What a spare's imports depend on: the interpreter, every distribution installed beside
    it (ours, or `venv`'s) and the environment workers start with. Blocking (it reads every
    dist-info): run it in a thread."""
    digest = hashlib.sha256((venv.python if venv is not None else sys.executable).encode())
    for name, version in sorted(
        (d.metadata["Name"] or "", d.version) for d in _distributions(venv)
    ):
        digest.update(f"{name}=={version}\n".encode())
    for key, value in sorted(environment.items()):
        digest.update(f"{key}={value}\n".encode())
    return digest.hexdigest()


def installed_mlflow(venv: PreparedEnv | None = None) -> str | None:
    """The MLflow installed beside the interpreter (mlflow, or mlflow-skinny alone)."""
    found = {d.metadata["Name"]: d.version for d in _distributions(venv)}
    return found.get("mlflow") or found.get("mlflow-skinny")


class Spare:
    """A spare process and what it said about itself once its imports were done."""

    def __init__(
        self, process: ChildProcess, fingerprint: str, venv: PreparedEnv | None = None
    ) -> None:
        self.process = process
        self.fingerprint = fingerprint
        self.venv = venv  # where it runs: None for our own interpreter
        self.ready = asyncio.Event()
        self.mlflow: str | None = None
        self.lines: list[str] = []

    def note(self, line: str) -> None:
        if line.startswith(READY):
            self.mlflow = json.loads(line[len(READY) :])["mlflow"]
            self.ready.set()
        else:
            self.lines.append(line)
            log.info("spare: %s", line)


class SpareKeeper:
    def __init__(
        self,
        spec: WorkerSpec,
        *,
        enabled: bool = True,
        preload: Callable[[], Sequence[str]] = tuple,
        where: Callable[[], PreparedEnv | None] = lambda: None,
        fingerprint: Callable[[dict[str, str], PreparedEnv | None], str] = installed_fingerprint,
        quiet_delay: float = QUIET_DELAY,
    ) -> None:
        self.spec = spec
        # Only where the next worker can use it: a local model started directly, by one uvicorn
        # process (with more, each re-imports everything), in our environment or a virtual one.
        self.enabled = (
            enabled
            and spec.workers == 1
            and spec.direct
            and (spec.env_manager == "local" or spec.env_manager in VIRTUAL_ENV_MANAGERS)
        )
        self._preload = preload  # modules to import too: the flavors serving now
        self._where = where  # the environment the active version is served in
        self._fingerprint = fingerprint
        self._quiet_delay = quiet_delay
        self._spare: Spare | None = None
        self._making: asyncio.Task[None] | None = None
        self._closed = False
        self._watchers: set[asyncio.Task[None]] = set()
        self._failed_in_a_row = 0  # spares that exited before they were ready
        self.used = 0
        self.replaced = 0

    def eligible(self, model_uri: str, venv: PreparedEnv | None = None) -> bool:
        return self.enabled and self.spec.is_direct(model_uri, venv)

    def replenish(self, delay: float | None = None) -> None:
        """Make a spare in a while, unless there is one (alive, where the active version is
        served) or one is being made. One waiting in another environment is replaced."""
        if not self.enabled or self._closed:
            return
        if self._making is not None and not self._making.done():
            return
        spare = self._spare
        if spare is not None and spare.process.alive and self._placed_right(spare):
            return
        wait = self._quiet_delay if delay is None else delay
        self._making = asyncio.create_task(self._make(wait), name="spare")

    async def take(self, model_uri: str, venv: PreparedEnv | None = None) -> Spare | None:
        """The spare, ready and current, now this caller's; None if there is none fit to use
        (a stale or dead one is stopped; the swap's end makes another, where it serves)."""
        spare, self._spare = self._spare, None
        if spare is None or not self.eligible(model_uri, venv):
            self._spare = spare
            return None
        why = await self._unfit(spare, venv)
        if why is not None:
            log.warning("spare pid %s not used: %s", spare.process.pid, why)
            self.replaced += 1
            await spare.process.stop(2.0)
            return None
        self.used += 1
        self._failed_in_a_row = 0
        return spare

    async def wait_ready(self, timeout: float) -> bool:
        """Until a spare is ready (one is made now if none is on its way); whether one is."""
        self.replenish(delay=0.0)
        async with asyncio.timeout(timeout):
            while self._spare is None or not self._spare.ready.is_set():
                if self._spare is not None and not self._spare.process.alive:
                    return False
                await asyncio.sleep(0.05)
        return True

    async def close(self) -> None:
        self._closed = True
        for task in self._watchers:
            task.cancel()
        if self._making is not None:
            self._making.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._making
        spare, self._spare = self._spare, None
        if spare is not None:
            await spare.process.stop(2.0)

    def status(self) -> dict[str, object] | None:
        spare = self._spare
        if not self.enabled:
            return None
        info: dict[str, object] = {"used": self.used, "replaced": self.replaced}
        if spare is not None:
            info.update(
                pid=spare.process.pid,
                ready=spare.ready.is_set(),
                alive=spare.process.alive,
                rss_bytes=self.rss_bytes(),
                environment=str(spare.venv.directory) if spare.venv is not None else None,
            )
        return info

    def rss_bytes(self) -> int:
        spare = self._spare
        if spare is None or spare.process.pid is None or not spare.process.alive:
            return 0
        return group_rss_bytes(spare.process.pid)

    def _placed_right(self, spare: Spare) -> bool:
        if self.spec.env_manager == "local":
            return True
        where = self._where()
        return where is not None and spare.venv is not None and where.python == spare.venv.python

    async def _unfit(self, spare: Spare, venv: PreparedEnv | None) -> str | None:
        wanted = self.spec.python(venv)
        if spare.venv is not None and spare.venv.python != wanted:
            return (
                f"it waits in {spare.venv.directory}, and this version's requirements are "
                f"served from {venv.directory if venv is not None else wanted}"
            )
        if not spare.process.alive:
            return f"it exited with code {spare.process.returncode}"
        if not spare.ready.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READY_WAIT):
                    await _first(spare.ready.wait(), spare.process.wait_exit())
            if not spare.process.alive:
                return f"it exited with code {spare.process.returncode}"
            if not spare.ready.is_set():
                return f"its imports took more than {READY_WAIT:g} s"
        installed = await asyncio.to_thread(installed_mlflow, spare.venv)
        if spare.mlflow != installed:
            return f"it imported MLflow {spare.mlflow}, {installed} is installed now"
        now = await asyncio.to_thread(self._fingerprint, self.spec.environment(), spare.venv)
        if now != spare.fingerprint:
            return "the installed packages or the workers' environment changed since it started"
        return None

    async def _make(self, delay: float) -> None:
        await asyncio.sleep(delay)
        old, self._spare = self._spare, None
        if old is not None:  # in the environment of a version that no longer serves
            log.info(
                "spare pid %s: replaced by one where the active version is served", old.process.pid
            )
            self.replaced += 1
            await old.process.stop(2.0)
        venv = self._where() if self.spec.env_manager != "local" else None
        if not self.spec.starts_directly_in(venv):
            # Its environment is unknown, or a worker there starts through the CLI (it has no
            # uvicorn of its own): a spare there would not be used.
            return
        environment = self.spec.environment()
        if venv is not None:
            environment = venv.activate(environment)
        fingerprint = await asyncio.to_thread(self._fingerprint, self.spec.environment(), venv)
        command = [self.spec.python(venv), "-c", SPARE_PROGRAM, *self._preload()]
        spare: Spare | None = None

        def note(line: str) -> None:
            if spare is not None:
                spare.note(line)

        process = ChildProcess(
            command,
            environment,
            note,
            name="spare",
            log_extra={},  # slot and version are a worker's: a spare has neither yet
            stdin_pipe=True,
            what="spare",
        )
        spare = Spare(process, fingerprint, venv)
        process.spawn()
        self._spare = spare
        log.info(
            "spare pid %s: importing MLflow's scoring server in %s, at low priority",
            process.pid,
            venv.directory if venv is not None else "our environment",
        )
        self._watch(spare)

    def _watch(self, spare: Spare) -> None:
        async def watch() -> None:
            code = await spare.process.wait_exit()
            if self._spare is spare:  # not taken: it died waiting
                self._spare = None
                self.replaced += 1
                spare.process.close()
                if spare.ready.is_set():
                    self._failed_in_a_row, delay, how = 0, self._quiet_delay, ""
                else:
                    self._failed_in_a_row += 1
                    delay = min(self._quiet_delay * 2**self._failed_in_a_row, RETRY_LIMIT)
                    how = " before it was ready" + (f" ({spare.lines[-1]})" if spare.lines else "")
                log.warning(
                    "spare pid %s exited with code %s%s; making another in %.1f s",
                    spare.process.pid,
                    code,
                    how,
                    delay,
                )
                self.replenish(delay)

        task = asyncio.create_task(watch(), name="spare-watch")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)


async def _first(*waits: Awaitable[object]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
