"""Blocking MLflow calls off the event loop, without holding up the sidecar's exit."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

IDLE_NAME = "mlflow-call"  # a kept thread's name between calls

Report = Callable[[], None]
Job = Callable[[], Report]  # runs the call; returns how to hand its outcome to the caller


class _DaemonThread:
    """A daemon thread that runs jobs one after another and then offers itself again.

    Kept rather than started per call: `Thread.start()` blocks its caller, here the event loop,
    until the new thread has run, and on a busy machine (a second worker booting) that took
    20 ms, once per registry poll."""

    def __init__(self, pool: _DaemonPool) -> None:
        self._pool = pool
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=IDLE_NAME, daemon=True).start()

    def give(self, job: Job) -> None:
        self._jobs.put(job)

    def _serve(self) -> None:
        while True:
            report = self._jobs.get()()
            # Back in the pool before the caller hears the outcome: its next call reuses us.
            self._pool.offer(self)
            report()


class _DaemonPool:
    """As many daemon threads as calls ever overlapped: a call that hangs keeps its thread and
    the next call gets another one."""

    def __init__(self) -> None:
        self._idle: list[_DaemonThread] = []
        self._lock = threading.Lock()

    def submit(self, job: Job) -> None:
        with self._lock:
            thread = self._idle.pop() if self._idle else None
        (thread or _DaemonThread(self)).give(job)

    def offer(self, thread: _DaemonThread) -> None:
        with self._lock:
            self._idle.append(thread)


_POOL = _DaemonPool()


async def in_daemon_thread(function: Callable[[], T], name: str) -> T:
    """`function()` in a daemon thread. Unlike `asyncio.to_thread`, a registry call or download
    that hangs does not hold up the sidecar's exit: the default executor's threads are joined at
    shutdown, a daemon thread is abandoned. `name` is the thread's name while it runs the call."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def call() -> Report:
        current = threading.current_thread()
        current.name = name
        deliver: Callable[[], None]
        try:
            deliver = functools.partial(_deliver_result, future, function())
        except BaseException as raised:  # noqa: BLE001 - handed to the awaiting coroutine
            deliver = functools.partial(_deliver_error, future, raised)
        finally:
            current.name = IDLE_NAME

        def report() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody cares
                loop.call_soon_threadsafe(deliver)

        return report

    _POOL.submit(call)
    return await future


def _deliver_result(future: asyncio.Future[T], result: T) -> None:
    """Unless the awaiting coroutine was cancelled meanwhile (so for the error too)."""
    if not future.done():
        future.set_result(result)


def _deliver_error(future: asyncio.Future[T], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
