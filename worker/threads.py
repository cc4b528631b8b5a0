"""Blocking MLflow calls off the event loop, without holding up the sidecar's exit."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def in_daemon_thread(function: Callable[[], T], name: str) -> T:
    """`function()` in a daemon thread. Unlike `asyncio.to_thread`, a registry call or download
    that hangs does not hold up the sidecar's exit: the default executor's threads are joined at
    shutdown, a daemon thread is abandoned."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the awaiting coroutine was cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def call() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = function()
        except BaseException as raised:  # noqa: BLE001 - handed to the awaiting coroutine
            error = raised
        with contextlib.suppress(RuntimeError):  # the loop closed while we waited: nobody cares
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=call, name=name, daemon=True).start()
    return await future
