"""A worker that died hands its model copy to its replacement: a restart needs no registry.
Real child processes (a sleeping Python stands in for `mlflow models serve`); the download
is the only part replaced, to count it."""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlflow_bluegreen.worker.model import prepare
from mlflow_bluegreen.worker.model.stash import LocalCopy, ModelStash
from mlflow_bluegreen.worker.model.venv import PreparedEnv
from mlflow_bluegreen.worker.model_worker import ModelWorker
from mlflow_bluegreen.worker.spec import WorkerSpec


@dataclass(frozen=True)
class SleeperSpec(WorkerSpec):
    def command(self, model_uri: str, port: int, venv: PreparedEnv | None = None) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each download's model URI; the artifacts are a minimal MLmodel."""
    seen: list[str] = []

    def download(model_uri: str, destination: str) -> str:
        seen.append(model_uri)
        model = Path(destination, "model")
        model.mkdir()
        (model / "MLmodel").write_text("artifact_path: model\nflavors: {}\n")
        return str(model)

    monkeypatch.setattr(prepare, "download_model", download)
    return seen


def exists(*parts: str) -> bool:
    return Path(*parts).exists()


def worker(version: str, stash: ModelStash) -> ModelWorker:
    return ModelWorker("blue", version, f"models:/iris/{version}", SleeperSpec(), stash)


async def crash(running: ModelWorker) -> None:
    assert running.pid is not None
    os.killpg(running.pid, signal.SIGKILL)
    await running.wait_exit()
    await running.stop(0.5)


async def test_the_replacement_of_a_dead_worker_serves_its_copy(downloads: list[str]) -> None:
    stash = ModelStash()
    first = worker("3", stash)
    await first.start()
    served_from = first.launch_uri
    await crash(first)
    assert exists(served_from, "MLmodel")  # kept, not deleted

    second = worker("3", stash)
    await second.start()
    assert downloads == ["models:/iris/3"]  # once, for the first
    assert second.launch_uri == served_from
    assert "download" not in second.timings
    await second.stop(0.5)  # stopped by us, not dead: its copy goes
    assert not exists(served_from)
    assert stash.clear() is None


async def test_a_worker_stopped_on_purpose_keeps_nothing(downloads: list[str]) -> None:
    stash = ModelStash()
    first = worker("3", stash)
    await first.start()
    served_from = first.launch_uri
    await first.stop(0.5)
    assert not exists(served_from)
    second = worker("3", stash)
    await second.start()
    assert downloads == ["models:/iris/3", "models:/iris/3"]
    await second.stop(0.5)


async def test_only_the_latest_dead_copy_is_kept(downloads: list[str]) -> None:
    stash = ModelStash()
    three, four = worker("3", stash), worker("4", stash)
    await three.start()
    await four.start()
    paths = three.launch_uri, four.launch_uri
    await crash(three)
    await crash(four)
    assert not exists(paths[0])  # displaced by 4's, and deleted
    assert exists(paths[1])
    again = worker("3", stash)  # another version's copy is not taken
    await again.start()
    assert again.launch_uri not in paths
    await again.stop(0.5)
    kept = stash.clear()
    assert kept is not None and kept.launch_uri == paths[1]


def test_a_copy_is_handed_over_once() -> None:
    stash = ModelStash()
    copy = LocalCopy("3", "/tmp/x", "/tmp/x/model")
    assert stash.keep(copy) is None
    assert stash.take("4") is None
    assert stash.take("3") == copy
    assert stash.take("3") is None


async def test_the_copy_is_kept_by_the_time_the_exit_is_heard(downloads: list[str]) -> None:
    # The supervisor starts the replacement as soon as wait_exit() returns, before the dead
    # worker's stop has run: the copy must already be there to be taken.
    stash = ModelStash()
    first = worker("3", stash)
    await first.start()
    served_from = first.launch_uri
    assert first.pid is not None
    os.killpg(first.pid, signal.SIGKILL)
    await first.wait_exit()
    second = worker("3", stash)
    await second.start()
    assert second.launch_uri == served_from
    assert downloads == ["models:/iris/3"]
    await first.stop(0.5)  # the dead one's stop, late: the copy is no longer its to delete
    assert exists(served_from, "MLmodel")
    await second.stop(0.5)
    assert not exists(served_from)
