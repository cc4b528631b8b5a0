"""One pinned model version served by a real MLflow scoring server: the `Worker` the supervisor
is given. It puts together the parts that each do one job: the model's preparation
(model/prepare.py), the server's process (process/child.py), its MLmodel (model/card.py), the
HTTP probes (probe.py) and its memory (process/memory.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from typing import Any

from .control import InFlight, Step, WorkerFailed
from .model.card import ModelCard, read_model_card
from .model.early import Early, EarlyFailed, EarlyPreparations
from .model.prepare import Preparation
from .model.stash import ModelStash
from .model.venv import PreparedEnv
from .probe import Probe, ProbeFailed
from .process.child import ChildProcess
from .process.memory import group_rss_bytes
from .process.output import first_exception
from .spare import SpareKeeper
from .spec import WorkerSpec, free_port

log = logging.getLogger("mlflow_bluegreen.worker")


class ModelWorker:
    """`mlflow models serve` on a free loopback port, serving one pinned model version."""

    def __init__(
        self,
        slot: str,
        version: str,
        model_uri: str,
        spec: WorkerSpec,
        stash: ModelStash | None = None,
        *,
        spares: SpareKeeper | None = None,
        early: EarlyPreparations | None = None,
    ) -> None:
        self.slot = slot
        self.version = version
        self.model_uri = model_uri
        self.spec = spec
        self.in_flight = InFlight()
        self.port: int | None = None
        self.base_url = ""
        self.output: deque[str] = deque(maxlen=200)
        self._log_extra = {"slot": slot, "version": version}
        self._preparation = Preparation(
            version,
            model_uri,
            env_manager=spec.env_manager,
            environment=spec.environment(),
            stash=stash,
            on_line=self._note_output,
            fail=lambda step, reason: self._failure(Step(step), reason),
            log_extra=self._log_extra,
        )
        self._spares = spares
        self._early = early
        self.launch = ""  # how its server started: spare, direct or cli
        self._process: ChildProcess | None = None
        self._probe: Probe | None = None
        self._card: asyncio.Task[ModelCard] | None = None

    @property
    def timings(self) -> dict[str, float]:
        """Seconds of each preparation step (download, prepare_env)."""
        return self._preparation.timings

    @property
    def launch_uri(self) -> str:
        return self._preparation.launch_uri

    @property
    def venv(self) -> PreparedEnv | None:
        """The virtual environment (virtualenv, uv) it is served in, once prepared."""
        return self._preparation.venv

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.alive

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare the model, then launch its server (which boots meanwhile: wait_ready)."""
        early = self._early.take(self.version) if self._early is not None else None
        if early is None or not await self._adopt(early):
            await self._preparation.run(self.spec.prefetch_timeout, fetch=self.spec.prefetch)
        self.port = free_port(self.spec.host)
        self.base_url = f"http://{self.spec.host}:{self.port}"
        venv = self.venv
        command = self.spec.command(self.launch_uri, self.port, venv)
        environment = self.spec.server_environment(self.launch_uri, venv)
        spares = self._spares
        spare = await spares.take(self.launch_uri, venv) if spares is not None else None
        if spare is not None:
            # Its imports are done: told what to serve, it becomes that very command.
            self._process = spare.process
            self._process.on_line = self._note_output
            self._process.log_extra = self._log_extra
            self._process.what = "worker"
            self._process.exited_by_itself = self._preparation.keep_for_restart
            self.launch = "spare"
            log.info(
                "starting worker: %s (in the spare pid %s)",
                " ".join(command),
                self._process.pid,
                extra=self._log_extra,
            )
            order = {
                "env": environment,
                "args": command[3:],  # after `python -m uvicorn`
                "priority": os.getpriority(os.PRIO_PROCESS, 0),
            }
            self._process.send(json.dumps(order))
        else:
            log.info("starting worker: %s", " ".join(command), extra=self._log_extra)
            self._process = ChildProcess(
                command,
                environment,
                self._note_output,
                name=self.slot,
                log_extra=self._log_extra,
                exited_by_itself=self._preparation.keep_for_restart,
            )
            self._process.spawn()
            self.launch = "direct" if self.spec.is_direct(self.launch_uri, venv) else "cli"
        self._probe = Probe(self.base_url)
        # Read the MLmodel (warm-up payload, signature) while the worker boots, not after.
        self._card = asyncio.create_task(asyncio.to_thread(read_model_card, self.launch_uri))

    async def _adopt(self, early: Early) -> bool:
        """Take over the preparation begun when the registry named this version, once it is
        done; False when it failed (then this worker prepares anew, and reports that)."""
        needed = time.monotonic()
        try:
            await early.task
        except EarlyFailed as error:
            log.warning(
                "preparing ahead failed (%s): preparing again", error, extra=self._log_extra
            )
            await early.preparation.discard()
            return False
        except asyncio.CancelledError:
            early.preparation.kill()
            await early.preparation.discard()
            raise
        stash = self._preparation.stash
        self._preparation = early.preparation
        self._preparation.adopted_by(self._note_output, self._log_extra, stash)
        ran = sum(self._preparation.timings.values())
        self._preparation.timings[str(Step.PREFETCHED)] = round(min(needed - early.began, ran), 3)
        return True

    async def wait_exit(self) -> int | None:
        assert self._process is not None
        return await self._process.wait_exit()

    async def wait_ready(self, timeout: float) -> None:
        """Return once `GET /ping` answers 200; WorkerFailed if the process exits first or
        `timeout` seconds pass."""
        assert self._process is not None and self._probe is not None
        process = self._process
        try:
            await self._probe.wait_ready(timeout, process.exited, lambda: process.returncode)
        except ProbeFailed as error:
            raise self._failure(Step.START, str(error)) from error

    async def model_card(self) -> ModelCard:
        """What the version's MLmodel says; WorkerFailed if it cannot be read."""
        assert self._card is not None
        try:
            return await asyncio.shield(self._card)
        except Exception as error:
            raise self._failure(Step.INSPECT, f"could not read the MLmodel: {error}") from error

    async def input_schema(self) -> Any | None:
        return (await self.model_card()).inputs

    async def warm_up(self) -> bool:
        """POST the model's saved serving input example; False when the model has none."""
        assert self._probe is not None
        payload = (await self.model_card()).serving_example
        if payload is None:
            return False
        try:
            await self._probe.score(payload, timeout=self.spec.timeout + 10)
        except ProbeFailed as error:
            raise self._failure(Step.WARM_UP, str(error)) from error
        return True

    async def healthy(self, timeout: float = 2.0) -> bool:
        """One `GET /ping`: True on 200 within `timeout`."""
        if not self.alive or self._probe is None:
            return False
        return await self._probe.ping(timeout)

    def flavor_modules(self) -> list[str]:
        """The module its model loads with, once its MLmodel was read: what a spare imports."""
        if self._card is None or not self._card.done() or self._card.exception() is not None:
            return []
        module = self._card.result().loader_module
        return [module] if module else []

    def rss_bytes(self) -> int:
        """Resident memory of the worker's whole process group (mlflow, uvicorn, its workers)."""
        pid = self.pid
        return group_rss_bytes(pid) if self.alive and pid is not None else 0

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the server's process group (SIGKILL after `grace`), then drop the model copy."""
        self._preparation.kill()
        if self._process is not None:
            await self._process.stop(grace)
        if self._card is not None:
            self._card.cancel()
        if self._probe is not None:
            await self._probe.close()
        await self._preparation.discard()

    def kill_now(self) -> None:
        """For a forced exit: no waiting, no cleanup beyond the signal."""
        if self._process is not None:
            self._process.kill_now()

    def status(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "version": self.version,
            "model_uri": self.model_uri,
            "served_from": self.launch_uri,
            "launch": self.launch,
            "environment": str(self.venv.directory) if self.venv is not None else None,
            "pid": self.pid,
            "port": self.port,
            "alive": self.alive,
            "in_flight": self.in_flight.count,
            "answered": self.in_flight.answered,
            "failed": self.in_flight.failed,
            "rss_bytes": self.rss_bytes(),
        }

    def _note_output(self, line: str) -> None:
        self.output.append(line)
        log.info("%s", line, extra=self._log_extra)

    def _failure(self, step: Step, reason: str) -> WorkerFailed:
        lines = list(self.output)
        cause = first_exception(lines)
        if cause:
            reason = f"{reason}: {cause}"
        return WorkerFailed(step, reason, lines[-20:])
