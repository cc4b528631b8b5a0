"""How a scoring server is launched: directly, exactly as `mlflow models serve` would start it,
where that is what it would do; through the CLI otherwise."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from mlflow.pyfunc import scoring_server

from mlflow_bluegreen.worker.model.venv import PreparedEnv
from mlflow_bluegreen.worker.spec import MODEL_PATH_VARIABLE, WorkerSpec


@pytest.mark.parametrize("workers", [1, 3])
def test_a_local_model_starts_as_mlflows_own_command_would(tmp_path: Path, workers: int) -> None:
    spec = WorkerSpec(workers=workers, timeout=42, base_env={"PATH": "/usr/bin"})
    command = spec.command(str(tmp_path), 5123)
    env = spec.server_environment(str(tmp_path))
    theirs, their_env = scoring_server.get_cmd(str(tmp_path), 5123, "127.0.0.1", 42, workers)
    # Theirs runs `uvicorn` from PATH, the one beside our interpreter: ours is `python -m`.
    assert command[:3] == [sys.executable, "-m", "uvicorn"]
    assert command[3:] == shlex.split(theirs)[1:]
    for name in (MODEL_PATH_VARIABLE, "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"):
        assert env[name] == their_env[name]


@pytest.mark.parametrize(
    ("spec", "uri"),
    [
        (WorkerSpec(), "models:/iris/3"),  # not downloaded first: the CLI fetches it
        (WorkerSpec(env_manager="uv"), "/tmp/model"),  # its environment was not found
        (WorkerSpec(env_manager="conda"), "/tmp/model"),  # conda activates in ways of its own
        (WorkerSpec(direct=False), "/tmp/model"),
    ],
)
def test_otherwise_it_goes_through_mlflow_models_serve(spec: WorkerSpec, uri: str) -> None:
    command = spec.command(uri, 5123)
    assert command[1:5] == ["-m", "mlflow", "models", "serve"]
    assert command[command.index("--model-uri") + 1] == uri
    assert MODEL_PATH_VARIABLE not in spec.server_environment(uri)


def venv_at(directory: Path, uvicorn: bool = True) -> PreparedEnv:
    (directory / "bin").mkdir(parents=True)
    if uvicorn:
        (directory / "bin" / "uvicorn").write_text("#!/bin/sh\n")
    sets = {"VIRTUAL_ENV": str(directory), "PATH": f"{directory}/bin:/usr/bin"}
    return PreparedEnv(directory, sets, frozenset({"PYTHONHOME"}))


@pytest.mark.parametrize("env_manager", ["uv", "virtualenv"])
def test_in_a_virtual_environment_it_starts_as_the_activated_command_would(
    tmp_path: Path, env_manager: str
) -> None:
    spec = WorkerSpec(env_manager=env_manager, timeout=42, base_env={"PATH": "/usr/bin"})
    venv = venv_at(tmp_path / "env")
    model = str(tmp_path / "model")
    command = spec.command(model, 5123, venv)
    theirs, their_env = scoring_server.get_cmd(model, 5123, "127.0.0.1", 42, 1)
    # Theirs: `source <env>/bin/activate && exec uvicorn ...`, the environment's uvicorn.
    assert command[:3] == [str(tmp_path / "env" / "bin" / "python"), "-m", "uvicorn"]
    assert command[3:] == shlex.split(theirs)[1:]
    env = spec.server_environment(model, venv)
    assert env["VIRTUAL_ENV"] == str(tmp_path / "env")
    assert env["PATH"] == f"{tmp_path}/env/bin:/usr/bin"
    for name in (MODEL_PATH_VARIABLE, "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"):
        assert env[name] == their_env[name]


def test_a_virtual_environment_without_uvicorn_goes_through_the_cli(tmp_path: Path) -> None:
    """`exec uvicorn` there would run whichever uvicorn is next on PATH: the CLI finds out."""
    spec = WorkerSpec(env_manager="uv")
    venv = venv_at(tmp_path / "env", uvicorn=False)
    assert spec.command(str(tmp_path), 5123, venv)[1:5] == ["-m", "mlflow", "models", "serve"]
    assert "VIRTUAL_ENV" not in spec.server_environment(str(tmp_path), venv)
