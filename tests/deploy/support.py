"""What the deploy tests share: where the deploy files are, and our real CLI's parser."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import click
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mlflow_bluegreen.proxy import logs as logs_module
from mlflow_bluegreen.proxy import sidecar as sidecar_module
from mlflow_bluegreen.proxy.admin.metrics import Metrics
from mlflow_bluegreen.proxy.cli import ENV_PREFIX, apply_adsp_http_options, main
from mlflow_bluegreen.proxy.config import Config
from mlflow_bluegreen.worker.tracking.registry import CLIENT_ENV_DEFAULTS

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "mlflow-bluegreen"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"

SERVE: click.Command = main.commands["serve"]


def cli_env_vars() -> set[str]:
    """Every MLFLOW_BLUEGREEN_* variable the real `serve` command reads."""
    names: set[str] = set()
    for param in SERVE.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            names.add(envvar)
        elif envvar:
            names.update(envvar)
    return names


def parse_serve(
    monkeypatch: pytest.MonkeyPatch, args: Iterable[str] = (), env: Mapping[str, str] = {}
) -> dict[str, Any]:
    """Parse `mlflow-bluegreen serve ARGS` under ENV with the real click command, as the
    process would (option callbacks included), and return the options `serve` would run with.
    Nothing is started."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with SERVE.make_context("serve", list(args)) as ctx:
        options = dict(ctx.params)
    apply_adsp_http_options(options)
    return options


def start_serve(
    monkeypatch: pytest.MonkeyPatch, args: Iterable[str] = (), env: Mapping[str, str] = {}
) -> Config:
    """Run the real `mlflow-bluegreen serve ARGS` under ENV up to the moment it would start the
    sidecar, and return the Config it would start it with. Everything `serve` checks after
    parsing (the admin token off loopback, the Config it builds) runs unchanged: only the
    sidecar itself and the log setup are replaced. Raises click.UsageError (or whatever else
    the command raises) where the real process would exit with an error instead of serving."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # `serve` writes these into the process environment for MLflow; the test process must get
    # its own values back afterwards. setenv-then-delenv makes monkeypatch remember "unset".
    for name in ("MLFLOW_TRACKING_URI", *CLIENT_ENV_DEFAULTS):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.setenv(name, "")
            monkeypatch.delenv(name)

    started: list[Config] = []

    async def no_sidecar(config: Config) -> int:
        started.append(config)
        return 0

    monkeypatch.setattr(sidecar_module, "serve", no_sidecar)
    # The real one replaces the root logger's handlers, which pytest's capture relies on.
    monkeypatch.setattr(logs_module, "setup_logging", lambda *_args, **_kwargs: None)
    with pytest.raises(SystemExit) as exited:
        main.main(["serve", *args], prog_name="mlflow-bluegreen", standalone_mode=False)
    assert exited.value.code == 0
    (config,) = started
    return config


def dockerfile_instructions(
    path: Path = DOCKERFILE, *, last_stage: bool = True
) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile's last stage (or all of it), continuation lines
    joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stage: list[tuple[str, str]] = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM" and last_stage:
            stage = []
        stage.append((instruction.upper(), rest.strip()))
    return stage


def dockerfile_env(path: Path = DOCKERFILE) -> dict[str, str]:
    """The ENV of the image the Dockerfile builds (its last stage)."""
    env: dict[str, str] = {}
    for instruction, rest in dockerfile_instructions(path):
        if instruction == "ENV":
            for word in shlex.split(rest):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def executable(name: str) -> str | None:
    """A tool installed in our virtualenv (pip packages ship binaries there), or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; CI installs it)")
    return found


def exposition() -> str:
    """The sidecar's /metrics text, from its real Metrics class. Histograms show their buckets
    once something was observed."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, in_flight=lambda: 0)
    metrics.observe_request("POST", 200, 0.01)
    metrics.swap_duration.observe(1)
    return generate_latest(registry).decode()


def exported_names() -> set[str]:
    """Every series name a query may use: the sample names, and for each family declared (even
    one without a sample yet, like a labelled counter) the names its type produces."""
    names: set[str] = set()
    for line in exposition().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split()[0])
    return names
