"""Preparations begun as soon as the registry names a version (worker/model/early.py): what is
begun, what is kept, what a dropped one leaves behind."""

from __future__ import annotations

import asyncio
from typing import cast

from mlflow_bluegreen.worker.model.early import KEPT, EarlyPreparations
from mlflow_bluegreen.worker.model.prepare import Preparation


class FakePreparation:
    """Runs until released (or fails); records what was done to it."""

    def __init__(self, version: str, model_uri: str) -> None:
        self.version, self.model_uri = version, model_uri
        self.release = asyncio.Event()
        self.failure: Exception | None = None
        self.ran = self.killed = self.discarded = False

    async def run(self, timeout: float) -> None:
        self.ran = True
        await self.release.wait()
        if self.failure is not None:
            raise self.failure

    def kill(self) -> None:
        self.killed = True

    async def discard(self) -> None:
        self.discarded = True


def keeper(env_manager: str) -> tuple[EarlyPreparations, dict[str, FakePreparation]]:
    made: dict[str, FakePreparation] = {}

    def make(version: str, model_uri: str) -> Preparation:
        made[version] = FakePreparation(version, model_uri)
        return cast(Preparation, made[version])

    return EarlyPreparations(make, env_manager=env_manager, timeout=60), made


async def test_only_what_has_something_to_prepare_is_begun() -> None:
    local, made = keeper("local")
    local.begin("1", "/srv/models/iris")  # served in place, in our environment: nothing to do
    local.begin("2", "models:/iris/2")  # a download
    assert set(made) == {"2"}
    uv, made_uv = keeper("uv")
    uv.begin("3", "/srv/models/iris")  # its environment is built ahead
    assert set(made_uv) == {"3"}
    await asyncio.sleep(0)
    assert made["2"].ran and made_uv["3"].ran
    await local.close()
    await uv.close()


async def test_a_version_named_twice_is_prepared_once_and_taken_once() -> None:
    early, made = keeper("local")
    early.begin("2", "models:/iris/2")
    first = made["2"]
    early.begin("2", "models:/iris/2")
    assert made["2"] is first
    taken = early.take("2")
    assert taken is not None and taken.preparation is cast(Preparation, first)
    assert early.take("2") is None  # the taker's now: a close leaves it alone
    await early.close()
    assert not first.killed and not first.discarded
    first.release.set()
    await taken.task


async def test_beyond_the_kept_number_the_oldest_is_stopped_and_its_copy_removed() -> None:
    early, made = keeper("local")
    versions = [str(v) for v in range(1, KEPT + 2)]
    for version in versions:
        early.begin(version, f"models:/iris/{version}")
    await asyncio.sleep(0.01)
    oldest = made[versions[0]]
    assert oldest.killed and oldest.discarded
    assert early.take(versions[0]) is None
    assert all(not made[v].killed for v in versions[1:])
    await early.close()
    assert all(made[v].killed and made[v].discarded for v in versions[1:])


async def test_a_failed_early_run_is_the_takers_to_report() -> None:
    """Its failure goes to the worker that takes it (which prepares again and fails there,
    with its reason as a step of its own swap), not to the log as a stray task error."""
    early, made = keeper("local")
    early.begin("2", "models:/iris/2")
    made["2"].failure = RuntimeError("no such artifact")
    made["2"].release.set()
    reported: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _l, context: reported.append(context))
    await asyncio.sleep(0.01)
    taken = early.take("2")
    assert taken is not None and taken.task.done()
    assert str(taken.task.exception()) == "no such artifact"
    assert reported == []
    await early.close()
