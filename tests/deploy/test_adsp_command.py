"""The ADSP `serve` command run for real, as anaconda-project runs it: `/bin/sh -c "<command>
<http options>"` in the project directory, then SIGTERM to that process when the platform stops
the deployment. The sidecar must be that process (`exec`), drain, exit 0, and leave nothing
running: no worker, no uvicorn, no shell.

Also the variables as anaconda-project reads them: every listed variable is required, and an
empty value counts as unset, so an empty default blocks `prepare` and `run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .adsp_run import (
    PROJECT_FILE,
    ProjectCommand,
    free_port,
    load_project,
    project_env,
    save_iris_model,
    sigterm_leaves_nothing,
)

# What the deployer gives; everything else must come from a non-empty default.
SUPPLIED = {"MLFLOW_BLUEGREEN_MODEL_URI", "MLFLOW_TRACKING_URI"}


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    return load_project()


def test_no_variable_blocks_prepare_with_an_empty_default(project: dict[str, Any]) -> None:
    for name, spec in project["variables"].items():
        options = spec or {}
        if name in SUPPLIED:
            assert "default" not in options, name
        else:
            # anaconda-project: `if value == "": value = None`, then "is not set".
            assert str(options.get("default", "")) != "", f"{name}: empty or no default blocks run"
    # A registry without authentication must work: the token is not a required variable.
    assert "MLFLOW_TRACKING_TOKEN" not in project["variables"]


def test_the_command_execs_the_sidecar(project: dict[str, Any]) -> None:
    unix = project["commands"]["serve"]["unix"]
    assert unix.split()[:3] == ["exec", "mlflow-bluegreen", "serve"], unix


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("adsp-model") / "iris"
    save_iris_model(path)
    return path


def test_sigterm_to_the_command_stops_the_sidecar_and_its_workers(
    project: dict[str, Any], model: Path, tmp_path: Path
) -> None:
    command = ProjectCommand(
        project["commands"]["serve"]["unix"],
        project_dir=PROJECT_FILE.parent,
        # Another admin port than 8081, which something else on this machine may hold.
        env=project_env(model, MLFLOW_BLUEGREEN_ADMIN_PORT=str(free_port())),
        log_path=tmp_path / "serve.log",
    )
    try:
        assert command.wait_scoring().startswith(b'{"predictions"')
        sigterm_leaves_nothing(command)
    finally:
        command.kill_leftovers()
