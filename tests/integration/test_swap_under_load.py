"""The product's promise, end to end: the registry moves, traffic follows, nothing fails."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

import pytest

from mlflow_bluegreen.proxy.demo import SidecarProcess
from mlflow_bluegreen.proxy.loadgen import closed_loop
from mlflow_bluegreen.worker.sandbox import set_alias

from .conftest import Registry

pytestmark = pytest.mark.integration


def metric(sidecar: SidecarProcess, line_start: str) -> float:
    _code, body = sidecar.get("/metrics", admin=True)
    for line in body.decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line starting with {line_start!r}")


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_alias_moves_under_load_with_zero_failed_requests(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    first, second = registry.iris_versions
    sidecar = start_sidecar("models:/iris@champion", "--poll-interval", "0.5")
    sidecar.wait_active(first, timeout=120)
    workers_seen: list[dict] = [sidecar.status()["active"]]
    marks: dict[str, float] = {}

    async def scenario():
        began = time.monotonic()
        stop = asyncio.Event()
        load = asyncio.create_task(
            closed_loop(f"{sidecar.url}/invocations", stop, concurrency=8, began=began)
        )
        for target in (second, first):
            await asyncio.sleep(1.5)
            marks[f"move->{target}"] = time.monotonic() - began
            await asyncio.to_thread(set_alias, registry.uri, "iris", "champion", target)
            await asyncio.to_thread(sidecar.wait_active, target, 120)
            marks[f"active {target}"] = time.monotonic() - began
            workers_seen.append(sidecar.status()["active"])
        await asyncio.sleep(1.5)
        stop.set()
        return await load

    result = asyncio.run(scenario())

    assert len(result.outcomes) > 200
    assert result.failures == [], result.describe_failures()
    # Each version answers in its own period: before the first move, between the switch and
    # the move back, and after the switch back.
    active_second, active_first = marks[f"active {second}"], marks[f"active {first}"]
    for outcome in result.outcomes:
        if outcome.sent < marks[f"move->{second}"]:
            assert outcome.version == first
        elif active_second < outcome.sent < marks[f"move->{first}"]:
            assert outcome.version == second
        elif outcome.sent > active_first:
            assert outcome.version == first
    assert result.by_version()[second] > 20

    status = sidecar.status()
    swaps = [(s["from"], s["to"], s["result"]) for s in reversed(status["history"])]
    assert swaps == [
        (None, first, "succeeded"),
        (first, second, "succeeded"),
        (second, first, "succeeded"),
    ]
    assert all(s["drained"] for s in status["history"][:2])
    assert [w["slot"] for w in workers_seen] == ["blue", "green", "blue"]
    assert metric(sidecar, 'mlflow_bluegreen_swaps_total{result="succeeded"}') == 3
    assert metric(sidecar, "mlflow_bluegreen_active_model_version") == float(first)

    # Old workers were stopped and reaped after each swap; SIGTERM stops the last one.
    for worker in workers_seen[:2]:
        with pytest.raises(ProcessLookupError):
            os.kill(worker["pid"], 0)
    assert sidecar.stop() == 0
    for worker in workers_seen:
        with pytest.raises(ProcessLookupError):
            os.kill(worker["pid"], 0)
        assert port_closed(worker["port"])
    assert port_closed(sidecar.port)
