"""Download a version's model and build its environment before its worker starts.

`mlflow models serve` on a registry URI downloads the artifacts, builds the environment (for a
non-local env manager) and only then boots: one opaque wait. Done as separate steps first,
each is timed on its own (the swap's history shows `download` and `prepare_env`), a failure
names the step, and the worker then starts from a local directory, so the health clock measures
the boot alone. The download runs in a thread of the sidecar (its transfers release the GIL,
and a child process would first spend seconds importing mlflow); the environment build runs
as a child process with the worker's environment, as `mlflow models serve` would run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal
from urllib.parse import urlparse

from ..process.lifeline import dying_with_us
from ..process.output import LINE_LIMIT, relay_lines
from ..threads import in_daemon_thread
from .stash import LocalCopy, ModelStash
from .venv import VIRTUAL_ENV_MANAGERS, EnvNotFound, PreparedEnv, find_prepared_env

log = logging.getLogger("mlflow_bluegreen.worker")

StepName = Literal["download", "prepare_env"]

# Local paths are served in place: nothing to fetch.
_LOCAL_SCHEMES = frozenset({"", "file"})


def is_remote(model_uri: str) -> bool:
    scheme = urlparse(model_uri).scheme
    # A single letter is a Windows drive ("C:\\models\\iris"), not a scheme.
    return scheme not in _LOCAL_SCHEMES and len(scheme) > 1


def download_model(model_uri: str, destination: str) -> str:
    """Blocking: the artifacts of `model_uri` into `destination`; the local path of the model."""
    from mlflow.artifacts import download_artifacts

    return str(download_artifacts(artifact_uri=model_uri, dst_path=destination))


def prepare_env_command(model_path: str, env_manager: str) -> list[str]:
    return [
        sys.executable, "-m", "mlflow", "models", "prepare-env",
        "--model-uri", model_path, "--env-manager", env_manager,
    ]  # fmt: skip


# Building an environment (resolving, installing, compiling bytecode: tens of seconds of both
# cores) happens while the previous version serves, and is not what its clients wait for:
# it yields the CPU to the serving worker.
STEP_NICE: dict[StepName, int] = {"prepare_env": 10}


def prepare_env_environment(environment: Mapping[str, str], env_manager: str) -> dict[str, str]:
    """What prepare-env runs with. uv, unlike pip, installs no bytecode; where Python may not
    write it either (PYTHONDONTWRITEBYTECODE, common in images; a read-only environment),
    every boot of every version compiles MLflow, pandas and scikit-learn from source again:
    seconds per swap. Compiled once at the build instead, unless the operator said otherwise."""
    prepared = dict(environment)
    if env_manager == "uv":
        prepared.setdefault("UV_COMPILE_BYTECODE", "1")
    return prepared


class StepFailed(Exception):
    def __init__(self, reason: str, output: list[str]) -> None:
        super().__init__(reason)
        self.output = output


class Step:
    """One child process, its output relayed line by line; `kill()` ends it early."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        on_line: Callable[[str], None],
        nice: int = 0,
    ) -> None:
        self._command = list(command)
        self._env = dict(env)
        self._on_line = on_line
        self._nice = nice
        self._process: asyncio.subprocess.Process | None = None

    async def run(self, timeout: float) -> list[str]:
        """The output lines; StepFailed if it exits non-zero or takes over `timeout` s."""
        self._process = await asyncio.create_subprocess_exec(
            *self._command,
            env=self._env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            limit=LINE_LIMIT,
        )
        if self._nice:
            # Set at once, before it starts what does the work (the installer it runs, and
            # that installer's compilers, inherit it).
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self._process.pid, self._nice)
        lines: list[str] = []

        def keep(line: str) -> None:
            lines.append(line)
            self._on_line(line)

        try:
            async with asyncio.timeout(timeout):
                assert self._process.stdout is not None
                await relay_lines(self._process.stdout, keep)
                code = await self._process.wait()
        except TimeoutError:
            self.kill()
            await self._process.wait()
            raise StepFailed(f"took more than {timeout:g} s", lines) from None
        except BaseException:
            self.kill()
            raise
        if code != 0:
            raise StepFailed(f"exited with code {code}", lines)
        return lines

    def kill(self) -> None:
        """The whole group: conda and uv start children of their own."""
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)


