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
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlparse

from ..process.output import LINE_LIMIT, relay_lines

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
    ) -> None:
        self._command = list(command)
        self._env = dict(env)
        self._on_line = on_line
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
