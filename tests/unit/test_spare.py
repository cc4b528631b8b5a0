"""The spare's bookkeeping without its process: what makes it stale, what it says when ready,
and when one is used at all."""

from __future__ import annotations

import json

from mlflow_bluegreen.worker.spare import Spare, SpareKeeper, installed_fingerprint
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
    assert not SpareKeeper(WorkerSpec(env_manager="uv")).eligible("/models/iris")
    assert SpareKeeper(WorkerSpec(env_manager="uv")).status() is None  # none made at all
    assert SpareKeeper(WorkerSpec(direct=False)).status() is None
    assert not SpareKeeper(WorkerSpec()).eligible("models:/iris/2")  # not downloaded first
    assert SpareKeeper(WorkerSpec(), enabled=False).status() is None
