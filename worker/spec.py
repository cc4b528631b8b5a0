"""How every worker is launched: the scoring server's command line and environment."""

from __future__ import annotations

import os
import pathlib
import socket
import sys
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

from .model.prepare import is_remote
from .model.venv import VIRTUAL_ENV_MANAGERS, PreparedEnv

# The proxy's pools drop idle connections well before this (proxy/relay/pools.py), so the
# proxy, never the worker, closes an idle connection. Otherwise a request can be written onto
# a connection the worker closed a moment before, and aiohttp never retries a POST.
WORKER_KEEPALIVE = 75

# What `mlflow models serve` runs, and the variable that tells it which model to load.
SCORING_APP = "mlflow.pyfunc.scoring_server.app:app"
MODEL_PATH_VARIABLE = "__pyfunc_model_path__"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class WorkerSpec:
    """The same for all versions."""

    env_manager: str = "local"
    workers: int = 1
    timeout: int = 60
    host: str = "127.0.0.1"
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    access_log: bool = False
    # Download the model and build its environment before `mlflow models serve` (see prepare).
    prefetch: bool = True
    prefetch_timeout: float = 600.0

    # Start MLflow's scoring server directly where that is what `mlflow models serve` would run
    # (see `direct`), instead of the CLI that imports mlflow only to start it.
    direct: bool = True

    def is_direct(self, model_uri: str, venv: PreparedEnv | None = None) -> bool:
        """`mlflow models serve` of a local model with the local env manager runs exactly
        `uvicorn --host H --port P --workers N mlflow.pyfunc.scoring_server.app:app` with the
        model's path and the request timeout in its environment (mlflow/pyfunc/backend.py,
        scoring_server.get_cmd). With virtualenv or uv it runs the same command after
        `source <env>/bin/activate` (`venv`: that environment, found once prepare-env built
        it, and holding a uvicorn of its own). conda activates in ways of its own: it goes
        through the CLI, as does an environment we could not find."""
        return not is_remote(model_uri) and self.starts_directly_in(venv)

    def starts_directly_in(self, venv: PreparedEnv | None) -> bool:
        """The environment's part of `is_direct`: ours, or a virtual one we found that has its
        own uvicorn."""
        if not self.direct:
            return False
        if self.env_manager == "local":
            return True
        return venv is not None and venv.has_uvicorn and self.env_manager in VIRTUAL_ENV_MANAGERS

    def python(self, venv: PreparedEnv | None = None) -> str:
        """The interpreter a direct start runs its server with."""
        return venv.python if venv is not None and self.env_manager != "local" else sys.executable

    def command(self, model_uri: str, port: int, venv: PreparedEnv | None = None) -> list[str]:
        if self.is_direct(model_uri, venv):
            return [
                self.python(venv), "-m", "uvicorn",
                "--host", self.host,
                "--port", str(port),
                "--workers", str(self.workers),
                SCORING_APP,
            ]  # fmt: skip
        return [
            sys.executable, "-m", "mlflow", "models", "serve",
            "--model-uri", model_uri,
            "--host", self.host,
            "--port", str(port),
            "--env-manager", self.env_manager,
            "--workers", str(self.workers),
            "--timeout", str(self.timeout),
        ]  # fmt: skip

    def server_environment(self, model_uri: str, venv: PreparedEnv | None = None) -> dict[str, str]:
        """`environment()`, plus what `mlflow models serve` would tell the server it starts
        (and, in a virtual environment, what activating it changes)."""
        env = self.environment()
        if self.is_direct(model_uri, venv):
            if venv is not None and self.env_manager != "local":
                env = venv.activate(env)
            env[MODEL_PATH_VARIABLE] = _local_file_uri(model_uri)
            env["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(self.timeout)
        return env

    def environment(self) -> dict[str, str]:
        env = dict(self.base_env)
        # `mlflow models serve` finds uvicorn on PATH: make it the one beside our interpreter.
        bin_dir = os.path.dirname(sys.executable)
        # `--env-manager uv` runs `uv venv --python=<the model's version>`, and uv skips the
        # interpreters of virtual environments (ours above included) and, offline, cannot
        # download one: offer the interpreter our venv was made from, last, so a model saved
        # with our Python version builds without a pyenv shim or a system Python on PATH.
        base_bin = os.path.join(sys.base_prefix, "bin")
        tail = base_bin if base_bin != bin_dir and os.path.isdir(base_bin) else ""
        env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", ""), tail) if p)
        env["UVICORN_TIMEOUT_KEEP_ALIVE"] = str(WORKER_KEEPALIVE)
        env["PYTHONUNBUFFERED"] = "1"
        # A line per request through our log costs more than the request; --access-log turns
        # both the proxy's and the workers' access logs on.
        env.setdefault("UVICORN_ACCESS_LOG", "true" if self.access_log else "false")
        return env


def _local_file_uri(model_uri: str) -> str:
    """A local path (or file: URI) as the file URI MLflow's CLI hands the server (as
    mlflow.utils.file_utils.path_to_local_file_uri makes it)."""
    path = urllib.parse.urlparse(model_uri).path if model_uri.startswith("file:") else model_uri
    return pathlib.Path(os.path.abspath(urllib.request.url2pathname(path))).as_uri()
