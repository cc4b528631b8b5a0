"""Seed scenarios II and IV: the model's dependencies built by a non-local env manager.

Each test builds into its own MLFLOW_ENV_ROOT, so it proves a build from nothing rather than
reusing an environment another test or run left behind (uv's and pip's download caches still
make the second build of a run cheap). conda is not covered: it is not installed here and its
channels are out of reach offline; only PyPI is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlflow_bluegreen.proxy.demo import SidecarProcess
from mlflow_bluegreen.proxy.loadgen import IRIS_PAYLOAD, LoadResult, closed_loop
from mlflow_bluegreen.worker.sandbox import iris_frame, register_iris_version, set_alias
from mlflow_bluegreen.worker.spec import WorkerSpec, free_port

from .conftest import Registry
from .test_transparency import SAME_HASH_SEED, assert_same_answers, exchange

pytestmark = pytest.mark.integration

# The first build downloads mlflow, scikit-learn, pandas and the rest into the new environment:
# ~15 s with uv and ~80 s with virtualenv (pip) on an idle machine, a few times that when the
# two cores are busy, and the new worker's first boot compiles their bytecode.
BUILD_TIMEOUT = 480.0

# Not among the packages an iris model needs (a dependency of the sidecar, so known to
# resolve): a version that asks for it needs an environment of its own.
EXTRA_REQUIREMENT = ("prometheus-client", "prometheus_client")


def worker_path() -> str:
    """The PATH our workers get: where MLflow looks for uv and pyenv."""
    return WorkerSpec(base_env=dict(os.environ)).environment()["PATH"]


def without_pyenv_shims(path: str) -> str:
    """`path` less pyenv's shims. uv finds a Python in them only while pyenv's global version
    happens to be the model's; a sidecar image has none, and the build must not depend on them."""
    return os.pathsep.join(p for p in path.split(os.pathsep) if Path(p).name != "shims")


def environment_for(env_manager: str, root: Path) -> dict[str, str]:
    env = {"MLFLOW_ENV_ROOT": str(root)}
    if env_manager == "uv":
        env["PATH"] = without_pyenv_shims(os.environ.get("PATH", ""))
    return env


def require(env_manager: str) -> None:
    path = worker_path()
    if env_manager == "uv":
        if shutil.which("uv", path=path) is None:
            pytest.skip("uv is not installed (pip install uv)")
        return
    # virtualenv: MLflow runs `pyenv install --skip-existing <the model's Python>`, which offline
    # works only when pyenv already has that version (it would download and compile it).
    pyenv = shutil.which("pyenv", path=path)
    if pyenv is None:
        pytest.skip("--env-manager virtualenv needs pyenv on PATH")
    root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=True)
    version = platform.python_version()
    if not (Path(root.stdout.strip()) / "versions" / version).is_dir():
        pytest.skip(f"pyenv has no Python {version} installed and cannot download one offline")


def save_iris_model(path: Path) -> str:
    """A model on local disk, as scenario II serves it; returns its UUID (its version)."""
    import mlflow.sklearn
    import yaml
    from sklearn.linear_model import LogisticRegression

    features, target = iris_frame()
    mlflow.sklearn.save_model(
        LogisticRegression(max_iter=500).fit(features, target),
        str(path),
        input_example=features.iloc[:2],
    )
    return str(yaml.safe_load((path / "MLmodel").read_text())["model_uuid"])


def register_iris_needing(tracking_uri: str, name: str, requirement: str) -> str:
    """Like register_iris_version, with one more pip requirement: a different environment."""
    import mlflow
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(tracking_uri)
    features, target = iris_frame()
    mlflow.set_experiment("mlflow-bluegreen-tests")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            LogisticRegression(C=0.5, max_iter=500).fit(features, target),
            name="model",
            registered_model_name=name,
            input_example=features.iloc[:3],
            extra_pip_requirements=[requirement],
        )
    return str(info.registered_model_version)


def predict(sidecar: SidecarProcess) -> tuple[int, str | None, bytes]:
    request = urllib.request.Request(
        sidecar.url + "/invocations",
        data=IRIS_PAYLOAD,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.headers.get("X-Model-Version"), response.read()


def built_envs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("mlflow-"))


def serving_env(worker_pid: int, root: Path) -> Path:
    """The environment under `root` whose interpreter runs the worker's scoring server.

    The worker's process group is `mlflow models serve` (our interpreter) and the uvicorn it
    execs inside the activated environment, whose script runs with that environment's python."""
    for env in built_envs(root):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) != worker_pid:
                    continue
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # exited while we looked
            if argv and argv[0].decode(errors="replace").startswith(f"{env}/"):
                return env
    raise AssertionError(f"no process of worker group {worker_pid} runs from {root}")


