"""What must never happen with real workers: a broken version taking traffic, a request cut by a
swap or by shutdown."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable

import pandas as pd
import pytest

from mlflow_bluegreen.proxy.demo import SidecarProcess
from mlflow_bluegreen.proxy.loadgen import closed_loop
from mlflow_bluegreen.worker.sandbox import register_iris_version, set_alias

from .conftest import Registry, register_from_code

pytestmark = pytest.mark.integration


def slow_request(url: str, seconds: float, into: list) -> threading.Thread:
    """POST a request the slow model takes `seconds` to answer, in a thread; append the answer."""
    body = json.dumps({"dataframe_split": {"columns": ["sleep"], "data": [[seconds]]}}).encode()

    def send() -> None:
        request = urllib.request.Request(
            url + "/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                into.append((response.status, response.headers["X-Model-Version"], response.read()))
        except Exception as error:  # noqa: BLE001 - the test asserts on what came back
            into.append(("error", repr(error), b""))

    thread = threading.Thread(target=send)
    thread.start()
    return thread


@pytest.mark.parametrize("start", ["direct", "cli"])
def test_a_version_that_cannot_load_never_takes_traffic(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess], start: str
) -> None:
    name = f"guarded-{start}"
    good = register_iris_version(registry.uri, name, 1.0)
    broken = register_from_code(registry.uri, name, "broken_model")
    set_alias(registry.uri, name, "live", good)
    options = ("--no-direct-start",) if start == "cli" else ()
    sidecar = start_sidecar(f"models:/{name}@live", "--poll-interval", "0.5", *options)
    sidecar.wait_active(good, timeout=120)

    async def scenario():
        stop = asyncio.Event()
        load = asyncio.create_task(closed_loop(f"{sidecar.url}/invocations", stop, concurrency=4))
        await asyncio.to_thread(set_alias, registry.uri, name, "live", broken)
        await asyncio.to_thread(
            sidecar.wait_until,
            lambda s: any(h["result"] == "failed" for h in s["history"]),
            120,
            "the broken version rejected",
        )
        await asyncio.sleep(1)
        stop.set()
        return await load

    result = asyncio.run(scenario())
    assert result.failures == [], result.describe_failures()
    assert set(result.by_version()) == {good}

    status = sidecar.status()
    assert status["active"]["version"] == good
    failed = next(h for h in status["history"] if h["result"] == "failed")
    assert (failed["from"], failed["to"]) == (good, broken)
    # The root cause, not MLflow's wrapper traceback that follows it in the worker's output
    # (started through `mlflow models serve`: started directly, there is no wrapper).
    assert "before ready: RuntimeError: this version cannot load: weights" in failed["error"]
    if start == "cli":
        assert any("non zero return code" in line for line in failed["output"])
    else:
        assert any("cannot load: weights file missing" in line for line in failed["output"])
    # Remembered with its reason, for a backed-off retry (its timing: tests/unit/test_swap.py).
    failure = status["failed_versions"][broken]
    assert failure["attempts"] >= 1 and "cannot load" in failure["error"]
    _code, metrics = sidecar.get("/metrics", admin=True)
    assert 'mlflow_bluegreen_swaps_total{result="failed"} 1.0' in metrics.decode()


def test_requests_in_flight_during_a_swap_finish_on_the_old_version(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    example = pd.DataFrame({"sleep": [0.0]})
    first = register_from_code(registry.uri, "slow", "slow_model", example)
    second = register_from_code(registry.uri, "slow", "slow_model", example)
    set_alias(registry.uri, "slow", "live", first)
    sidecar = start_sidecar("models:/slow@live", "--poll-interval", "0.5")
    sidecar.wait_active(first, timeout=120)

    answers: list = []
    # Outlasts the next worker's download and start, even on a busy machine.
    thread = slow_request(sidecar.url, 25.0, answers)
    time.sleep(1)
    set_alias(registry.uri, "slow", "live", second)
    sidecar.wait_until(lambda s: s["active"]["version"] == second, 120, "the switch")
    thread.join()
    assert answers and answers[0][:2] == (200, first), answers
    sidecar.wait_active(second, timeout=60)
    swap = sidecar.status()["history"][0]
    assert swap["drained"] is True
    assert swap["steps"]["drain"] > 0.5  # it really waited for the slow request


def test_sigterm_stops_accepting_finishes_in_flight_requests_and_exits_0(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    example = pd.DataFrame({"sleep": [0.0]})
    version = register_from_code(registry.uri, "slow-shutdown", "slow_model", example)
    sidecar = start_sidecar(f"models:/slow-shutdown/{version}")
    sidecar.wait_active(version, timeout=120)
    worker = sidecar.status()["active"]

    answers: list = []
    thread = slow_request(sidecar.url, 3.0, answers)
    time.sleep(1)
    sidecar.process.terminate()
    time.sleep(0.5)
    with socket.socket() as probe:  # no new connections once SIGTERM arrived
        assert probe.connect_ex(("127.0.0.1", sidecar.port)) != 0
    thread.join()
    assert answers and answers[0][0] == 200, answers
    assert sidecar.process.wait(30) == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", worker["port"])) != 0
