"""`mlflow-bluegreen status | reload | rollback | resume` against a real sidecar's admin port:
the words an operator reads, the JSON a script reads, and the exit codes both rely on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

from mlflow_bluegreen.proxy.demo import SidecarProcess

from .conftest import Registry

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "mlflow_bluegreen.proxy.cli"]
TOKEN = "operator-s3cret"
ALIAS = "operator"  # its own alias of the session's iris model: no other test follows it


def cli(
    *args: str, token: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_BLUEGREEN_")}
    if token:
        env["MLFLOW_BLUEGREEN_ADMIN_TOKEN"] = token
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def move_alias(registry: Registry, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=registry.uri).set_registered_model_alias("iris", ALIAS, version)


def test_an_unreachable_admin_port_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        for command in (["status"], ["reload"], ["status", "--watch"]):
            result = cli(*command, "--admin-url", url)
            assert result.returncode == 3, (command, result)
            assert f"cannot reach the sidecar's admin port at {url}" in result.stderr
            assert "Traceback" not in result.stderr
        result = cli("status", "--json", "--admin-url", url)
        assert result.returncode == 3
        assert "cannot reach" in json.loads(result.stdout)["error"]


def test_an_operator_follows_a_rollout_rolls_it_back_and_resumes(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    first, second = registry.iris_versions
    move_alias(registry, first)
    sidecar = start_sidecar(
        f"models:/iris@{ALIAS}", "--linger", "300", "--poll-interval", "0.5",
        "--admin-token", TOKEN,
    )  # fmt: skip
    sidecar.wait_active(first)
    admin = ("--admin-url", sidecar.admin_url)

    shown = cli("status", *admin)
    assert shown.returncode == 0, shown.stderr
    assert f"model:      models:/iris@{ALIAS} (tracked)" in shown.stdout
    assert f"active:     version {first} (slot " in shown.stdout
    assert f"registry:   ok, names version {first}" in shown.stdout
    assert f"- → {first}: succeeded in " in shown.stdout
    assert "resolve " in shown.stdout and "ready " in shown.stdout  # the swap's steps

    as_json = cli("status", "--json", *admin)
    assert json.loads(as_json.stdout)["active"]["version"] == first

    # Nothing lingers before the first swap away: 409, said plainly, exit 1.
    refused = cli("rollback", *admin, token=TOKEN)
    assert refused.returncode == 1, refused
    assert "nothing to roll back to" in refused.stderr
    # POSTs need the token: without it, 401 and exit 4; reads do not.
    unauthorized = cli("reload", *admin)
    assert unauthorized.returncode == 4, unauthorized
    assert "admin token is missing or wrong" in unauthorized.stderr

    move_alias(registry, second)
    reloaded = cli("reload", *admin, "--admin-token", TOKEN)
    assert reloaded.returncode == 0, reloaded.stderr
    assert f"the registry names version {second}" in reloaded.stdout

    watched = cli("status", "--watch", "--interval", "0.2", *admin, timeout=300)
    assert watched.returncode == 0, (watched.stdout, watched.stderr)
    assert f"{first} → {second}: " in watched.stdout  # at least one step seen in progress
    assert f"{first} → {second}: succeeded in " in watched.stdout
    assert watched.stdout.rstrip().endswith(f"serving version {second}: rollout complete")

    rolled_back = cli("rollback", *admin, token=TOKEN)
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert f"rolled back: serving version {first}, pinned" in rolled_back.stdout
    pinned = cli("status", *admin)
    assert f"pinned:     version {first} by a rollback" in pinned.stdout
    # While pinned, the rollout has ended on the pinned version.
    assert cli("status", "--watch", *admin).returncode == 0

    resumed = cli("resume", "--json", *admin, token=TOKEN)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed"] is True
    back = cli("status", "--watch", "--json", "--interval", "0.2", *admin, timeout=300)
    assert back.returncode == 0, back.stderr
    final = json.loads(back.stdout)
    assert (final["result"], final["active"]["version"], final["pinned"]) == ("ok", second, None)
