"""Sends shadow copies: a live prediction, copied to the version under shadow while the active
worker answers the client. The client never waits for a copy nor sees what becomes of it; the
answers are compared in worker/control/shadow.py. Copies go through the new worker's own aiohttp
session and count in no client-facing metric."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping

import aiohttp
from yarl import URL

from ...worker.control.shadow import Reply, ShadowPair, ShadowRun
from . import rules
from .pools import STALE_CONNECTION, Pools

log = logging.getLogger(__name__)


class Shadower:
    def __init__(self, pools: Pools) -> None:
        self._pools = pools
        self._tasks: set[asyncio.Task[None]] = set()

    def copy(
        self,
        run: ShadowRun | None,
        *,
        method: str | bytes,
        path: str,
        target: str,
        version: str | bytes | None,
        headers: Callable[[], Mapping[str, str]],
        body: bytes,
    ) -> ShadowPair | None:
        """Send a copy of the request to `run`'s worker if the rules say so; the pair its answer
        and the active worker's go in. `headers`: made only for a copy."""
        if run is None or not rules.shadowed(
            run.share, method, path=path, version=version, body_size=len(body), draw=random.random
        ):
            return None
        pair = run.admit()
        if pair is None:
            return None
        task = asyncio.get_running_loop().create_task(
            self._send(run, pair, target, headers(), body)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pair

    async def _send(
        self, run: ShadowRun, pair: ShadowPair, target: str, headers: Mapping[str, str], body: bytes
    ) -> None:
        worker = run.worker
        url = URL(worker.base_url + target, encoded=True)
        pooled, fresh = self._pools.for_worker(worker).sessions
        began = time.perf_counter()
        try:
            try:
                try:
                    status, data = await _post(pooled, url, headers, body)
                except STALE_CONNECTION:
                    # The worker closed an idle pooled connection: once more on a fresh one,
                    # as for a client's request.
                    status, data = await _post(fresh, url, headers, body)
                reply = Reply(status, data, time.perf_counter() - began)
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                reply = Reply(None, None, time.perf_counter() - began, repr(error))
            pair.shadow_answered(reply)
        finally:
            run.copy_done()  # also when cancelled: the run does not wait for it then

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _post(
    session: aiohttp.ClientSession, url: URL, headers: Mapping[str, str], body: bytes
) -> tuple[int, bytes]:
    async with session.post(url, headers=headers, data=body, allow_redirects=False) as response:
        return response.status, await response.read()
