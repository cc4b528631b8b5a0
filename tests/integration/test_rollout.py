"""Linger and instant rollback, fallback on a crash, version-pinned routing, the signature guard
and the canary, each against real workers and a real registry."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pandas as pd
import pytest

from mlflow_bluegreen.proxy.demo import SidecarProcess
from mlflow_bluegreen.proxy.loadgen import IRIS_COLUMNS, IRIS_PAYLOAD, closed_loop
from mlflow_bluegreen.worker.sandbox import register_iris_version, set_alias

from .conftest import Registry, register_from_code

pytestmark = pytest.mark.integration


def invoke(sidecar: SidecarProcess, version: str | None = None) -> tuple[int, str | None]:
    """POST one iris prediction, optionally pinned to `version`: (status, X-Model-Version)."""
    headers = {"Content-Type": "application/json"}
    if version is not None:
        headers["X-Model-Version"] = version
    request = urllib.request.Request(
        sidecar.url + "/invocations", data=IRIS_PAYLOAD, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status, response.headers.get("X-Model-Version")
    except urllib.error.HTTPError as error:
        error.read()
        return error.code, error.headers.get("X-Model-Version")


def metric_lines(sidecar: SidecarProcess, name: str) -> list[str]:
    code, body = sidecar.get("/metrics", admin=True)
    assert code == 200
    return [line for line in body.decode().splitlines() if line.startswith(name)]


def test_linger_gives_instant_rollback_version_routing_and_crash_fallback(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    name = "rollout"
    first = register_iris_version(registry.uri, name, 1.0)
    second = register_iris_version(registry.uri, name, 0.05)
    set_alias(registry.uri, name, "live", first)
    sidecar = start_sidecar(f"models:/{name}@live", "--poll-interval", "0.5", "--linger", "600")
    sidecar.wait_active(first, timeout=120)
    set_alias(registry.uri, name, "live", second)
    sidecar.wait_active(second, timeout=120)

    # The replaced worker is kept warm, and what it costs is shown.
    status = sidecar.status()
    lingering = status["lingering"]
    assert lingering["version"] == first and lingering["alive"]
    assert lingering["rss_bytes"] > 50 * 2**20  # a real Python process with sklearn loaded
    rss = metric_lines(sidecar, "mlflow_bluegreen_worker_rss_bytes{")
    assert any(f'version="{first}"' in line and 'role="lingering"' in line for line in rss)

    # A client may finish a session on either version; others are 404.
    assert invoke(sidecar) == (200, second)
    assert invoke(sidecar, version=first) == (200, first)
    assert invoke(sidecar, version=second) == (200, second)
    assert invoke(sidecar, version="999")[0] == 404

    # The alias moving back: no cold start, the switch itself well under 100 ms.
    starts_before = sidecar.log_text().count("starting worker:")
    set_alias(registry.uri, name, "live", first)
    sidecar.wait_active(first, timeout=10)
    back = sidecar.status()["history"][0]
    assert back["to"] == first and "lingering" in back["cause"]
    assert back["seconds"] < 0.1, back
    assert sidecar.log_text().count("starting worker:") == starts_before

    # POST /rollback: to the lingering version, and stay there while the alias says otherwise.
    code, body = sidecar.post_admin("/rollback")
    assert code == 200, body
    assert body["active_version"] == second and body["pinned"]["version"] == second
    time.sleep(1.5)  # three polls, all naming `first`
    status = sidecar.status()
    assert status["active"]["version"] == second
    assert status["pinned"]["registry_version"] == first
    code, body = sidecar.post_admin("/resume")
    assert (code, body["resumed"]) == (200, True)
    sidecar.wait_active(first, timeout=10)
    assert sidecar.status()["pinned"] is None

    # The active worker dies under load: traffic moves to the lingering one at once.
    victim = sidecar.status()["active"]

    async def crash_under_load():
        stop = asyncio.Event()
        load = asyncio.create_task(
            closed_loop(f"{sidecar.url}/invocations", stop, concurrency=4, began=time.monotonic())
        )
        await asyncio.sleep(1)
        os.killpg(victim["pid"], signal.SIGKILL)
        await asyncio.sleep(2)
        stop.set()
        return await load

    result = asyncio.run(crash_under_load())
    history = sidecar.status()["history"]
    fallback = next(h for h in history if h["cause"].startswith("fallback"))
    assert (fallback["from"], fallback["to"]) == (first, second)
    print(f"\nactive SIGKILL with a lingering worker: {len(result.failures)} of "
          f"{len(result.outcomes)} failed")  # fmt: skip
    assert result.failures == [], result.describe_failures()
    # No request waited for a cold start: the lingering worker answered within the second.
    after_kill = [o for o in result.outcomes if o.version == second]
    assert after_kill and max(o.seconds for o in after_kill) < 5
    # And the crashed version is started again and takes the traffic back.
    sidecar.wait_until(
        lambda s: (
            s["active"] is not None
            and s["active"]["version"] == first
            and s["active"]["pid"] != victim["pid"]
        ),
        120,
        f"version {first} restarted",
    )


def test_a_breaking_signature_change_is_blocked_unless_allowed(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    name = "signature"
    first = register_iris_version(registry.uri, name, 1.0)
    # Same columns but a string where callers send numbers: would break every caller.
    example = pd.DataFrame({column: ["0"] for column in IRIS_COLUMNS})
    retyped = register_from_code(registry.uri, name, "constant_model", example)
    set_alias(registry.uri, name, "live", first)
    sidecar = start_sidecar(f"models:/{name}@live", "--poll-interval", "0.5")
    sidecar.wait_active(first, timeout=120)
    set_alias(registry.uri, name, "live", retyped)
    sidecar.wait_until(
        lambda s: any(h["to"] == retyped for h in s["history"]), 60, "the swap's verdict"
    )
    blocked = next(h for h in sidecar.status()["history"] if h["to"] == retyped)
    assert blocked["result"] == "blocked"
    assert "changed type double -> string" in blocked["error"]
    assert sidecar.status()["active"]["version"] == first
    assert invoke(sidecar) == (200, first)
    assert 'mlflow_bluegreen_swaps_total{result="blocked"} 1.0' in metric_lines(
        sidecar, "mlflow_bluegreen_swaps_total"
    )
    assert "blocked at signature" in sidecar.log_text()

    allowed = start_sidecar(
        f"models:/{name}/{first}", "--allow-signature-change", "--poll-interval", "0.5"
    )
    allowed.wait_active(first, timeout=120)
    # Pinned URIs do not move; a tracked one does: follow the alias now naming `retyped`.
    tracked = start_sidecar(
        f"models:/{name}@live", "--allow-signature-change", "--poll-interval", "0.5"
    )
    tracked.wait_active(retyped, timeout=120)
    allowed.stop()


def test_a_canary_that_fails_live_traffic_is_rejected_and_a_good_one_promoted(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    name = "canary"
    first = register_iris_version(registry.uri, name, 1.0)
    example = pd.DataFrame({column: [0.0] for column in IRIS_COLUMNS})
    bad = register_from_code(registry.uri, name, "fails_on_traffic_model", example)
    good = register_iris_version(registry.uri, name, 0.05)
    set_alias(registry.uri, name, "live", first)
    sidecar = start_sidecar(
        f"models:/{name}@live",
        "--poll-interval", "0.5",
        "--canary-percent", "30",
        "--canary-seconds", "4",
    )  # fmt: skip
    sidecar.wait_active(first, timeout=120)

    async def load_while(until: Callable[[], bool]):
        stop = asyncio.Event()
        load = asyncio.create_task(
            closed_loop(f"{sidecar.url}/invocations", stop, concurrency=4, began=time.monotonic())
        )
        while not await asyncio.to_thread(until):  # noqa: ASYNC110 - polls another process
            await asyncio.sleep(0.3)
        stop.set()
        return await load

    def verdict_on(version: str) -> Callable[[], bool]:
        return lambda: any(h["to"] == version for h in sidecar.status()["history"])

    set_alias(registry.uri, name, "live", bad)
    result = asyncio.run(load_while(verdict_on(bad)))
    record = next(h for h in sidecar.status()["history"] if h["to"] == bad)
    assert record["result"] == "failed" and record["error"].startswith("canary:")
    canary = record["canary"]
    assert canary["passed"] is False and canary["new"]["error_rate"] == 1.0
    assert canary["old"]["5xx"] == 0 and canary["old"]["answered"] > 0
    # Only the canary's share failed, and it was all that failed.
    failures = result.failures
    assert {o.version for o in failures} == {bad}
    assert len(failures) == canary["new"]["5xx"]
    share = canary["new"]["answered"] / (canary["new"]["answered"] + canary["old"]["answered"])
    assert 0.15 < share < 0.45, share
    assert sidecar.status()["active"]["version"] == first
    worker_metrics = metric_lines(sidecar, "mlflow_bluegreen_worker_requests_total{")
    assert any(f'version="{first}"' in line for line in worker_metrics)

    set_alias(registry.uri, name, "live", good)
    result = asyncio.run(load_while(verdict_on(good)))
    record = next(h for h in sidecar.status()["history"] if h["to"] == good)
    assert record["result"] == "succeeded" and record["canary"]["passed"] is True
    assert result.failures == [], result.describe_failures()
    assert {first, good} <= set(result.by_version())
    sidecar.wait_active(good, timeout=30)


def test_a_version_named_during_a_swap_is_downloaded_before_its_own_swap_begins(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    name = "early"
    first, second, third = (register_iris_version(registry.uri, name, c) for c in (1.0, 0.5, 0.05))
    set_alias(registry.uri, name, "live", first)
    sidecar = start_sidecar(
        f"models:/{name}@live",
        "--poll-interval", "0.3",
        "--canary-percent", "10",
        "--canary-seconds", "5",
    )  # fmt: skip
    sidecar.wait_active(first, timeout=120)
    set_alias(registry.uri, name, "live", second)
    deadline = time.monotonic() + 120
    while (sidecar.status()["swap_in_progress"] or {}).get("step") != "canary":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # The registry names a third version while the second one's canary runs.
    set_alias(registry.uri, name, "live", third)
    sidecar.wait_active(third, timeout=120)
    record = next(h for h in sidecar.status()["history"] if h["to"] == third)
    steps = record["steps"]
    assert record["result"] == "succeeded", record
    # All of its download ran before its swap began: the swap waited for none of it.
    assert steps["download"] > 0 and steps["prefetched"] == steps["download"], steps
    assert f"preparing version {third} ahead of its swap" in sidecar.log_text()
