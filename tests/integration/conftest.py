"""A real `mlflow server` (SQLite in a temp dir) with real registered models, for the whole run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlflow_bluegreen.proxy.demo import SidecarProcess
from mlflow_bluegreen.worker.sandbox import EmbeddedRegistry, register_iris_version, set_alias

MODELS = Path(__file__).parent / "models"


@dataclass(frozen=True)
class Registry:
    uri: str
    iris_versions: tuple[str, str]


def register_from_code(
    tracking_uri: str,
    name: str,
    code: str,
    example: object = None,
    config: dict[str, object] | None = None,
) -> str:
    """Register a pyfunc defined in tests/integration/models/<code>.py as a new version, with
    `config` as its model_config."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("mlflow-bluegreen-tests")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODELS / f"{code}.py"),
            registered_model_name=name,
            input_example=example,
            model_config=config,
        )
    return str(info.registered_model_version)


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    with EmbeddedRegistry() as server:
        os.environ["MLFLOW_TRACKING_URI"] = server.uri
        first = register_iris_version(server.uri, "iris", 1.0)
        second = register_iris_version(server.uri, "iris", 0.05)
        set_alias(server.uri, "iris", "champion", first)
        yield Registry(server.uri, (first, second))


@pytest.fixture
def start_sidecar(
    registry: Registry, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., SidecarProcess]]:
    started: list[SidecarProcess] = []

    def start(
        model_uri: str, *args: str, tracking_uri: str | None = None, **options: object
    ) -> SidecarProcess:
        sidecar = SidecarProcess(
            model_uri,
            tracking_uri=tracking_uri or registry.uri,
            extra_args=args,
            log_path=tmp_path / f"sidecar-{len(started)}.log",
            **options,  # type: ignore[arg-type]
        )
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        sidecar.stop()
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            print(f"--- {sidecar.log_path} ---\n{sidecar.log_text()[-5000:]}")
    # Keep the logs of a failed test only.
    if not getattr(request.node, "rep_call", None) or request.node.rep_call.passed:
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