def wait_spare_beside_active(sidecar: SidecarProcess) -> None:
    """Until a spare is ready in the environment the active version is served in."""

    def ready(status: dict[str, Any]) -> bool:
        spare, active = status.get("spare") or {}, status.get("active") or {}
        return bool(spare.get("ready") and spare.get("alive")) and (
            spare.get("environment") == active.get("environment") is not None
        )

    sidecar.wait_until(ready, BUILD_TIMEOUT, "a spare where the active version is served")


def swap_to(status: dict[str, Any], version: str) -> dict[str, Any]:
    return next(h for h in status["history"] if h["to"] == version)


def wait_serving(sidecar: SidecarProcess, version: str) -> None:
    """wait_active, but a failed build fails the test at once with its error: the sidecar would
    retry it only minutes later."""

    def settled(status: dict[str, Any]) -> bool:
        active = status.get("active") or {}
        if active.get("version") == version and not status["swap_in_progress"]:
            return True
        return any(h["to"] == version and h["result"] == "failed" for h in status["history"])

    sidecar.wait_until(settled, BUILD_TIMEOUT, f"version {version} active or failed")
    failed = [h for h in sidecar.status()["history"] if h["result"] == "failed"]
    assert not failed, [(h["to"], h["error"], h["output"][-5:]) for h in failed]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("env_manager", ["uv", "virtualenv"])
