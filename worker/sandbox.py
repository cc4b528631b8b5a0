"""A throwaway MLflow registry on loopback, and small models to put in it.

Used by `mlflow-bluegreen demo`, the integration tests and the benchmarks, so all three exercise
the same real `mlflow server` (SQLite backend, artifacts proxied by the server) the same way.
Training needs scikit-learn (the `demo` extra).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .spec import free_port


class EmbeddedRegistry:
    """`mlflow server` on 127.0.0.1 with its store in a temporary directory.

    `app_name` picks an MLflow server app (`basic-auth` puts MLflow's own authentication in
    front); `env` is added to the server's environment and `extra_args` to its command line."""

    def __init__(
        self,
        root: Path | None = None,
        port: int | None = None,
        *,
        app_name: str | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._own_root = root is None
        self.app_name = app_name
        self.env = dict(env or {})
        self.extra_args = tuple(extra_args)
        self.root = Path(root or tempfile.mkdtemp(prefix="mlflow-bluegreen-registry-"))
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "server.log"

    def start(self, timeout: float = 120.0) -> EmbeddedRegistry:
        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
            *(("--app-name", self.app_name) if self.app_name else ()),
            *self.extra_args,
        ]  # fmt: skip
        # No background job runner (it starts a dozen huey processes): a registry is all we need.
        env = {
            **os.environ,
            "PATH": _path_with_our_bin(),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            **self.env,
        }
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not ready after {timeout} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, 15)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, 9)
                self._process.wait()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EmbeddedRegistry:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _path_with_our_bin() -> str:
    return os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


def iris_frame() -> Any:
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True)
    return frame.data, frame.target


def register_iris_version(tracking_uri: str, name: str, strength: float = 1.0) -> str:
    """Train a small iris classifier and register it as a new version of `name`, with an input
    example (so the sidecar can warm it up). `strength` (LogisticRegression's C) makes versions
    differ. Returns the version number."""
    import mlflow
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(tracking_uri)
    features, target = iris_frame()
    model = LogisticRegression(C=strength, max_iter=500).fit(features, target)
    mlflow.set_experiment("mlflow-bluegreen")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model, name="model", registered_model_name=name, input_example=features.iloc[:3]
        )
    return str(info.registered_model_version)


def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(name, alias, version)
