"""The ADSP project: its `serve` command, run the way anaconda-project runs it on the platform,
is accepted by our real CLI and listens where the platform says."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
import yaml

from mlflow_bluegreen.proxy.cli import ENV_PREFIX

from .support import DEPLOY, cli_env_vars, parse_serve, start_serve

PROJECT = DEPLOY / "adsp" / "anaconda-project.yml"

# What anaconda-project appends to a command with `supports_http_options: true` when the
# platform deploys it.
HTTP_OPTIONS = [
    "--anaconda-project-port", "8086",
    "--anaconda-project-address", "0.0.0.0",
    "--anaconda-project-host", "mlflow-abc123.adsp.example.com",
    "--anaconda-project-host", "localhost:8086",
    "--anaconda-project-url-prefix", "/",
    "--anaconda-project-iframe-hosts", "https://adsp.example.com",
    "--anaconda-project-no-browser",
    "--anaconda-project-use-xheaders",
]  # fmt: skip


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PROJECT.read_text())
    return loaded


def _serve_args(project: dict[str, Any]) -> list[str]:
    argv = shlex.split(project["commands"]["serve"]["unix"])
    assert argv[:3] == ["exec", "mlflow-bluegreen", "serve"]
    return argv[3:]


def _variables_env(project: dict[str, Any]) -> dict[str, str]:
    """The environment anaconda-project gives the command: defaults, plus the values the
    deployer must supply for the variables without one."""
    supplied = {
        "MLFLOW_BLUEGREEN_MODEL_URI": "models:/iris@champion",
        "MLFLOW_TRACKING_URI": "https://mlflow.adsp.example.com",
    }
    env = {}
    for name, spec in project["variables"].items():
        if name in supplied:
            env[name] = supplied[name]
        else:
            assert "default" in spec, f"{name} has no default and the test supplies none"
            env[name] = str(spec["default"])
    return env


def test_serve_command_takes_http_options(project: dict[str, Any]) -> None:
    serve = project["commands"]["serve"]
    assert serve["supports_http_options"] is True
    assert serve["env_spec"] in project["env_specs"]


def test_platform_options_decide_where_the_public_port_listens(
    project: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    options = parse_serve(
        monkeypatch, [*_serve_args(project), *HTTP_OPTIONS], _variables_env(project)
    )
    assert options["host"] == "0.0.0.0"
    assert options["port"] == 8086
    assert options["model_uri"] == "models:/iris@champion"
    # The admin port stays on the session's loopback.
    assert options["admin_host"] == "127.0.0.1"
    assert not any(name.startswith("anaconda_project_") for name in options)


def test_command_runs_without_the_platform_options(
    project: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `anaconda-project run serve` on a laptop passes none of them.
    options = parse_serve(monkeypatch, _serve_args(project), _variables_env(project))
    assert (options["host"], options["port"]) == ("127.0.0.1", 8080)


@pytest.mark.parametrize("platform", [True, False], ids=["deployed", "local-run"])
def test_the_sidecar_starts_as_the_platform_runs_it(
    project: dict[str, Any], monkeypatch: pytest.MonkeyPatch, platform: bool
) -> None:
    # The real `serve` command with every check it makes before starting the sidecar: with the
    # admin port on loopback it needs no token, which the project does not provide.
    args = [*_serve_args(project), *(HTTP_OPTIONS if platform else [])]
    config = start_serve(monkeypatch, args, _variables_env(project))
    assert config.admin_host == "127.0.0.1"
    assert config.admin_token is None
    assert config.model_uri == "models:/iris@champion"


def test_variables_are_ones_the_sidecar_or_mlflow_reads(project: dict[str, Any]) -> None:
    variables = project["variables"]
    assert {"MLFLOW_BLUEGREEN_MODEL_URI", "MLFLOW_TRACKING_URI"} <= set(variables)
    for name in variables:
        if name.startswith(ENV_PREFIX):
            assert name in cli_env_vars(), name
    # Model and server have no default: the deployer must give them. The token is not listed
    # (see test_adsp_command.py); the project file shows how to add it, encrypted.
    assert "default" not in variables["MLFLOW_BLUEGREEN_MODEL_URI"]
    assert "default" not in variables["MLFLOW_TRACKING_URI"]
    assert "#   MLFLOW_TRACKING_TOKEN:\n" in PROJECT.read_text()
    assert "#     encrypted: true\n" in PROJECT.read_text()


def test_env_spec_installs_our_package_on_python_311(project: dict[str, Any]) -> None:
    packages = project["env_specs"]["default"]["packages"]
    assert "python=3.11" in packages
    pip = next(p["pip"] for p in packages if isinstance(p, dict) and "pip" in p)
    assert "mlflow-bluegreen" in pip