def test_local_model_is_served_from_an_environment_built_at_start(
    env_manager: str, start_sidecar: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    """Seed scenario II: `serve -m ./model --env-manager uv|virtualenv`, where Python may not
    write bytecode (as in our image): the environment must come with it, or every boot of
    every version compiles MLflow and scikit-learn again."""
    require(env_manager)
    model = tmp_path / "iris-model"
    uuid = save_iris_model(model)
    root = tmp_path / "envs"
    env = {**environment_for(env_manager, root), "PYTHONDONTWRITEBYTECODE": "1"}
    sidecar = start_sidecar(str(model), "--env-manager", env_manager, env=env)
    wait_serving(sidecar, uuid)

    status, version, body = predict(sidecar)
    assert (status, version) == (200, uuid)
    assert json.loads(body)["predictions"] == [0, 1]
    state = sidecar.status()
    swap = swap_to(state, uuid)
    # A local model is served in place: its environment is built, nothing is downloaded.
    assert "prepare_env" in swap["steps"] and "download" not in swap["steps"]
    assert state["active"]["served_from"] == str(model)
    envs = built_envs(root)
    assert len(envs) == 1
    assert serving_env(state["active"]["pid"], root) == envs[0]
    # Started in it directly, as the activated command would run, not through the CLI.
    assert (state["active"]["launch"], state["active"]["environment"]) == ("direct", str(envs[0]))
    assert list(envs[0].glob("lib/python*/site-packages/mlflow/__pycache__/*.pyc")), envs[0]
    print(f"{env_manager}: environment built in {swap['steps']['prepare_env']:.1f} s")
    assert sidecar.stop() == 0


@pytest.mark.timeout(900)
def test_registry_alias_moves_build_each_version_environment_without_failed_requests(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    """Seed scenario IV: `serve -m models:/name@alias --env-manager uv`, the alias moved twice
    under load: to a version with the same requirements (its environment is reused, and its
    worker starts in the spare waiting there), then to one that needs another package (a new
    environment, built while the old version serves; the spare in the old one is no use)."""
    require("uv")
    name, alias = "iris-uv", "live"
    first = register_iris_version(registry.uri, name, 1.0)
    same = register_iris_version(registry.uri, name, 0.05)
    package, module = EXTRA_REQUIREMENT
    other = register_iris_needing(registry.uri, name, package)
    set_alias(registry.uri, name, alias, first)
    root = tmp_path / "envs"
    sidecar = start_sidecar(
        f"models:/{name}@{alias}",
        "--env-manager", "uv",
        "--poll-interval", "1",
        env=environment_for("uv", root),
    )  # fmt: skip
    wait_serving(sidecar, first)
    assert len(built_envs(root)) == 1

    started: dict[str, dict[str, Any]] = {}  # each version's worker as it began serving

    async def scenario() -> LoadResult:
        stop = asyncio.Event()
        load = asyncio.create_task(closed_loop(f"{sidecar.url}/invocations", stop, concurrency=2))
        for target in (same, other):
            await asyncio.to_thread(wait_spare_beside_active, sidecar)
            await asyncio.to_thread(set_alias, registry.uri, name, alias, target)
            await asyncio.to_thread(wait_serving, sidecar, target)
            started[target] = sidecar.status()["active"]
        await asyncio.to_thread(wait_spare_beside_active, sidecar)
        stop.set()
        return await load

    result = asyncio.run(scenario())
    assert result.failures == [], result.describe_failures()
    served = result.by_version()
    assert set(served) == {first, same, other}, served

    state = sidecar.status()
    for version in (first, same, other):
        swap = swap_to(state, version)
        assert swap["result"] == "succeeded"
        assert {"download", "prepare_env"} <= swap["steps"].keys(), swap["steps"]
    assert state["active"]["model_uri"] == f"models:/{name}/{other}"
    assert predict(sidecar)[:2] == (200, other)
    # Three versions, two sets of requirements: `same` reused the first environment.
    envs = built_envs(root)
    assert len(envs) == 2, envs
    active_env = serving_env(state["active"]["pid"], root)
    assert list(active_env.glob(f"lib/python*/site-packages/{module}")), active_env
    first_env = next(env for env in envs if env != active_env)
    # `same` needs what `first` needed: the spare made in that environment served it ...
    assert (started[same]["launch"], started[same]["environment"]) == ("spare", str(first_env))
    # ... and `other` needs another: it started directly in its own, and the spare left there
    # for `same` was stopped rather than used; a new one waits where `other` is served now.
    assert (started[other]["launch"], started[other]["environment"]) == ("direct", str(active_env))
    assert "this version's requirements are served from" in sidecar.log_text()
    assert state["spare"]["environment"] == str(active_env) and state["spare"]["used"] == 1
    print(
        f"uv: first build {swap_to(state, first)['steps']['prepare_env']:.1f} s, "
        f"reused {swap_to(state, same)['steps']['prepare_env']:.1f} s, "
        f"second build {swap_to(state, other)['steps']['prepare_env']:.1f} s; "
        f"{len(result.outcomes)} requests, {len(result.failures)} failed"
    )
    assert sidecar.stop() == 0


@contextlib.contextmanager
def plain_serve(model_uri: str, env_manager: str, env: dict[str, str]) -> Iterator[int]:
    """A plain `mlflow models serve --env-manager ...` of `model_uri`, with our workers'
    environment (`env` on top): its port, once it answers /ping."""
    spec = WorkerSpec(env_manager=env_manager, direct=False, base_env={**os.environ, **env})
    port = free_port()
    process = subprocess.Popen(
        spec.command(model_uri, port),
        env=spec.environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + BUILD_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if exchange(port, "GET", "/ping", None, b"")[0] == 200:
                    break
            except OSError:
                time.sleep(0.3)
        else:
            raise AssertionError(f"mlflow models serve exited with {process.returncode} or hung")
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


@pytest.mark.timeout(900)
def test_in_a_uv_environment_workers_answer_as_mlflow_models_serve_does(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    """Started directly in the environment, then from the spare waiting there: every answer is
    the one a plain `mlflow models serve --env-manager uv` of the same version gives."""
    require("uv")
    name = "iris-uv-plain"
    first = register_iris_version(registry.uri, name, 1.0)
    second = register_iris_version(registry.uri, name, 0.05)
    set_alias(registry.uri, name, "live", first)
    env = {**environment_for("uv", tmp_path / "envs"), **SAME_HASH_SEED}
    sidecar = start_sidecar(
        f"models:/{name}@live", "--env-manager", "uv", "--poll-interval", "0.5", env=env
    )
    wait_serving(sidecar, first)
    assert sidecar.status()["active"]["launch"] == "direct"
    plain_env = {**env, "MLFLOW_TRACKING_URI": registry.uri}
    with plain_serve(f"models:/{name}/{first}", "uv", plain_env) as port:
        assert assert_same_answers(port, sidecar, first) >= {200, 400, 404, 405, 415}
    wait_spare_beside_active(sidecar)
    set_alias(registry.uri, name, "live", second)
    wait_serving(sidecar, second)
    assert sidecar.status()["active"]["launch"] == "spare"
    with plain_serve(f"models:/{name}/{second}", "uv", plain_env) as port:
        assert_same_answers(port, sidecar, second)
