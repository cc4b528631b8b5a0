"""Blocking calls run in kept daemon threads: reused, never shared by two calls at once."""

import asyncio
import threading

import pytest

from mlflow_bluegreen.worker.threads import in_daemon_thread


def _current() -> threading.Thread:
    return threading.current_thread()


async def test_calls_one_after_another_reuse_one_thread() -> None:
    first = await in_daemon_thread(_current, "registry-lookup")
    second = await in_daemon_thread(_current, "registry-lookup")
    assert first is second
    assert first.daemon  # the interpreter does not wait for it at exit
    assert first is not threading.main_thread()


async def test_a_hung_call_does_not_hold_up_the_next() -> None:
    release = threading.Event()

    def hang() -> threading.Thread:
        release.wait(10)
        return threading.current_thread()

    hung = asyncio.create_task(in_daemon_thread(hang, "hung"))
    await asyncio.sleep(0.05)
    other = await asyncio.wait_for(in_daemon_thread(_current, "next"), 2)
    release.set()
    assert await hung is not other


async def test_the_thread_bears_the_call_name_while_it_runs() -> None:
    name = await in_daemon_thread(lambda: threading.current_thread().name, "download-green")
    assert name == "download-green"


async def test_an_error_reaches_the_caller_and_the_thread_stays_usable() -> None:
    def fail() -> None:
        raise LookupError("no such alias")

    with pytest.raises(LookupError, match="no such alias"):
        await in_daemon_thread(fail, "registry-lookup")
    assert await in_daemon_thread(lambda: 42, "registry-lookup") == 42


async def test_a_cancelled_caller_leaves_the_thread_to_finish_quietly() -> None:
    release = threading.Event()
    finished = threading.Event()

    def slow() -> int:
        release.wait(10)
        finished.set()
        return 1

    call = asyncio.create_task(in_daemon_thread(slow, "slow"))
    await asyncio.sleep(0.02)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    release.set()
    assert await asyncio.to_thread(finished.wait, 2)
    await asyncio.sleep(0.05)  # its answer is dropped: nothing awaits it, nothing is logged
    assert await in_daemon_thread(lambda: 2, "after") == 2
