"""--swap-policy memory against real workers: one model in memory at any moment, requests held
through the swap, and the old version back when the new one cannot serve."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlflow_bluegreen.proxy.demo import SidecarProcess
from mlflow_bluegreen.proxy.loadgen import LoadResult, closed_loop
from mlflow_bluegreen.worker.sandbox import register_iris_version, set_alias

from .conftest import Registry, register_from_code

pytestmark = pytest.mark.integration


def scoring_servers(sidecar_pid: int) -> set[int]:
    """Process groups of the sidecar's children that run a scoring server (each worker is a
    group of its own: mlflow models serve and its uvicorn)."""
    groups = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid, pgid = int(fields[1]), int(fields[2])
        if (
            pgid != sidecar_pid
            and (ppid == sidecar_pid or pgid in groups)
            and (b"models\x00serve" in cmdline or b"scoring_server" in cmdline)
        ):
            groups.add(pgid)
    return groups


async def load_through(
    sidecar: SidecarProcess, swap: Callable[[], None], seen: list[int]
) -> LoadResult:
    """Closed-loop load while `swap()` runs in a thread; `seen` gets the number of scoring
    servers alive, sampled every 50 ms meanwhile."""
    stop = asyncio.Event()
    load = asyncio.create_task(closed_loop(f"{sidecar.url}/invocations", stop, concurrency=4))

    async def sample() -> None:
        while not stop.is_set():
            seen.append(len(scoring_servers(sidecar.process.pid)))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    await asyncio.sleep(1.0)
    await asyncio.to_thread(swap)
    await asyncio.sleep(1.0)
    stop.set()
    await sampler
    return await load


def test_the_memory_policy_swaps_with_one_model_in_memory_and_no_failed_request(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    name = "lean"
    first = register_iris_version(registry.uri, name, 1.0)
    second = register_iris_version(registry.uri, name, 0.05)
    set_alias(registry.uri, name, "live", first)
    sidecar = start_sidecar(
        f"models:/{name}@live", "--poll-interval", "0.5", "--swap-policy", "memory"
    )
    sidecar.wait_active(first, timeout=120)
    seen: list[int] = []

    def swap() -> None:
        set_alias(registry.uri, name, "live", second)
        sidecar.wait_active(second, timeout=120)

    result = asyncio.run(load_through(sidecar, swap, seen))

    assert result.failures == [], result.describe_failures()
    assert result.by_version()[first] > 0 and result.by_version()[second] > 0
    # The samples saw the old server, the gap, and the new one: never two at once.
    assert max(seen) == 1 and 0 in seen
    record = sidecar.status()["history"][0]
    assert (record["from"], record["to"], record["result"]) == (first, second, "succeeded")
    assert record["policy"] == {"policy": "memory", "why": "--swap-policy memory"}
    assert list(record["steps"])[:3] == ["resolve", "drain", "stop"]
    # The held requests waited for the boot: the longest answer took about that long.
    longest = max(o.seconds for o in result.outcomes)
    assert longest > record["steps"]["ready"] * 0.5
    print(
        f"memory policy: {len(result.outcomes)} requests, 0 failed, longest wait "
        f"{longest:.2f} s, boot {record['steps']['ready']:.2f} s"
    )


def test_with_the_memory_policy_a_version_that_cannot_load_brings_the_old_one_back(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    name = "lean-broken"
    good = register_iris_version(registry.uri, name, 1.0)
    broken = register_from_code(registry.uri, name, "broken_model")
    set_alias(registry.uri, name, "live", good)
    sidecar = start_sidecar(
        f"models:/{name}@live", "--poll-interval", "0.5", "--swap-policy", "memory"
    )
    sidecar.wait_active(good, timeout=120)
    old_pid = sidecar.status()["active"]["pid"]
    seen: list[int] = []

    def swap() -> None:
        set_alias(registry.uri, name, "live", broken)
        sidecar.wait_until(
            lambda s: (
                [h["result"] for h in s["history"][:2]] == ["succeeded", "failed"]
                and s["active"] is not None
            ),
            120,
            "the old version back",
        )

    began = time.monotonic()
    result = asyncio.run(load_through(sidecar, swap, seen))

    assert result.failures == [], result.describe_failures()
    assert set(result.by_version()) == {good}
    assert max(seen) == 1
    status = sidecar.status()
    back, failed = status["history"][0], status["history"][1]
    assert failed["to"] == broken and "cannot load" in failed["error"]
    assert (
        back["to"] == good
        and back["cause"] == f"fallback: {broken} cannot serve now; {good} served before"
    )
    assert status["active"]["pid"] != old_pid  # started again, since it had made room
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)
    longest = max(o.seconds for o in result.outcomes)
    print(
        f"fallback under the memory policy: {time.monotonic() - began:.1f} s in all, 0 failed "
        f"of {len(result.outcomes)}, longest wait {longest:.2f} s; failed swap "
        f"{failed['seconds']} s {failed['steps']}, fallback {back['seconds']} s {back['steps']}"
    )