class Preparation:
    """One version's model made ready to serve, before its server starts: a local copy
    (downloaded, or the copy a dead worker of the same version left in the stash) and, with a
    non-local env manager, its environment. Each step is timed in `timings`; `fail(step,
    reason)` makes the exception a failed step raises."""

    def __init__(
        self,
        version: str,
        model_uri: str,
        *,
        env_manager: str,
        environment: Mapping[str, str],
        stash: ModelStash | None,
        on_line: Callable[[str], None],
        fail: Callable[[StepName, str], Exception],
        log_extra: Mapping[str, str],
    ) -> None:
        self.version = version
        self.model_uri = model_uri
        self.launch_uri = model_uri  # what the server is started on
        self.model_dir: str | None = None  # the local copy, when one was made for us
        self.venv: PreparedEnv | None = None  # the virtual environment it is served in
        self.timings: dict[str, float] = {}
        self._env_manager = env_manager
        self._environment = dict(environment)
        self._stash = stash
        self._on_line = on_line
        self._fail = fail
        self._log_extra = dict(log_extra)
        self._step: Step | None = None
        self._deadline = 0.0
        self._displaced: LocalCopy | None = None  # a copy our own pushed out of the stash

    async def run(self, timeout: float, fetch: bool = True) -> None:
        """All of it within `timeout` seconds. `fetch`: download a remote model first."""
        self._deadline = time.monotonic() + timeout
        if fetch and is_remote(self.model_uri):
            kept = self._stash.take(self.version) if self._stash is not None else None
            if kept is not None:
                log.info(
                    "serving the copy of the worker that exited: %s",
                    kept.launch_uri,
                    extra=self._log_extra,
                )
                self.model_dir, self.launch_uri = kept.directory, kept.launch_uri
            else:
                self.model_dir = tempfile.mkdtemp(prefix=f"mlflow-bluegreen-v{self.version}-")
                self.launch_uri = await self._download(self.model_dir)
        if self._env_manager != "local":
            await self._run_step(
                "prepare_env",
                prepare_env_command(self.launch_uri, self._env_manager),
                prepare_env_environment(self._environment, self._env_manager),
            )
        if self._env_manager in VIRTUAL_ENV_MANAGERS:
            await self._find_env()

    async def _find_env(self) -> None:
        """Which environment prepare-env built, and its activation: a worker can start in it
        directly, and a spare wait there (counted in the prepare_env step)."""
        began = time.monotonic()
        try:
            self.venv = await asyncio.to_thread(
                find_prepared_env, self.launch_uri, self._env_manager, self._environment
            )
        except (EnvNotFound, OSError, subprocess.SubprocessError) as error:
            log.warning(
                "its environment was not found (%s): it starts through `mlflow models serve`",
                error,
                extra=self._log_extra,
            )
        if "prepare_env" in self.timings:
            spent = self.timings["prepare_env"] + time.monotonic() - began
            self.timings["prepare_env"] = round(spent, 3)

    def adopted_by(
        self,
        on_line: Callable[[str], None],
        log_extra: Mapping[str, str],
        stash: ModelStash | None,
    ) -> None:
        """From now on, it is that worker's: its lines, its log fields, its stash for a copy to
        restart from."""
        self._on_line = on_line
        self._log_extra = dict(log_extra)
        self._stash = stash

    @property
    def stash(self) -> ModelStash | None:
        return self._stash

    def kill(self) -> None:
        """End a step under way (a stop while preparing)."""
        if self._step is not None:
            self._step.kill()

    def keep_for_restart(self) -> None:
        """The worker exited by itself: its copy goes to the stash at once, before whoever
        watches for the exit starts a replacement that looks for it there."""
        if self.model_dir is None or self._stash is None:
            return
        copy = LocalCopy(self.version, self.model_dir, self.launch_uri)
        self.model_dir = None
        self._displaced = self._stash.keep(copy)

    async def discard(self) -> None:
        """Remove our own copy, unless it went to the stash; or the one that went out of the
        stash for it."""
        displaced = self._displaced.directory if self._displaced is not None else None
        for directory in (self.model_dir, displaced):
            if directory is not None:
                await asyncio.to_thread(shutil.rmtree, directory, True)
        self.model_dir = self._displaced = None

    async def _download(self, destination: str) -> str:
        """The pinned version's artifacts into `destination`; where they landed. In a thread of
        ours rather than a child process: mlflow is imported here already, and a child would
        spend seconds importing it again on every swap."""
        log.info("download: %s", self.model_uri, extra=self._log_extra)
        began = time.monotonic()
        remaining = max(self._deadline - began, 1.0)
        try:
            async with asyncio.timeout(remaining):
                local = await in_daemon_thread(
                    lambda: download_model(self.model_uri, destination), f"download-v{self.version}"
                )
        except TimeoutError as error:
            raise self._fail("download", f"took more than {remaining:g} s") from error
        except Exception as error:  # any failure rejects this version, with its reason
            raise self._fail("download", f"{type(error).__name__}: {error}") from error
        self.timings["download"] = round(time.monotonic() - began, 3)
        return local

    async def _run_step(
        self, name: StepName, command: list[str], environment: Mapping[str, str] | None = None
    ) -> list[str]:
        log.info("%s: %s", name, " ".join(command), extra=self._log_extra)
        began = time.monotonic()
        step_environment = self._environment if environment is None else environment
        self._step = Step(
            dying_with_us(command), step_environment, self._on_line, nice=STEP_NICE.get(name, 0)
        )
        try:
            output = await self._step.run(max(self._deadline - time.monotonic(), 1.0))
        except StepFailed as error:
            raise self._fail(name, str(error)) from error
        finally:
            self._step = None
        self.timings[name] = round(time.monotonic() - began, 3)
        return output
