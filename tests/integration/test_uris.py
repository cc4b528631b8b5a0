"""Every kind of URI the issue names: stage, latest, alias errors, and fixed URIs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlflow_bluegreen.proxy.demo import SidecarProcess
from mlflow_bluegreen.proxy.loadgen import IRIS_PAYLOAD
from mlflow_bluegreen.worker.sandbox import iris_frame, register_iris_version

from .conftest import Registry

pytestmark = pytest.mark.integration


def predict(sidecar: SidecarProcess) -> tuple[int, str | None, bytes]:
    import urllib.request

    request = urllib.request.Request(
        sidecar.url + "/invocations",
        data=IRIS_PAYLOAD,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers.get("X-Model-Version"), response.read()


def test_stage_uri_serves_the_latest_version_in_that_stage(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    from mlflow import MlflowClient

    first, _second = registry.iris_versions
    client = MlflowClient(registry.uri)
    client.transition_model_version_stage("iris", first, "Production")
    sidecar = start_sidecar("models:/iris/production")  # stage names match case-insensitively
    sidecar.wait_active(first, timeout=120)
    status, version, _ = predict(sidecar)
    assert (status, version) == (200, first)
    assert sidecar.status()["tracked"] is True
    assert "deprecated" in sidecar.log_text()  # stages are supported, with a warning


def test_latest_uri_follows_new_registrations(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    first = register_iris_version(registry.uri, "iris-latest", 1.0)
    sidecar = start_sidecar("models:/iris-latest/latest", "--poll-interval", "0.5")
    sidecar.wait_active(first, timeout=120)
    second = register_iris_version(registry.uri, "iris-latest", 0.1)
    sidecar.wait_active(second, timeout=120)
    assert predict(sidecar)[1] == second


def test_pinned_version_is_fixed_and_not_polled(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    first, _ = registry.iris_versions
    sidecar = start_sidecar("models:/iris/" + first, "--poll-interval", "0.2")
    sidecar.wait_active(first, timeout=120)
    before = sidecar.status()["registry"]["last_success"]
    time.sleep(1)
    status = sidecar.status()
    assert status["tracked"] is False
    assert status["registry"]["last_success"] == before
    assert status["active"]["model_uri"] == f"models:/iris/{first}"
    assert predict(sidecar)[:2] == (200, first)


def test_local_model_directory_is_served_with_its_uuid_as_version(
    start_sidecar: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    """Seed scenario I: a model on local disk and the dependencies of this environment."""
    import mlflow.sklearn
    import yaml
    from sklearn.linear_model import LogisticRegression

    features, target = iris_frame()
    path = tmp_path / "iris-model"
    mlflow.sklearn.save_model(
        LogisticRegression(max_iter=500).fit(features, target),
        str(path),
        input_example=features.iloc[:2],
    )
    uuid = yaml.safe_load((path / "MLmodel").read_text())["model_uuid"]
    sidecar = start_sidecar(str(path))
    sidecar.wait_active(uuid, timeout=120)
    status, version, body = predict(sidecar)
    assert (status, version) == (200, uuid)
    assert json.loads(body)["predictions"] == [0, 1]


def test_alias_that_does_not_exist_stops_the_sidecar_with_a_clear_message(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    sidecar = start_sidecar("models:/iris@no-such-alias")
    assert sidecar.process.wait(60) == 2
    log = sidecar.log_text()
    assert "cannot serve models:/iris@no-such-alias" in log
    assert "no-such-alias" in log


def test_before_the_first_worker_is_ready_the_public_port_says_503(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    first, _ = registry.iris_versions
    sidecar = start_sidecar(f"models:/iris/{first}")
    sidecar.wait_until(lambda status: status["swap_in_progress"] is not None, 60, "a swap")
    code, body = sidecar.get("/ping")
    assert code == 503
    assert json.loads(body)["error_code"] == "TEMPORARILY_UNAVAILABLE"
    sidecar.wait_active(first, timeout=120)
    assert sidecar.get("/ping")[0] == 200
