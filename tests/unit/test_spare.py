"""The spare's bookkeeping without its process: what makes it stale, what it says when ready,
and when one is used at all."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from mlflow_bluegreen.worker.model.venv import PreparedEnv
from mlflow_bluegreen.worker.spare import (
    Spare,
    SpareKeeper,
    installed_fingerprint,
    installed_mlflow,
)
from mlflow_bluegreen.worker.spare_main import READY
from mlflow_bluegreen.worker.spec import WorkerSpec


def test_the_fingerprint_follows_the_workers_environment() -> None:
    base = installed_fingerprint({"PATH": "/usr/bin"})
    assert installed_fingerprint({"PATH": "/usr/bin"}) == base
    assert installed_fingerprint({"PATH": "/usr/bin", "X": "1"}) != base


def test_a_spare_is_ready_when_it_says_so_and_keeps_its_other_lines() -> None:
    spare = Spare(process=None, fingerprint="f")  # type: ignore[arg-type]
    spare.note("some warning")
    assert not spare.ready.is_set()
    spare.note(f"{READY} {json.dumps({'mlflow': '3.17.2'})}")
    assert spare.ready.is_set() and spare.mlflow == "3.17.2"
    assert spare.lines == ["some warning"]


def test_only_a_direct_single_worker_start_can_use_a_spare() -> None:
    assert SpareKeeper(WorkerSpec()).eligible("/models/iris")
    assert not SpareKeeper(WorkerSpec(), enabled=False).eligible("/models/iris")
    assert not SpareKeeper(WorkerSpec(workers=2)).eligible("/models/iris")
    assert not SpareKeeper(WorkerSpec(env_manager="conda")).eligible("/models/iris")
    assert SpareKeeper(WorkerSpec(env_manager="conda")).status() is None  # none made at all
    assert SpareKeeper(WorkerSpec(direct=False)).status() is None
    assert not SpareKeeper(WorkerSpec()).eligible("models:/iris/2")  # not downloaded first
    assert SpareKeeper(WorkerSpec(), enabled=False).status() is None


def venv_at(directory: Path) -> PreparedEnv:
    (directory / "bin").mkdir(parents=True)
    (directory / "bin" / "uvicorn").write_text("#!/bin/sh\n")
    return PreparedEnv(directory, {"VIRTUAL_ENV": str(directory)})


@pytest.mark.parametrize("env_manager", ["uv", "virtualenv"])
def test_in_virtual_environments_a_spare_waits_in_one(tmp_path: Path, env_manager: str) -> None:
    keeper = SpareKeeper(WorkerSpec(env_manager=env_manager))
    assert keeper.status() == {"used": 0, "replaced": 0}
    assert keeper.eligible("/models/iris", venv_at(tmp_path / "env"))
    assert not keeper.eligible("/models/iris")  # its environment was not found


async def test_a_spare_in_another_environment_is_not_used(tmp_path: Path) -> None:
    """Another environment is another set of requirements: its imports are not this version's."""
    keeper = SpareKeeper(WorkerSpec(env_manager="uv"))
    waiting, needed = venv_at(tmp_path / "a"), venv_at(tmp_path / "b")
    spare = Spare(process=None, fingerprint="f", venv=waiting)  # type: ignore[arg-type]
    why = await keeper._unfit(spare, needed)
    assert why is not None and str(tmp_path / "a") in why and str(tmp_path / "b") in why


def test_a_spare_is_kept_where_the_active_version_is_served(tmp_path: Path) -> None:
    served = {"env": venv_at(tmp_path / "a")}
    keeper = SpareKeeper(WorkerSpec(env_manager="uv"), where=lambda: served["env"])
    spare = Spare(process=None, fingerprint="f", venv=served["env"])  # type: ignore[arg-type]
    assert keeper._placed_right(spare)
    served["env"] = venv_at(tmp_path / "b")  # a version of other requirements serves now
    assert not keeper._placed_right(spare)
    # With the local env manager every spare runs our interpreter.
    assert SpareKeeper(WorkerSpec())._placed_right(Spare(process=None, fingerprint="f"))  # type: ignore[arg-type]


def test_the_fingerprint_of_a_virtual_environment_follows_its_packages(tmp_path: Path) -> None:
    venv = venv_at(tmp_path / "env")
    site = tmp_path / "env" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    before = installed_fingerprint({}, venv)
    assert installed_mlflow(venv) is None
    dist = site / "mlflow-3.17.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlflow\nVersion: 3.17.2\n")
    assert installed_fingerprint({}, venv) != before
    assert installed_mlflow(venv) == "3.17.2"
    assert installed_fingerprint({}, venv) != installed_fingerprint({})  # not ours


def failing_env(directory: Path, *, uvicorn: bool = True) -> PreparedEnv:
    """An environment whose python exits at once, as one whose MLflow cannot be imported."""
    venv = venv_at(directory)
    if not uvicorn:
        (directory / "bin" / "uvicorn").unlink()
    python = directory / "bin" / "python"
    python.write_text(
        f"#!/bin/sh\necho 'No module named mlflow'\ndate +%s.%N >> {directory}/tries\nexit 1\n"
    )
    python.chmod(0o755)
    return venv


async def test_a_spare_that_cannot_start_is_tried_again_ever_later(tmp_path: Path) -> None:
    venv = failing_env(tmp_path / "env")
    keeper = SpareKeeper(WorkerSpec(env_manager="uv"), where=lambda: venv, quiet_delay=0.05)
    keeper.replenish(delay=0.0)
    await asyncio.sleep(1.5)
    await keeper.close()
    tries = [float(t) for t in (tmp_path / "env" / "tries").read_text().split()]
    gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
    # Tried again after 0.1, 0.2, 0.4, 0.8 s (and the time each try takes), not every 0.05 s.
    assert len(tries) >= 3, tries
    assert all(gap >= 0.05 * 2 ** (k + 1) for k, gap in enumerate(gaps)), gaps
    assert keeper.replaced >= len(tries) - 1


async def test_no_spare_is_made_where_a_worker_would_not_start_directly(tmp_path: Path) -> None:
    venv = failing_env(tmp_path / "env", uvicorn=False)  # no uvicorn: the CLI starts it
    keeper = SpareKeeper(WorkerSpec(env_manager="uv"), where=lambda: venv, quiet_delay=0.0)
    keeper.replenish()
    await asyncio.sleep(0.3)
    assert not (tmp_path / "env" / "tries").exists()
    assert keeper.status() == {"used": 0, "replaced": 0}
    await keeper.close()
