"""Preparations begun as soon as the registry names a version, before its swap: the download
(and, with a non-local env manager, the environment) runs while the sidecar is still busy with
an earlier swap, a canary, a shadow run, a drain or a backoff. The swap's worker then adopts
what is done (ModelWorker.start) and waits only for the rest; its history shows how much ran
before (`prefetched`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .prepare import Preparation, is_remote

log = logging.getLogger("mlflow_bluegreen.worker")

KEPT = 2  # versions prepared ahead at once; an older one not taken yet is dropped


class EarlyFailed(Exception):
    """An early step failed: the worker prepares again, and fails there, with its reason."""


@dataclass
class Early:
    preparation: Preparation
    task: asyncio.Task[None]
    began: float  # monotonic


class EarlyPreparations:
    """`make(version, model_uri)`: a Preparation for it, whose `fail` makes an EarlyFailed."""

    def __init__(
        self, make: Callable[[str, str], Preparation], *, env_manager: str, timeout: float
    ) -> None:
        self._make = make
        self._env_manager = env_manager
        self._timeout = timeout
        self._runs: OrderedDict[str, Early] = OrderedDict()
        self._dropping: set[asyncio.Task[None]] = set()

    def begin(self, version: str, model_uri: str) -> None:
        """Start preparing `version`, unless it is under way or there is nothing to prepare."""
        if version in self._runs:
            return
        if not is_remote(model_uri) and self._env_manager == "local":
            return  # served in place, in the sidecar's own environment
        preparation = self._make(version, model_uri)
        task = asyncio.get_running_loop().create_task(
            preparation.run(self._timeout), name=f"prepare-early-v{version}"
        )
        task.add_done_callback(_retrieve)
        log.info("preparing version %s ahead of its swap", version)
        self._runs[version] = Early(preparation, task, time.monotonic())
        while len(self._runs) > KEPT:
            _old, dropped = self._runs.popitem(last=False)
            self._drop(dropped)

    def take(self, version: str) -> Early | None:
        """What was begun for `version`, if anything; the caller's from then on."""
        return self._runs.pop(version, None)

    async def close(self) -> None:
        for early in list(self._runs.values()):
            self._drop(early)
        self._runs.clear()
        if self._dropping:
            await asyncio.gather(*self._dropping, return_exceptions=True)

    def _drop(self, early: Early) -> None:
        async def drop() -> None:
            early.preparation.kill()
            early.task.cancel()
            with contextlib.suppress(BaseException):
                await early.task
            await early.preparation.discard()

        task = asyncio.get_running_loop().create_task(drop())
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Its failure is the adopting worker's to report, or nobody's if none adopts it."""
    if not task.cancelled():
        task.exception()
