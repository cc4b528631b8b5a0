"""Judging new versions by what clients see, with real workers and a real registry: a version
that raises on some real inputs (but not on its input example), one that answers correctly but
much slower, and a good one, while clients also send a share of malformed requests. The canary
and the automatic rollback reject the first two; shadow copies reject the first with no client
request failed; the good one passes each."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pandas as pd
import pytest

from mlflow_bluegreen.proxy.demo import SidecarProcess
from mlflow_bluegreen.proxy.loadgen import IRIS_COLUMNS
from mlflow_bluegreen.worker.sandbox import set_alias

from .conftest import Registry, register_from_code

pytestmark = pytest.mark.integration


def _rows(first: float) -> bytes:
    data = [[first, 3.5, 1.4, 0.2]]
    return json.dumps({"dataframe_split": {"columns": IRIS_COLUMNS, "data": data}}).encode()


# What clients send: mostly ordinary rows, some a faulty version raises on, some malformed.
KINDS = {"ordinary": _rows(5.1), "edge": _rows(7.2), "malformed": b'{"dataframe_split": '}
MIX = (("ordinary", 0.6), ("edge", 0.3), ("malformed", 0.1))
RAISES = {"raise_above": 6.5}  # on the edge rows
SLOW = {"sleep": 0.12}  # some 30 times a prediction's usual time


@dataclass
class Answer:
    kind: str
    status: int  # 0: no answer
    version: str | None
    at: float


@dataclass
class MixedLoad:
    """Closed-loop clients sending the mix, in a thread of their own, until stopped."""

    url: str
    concurrency: int = 4
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        asyncio.run(self._clients())

    async def _clients(self) -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self._client(session, seed) for seed in range(self.concurrency)))

    async def _client(self, session: aiohttp.ClientSession, seed: int) -> None:
        rng = random.Random(seed)
        kinds, weights = zip(*MIX, strict=True)
        while not self._stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            try:
                async with session.post(
                    self.url + "/invocations",
                    data=KINDS[kind],
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as response:
                    await response.read()
                    status, version = response.status, response.headers.get("X-Model-Version")
            except (aiohttp.ClientError, TimeoutError):
                status, version = 0, None
            self.answers.append(Answer(kind, status, version, time.monotonic()))

    def failed(self, since: float = 0.0) -> list[Answer]:
        """Answers a client would call failures: anything but a 2xx to a well-formed request
        (a malformed one gets its 400 from every version)."""
        return [a for a in self.answers if a.at >= since and not _as_expected(a)]

    def stop(self) -> None:
        self._stop.set()


def _as_expected(answer: Answer) -> bool:
    if answer.kind == "malformed":
        return answer.status == 400
    return 200 <= answer.status < 300


@contextmanager
def load_on(sidecar: SidecarProcess) -> Iterator[MixedLoad]:
    load = MixedLoad(sidecar.url)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        yield load
    finally:
        load.stop()
        thread.join(timeout=60)


def register(registry: Registry, name: str, config: dict[str, Any] | None = None) -> str:
    example = pd.DataFrame({column: [0.0] for column in IRIS_COLUMNS})
    return register_from_code(registry.uri, name, "judged_model", example, config)


def verdict_on(sidecar: SidecarProcess, version: str, timeout: float = 120.0) -> dict[str, Any]:
    """The first finished swap to `version`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in sidecar.status()["history"]:
            if record["to"] == version:
                return record
        time.sleep(0.3)
    raise AssertionError(f"no verdict on {version}: {sidecar.status()}")


def wait_for(condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def rolled_back_from(sidecar: SidecarProcess, version: str) -> dict[str, Any] | None:
    return next(
        (
            record
            for record in sidecar.status()["history"]
            if record["from"] == version and record["result"] == "rolled_back"
        ),
        None,
    )


def test_the_canary_rejects_a_version_that_raises_on_real_inputs_and_a_slow_one(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    name = "judged-canary"
    base, raises, slow, good = (
        register(registry, name),
        register(registry, name, RAISES),
        register(registry, name, SLOW),
        register(registry, name),
    )
    set_alias(registry.uri, name, "live", base)
    sidecar = start_sidecar(
        f"models:/{name}@live",
        "--poll-interval", "0.5",
        "--canary-percent", "30",
        "--canary-seconds", "4",
    )  # fmt: skip
    sidecar.wait_active(base, timeout=120)
    with load_on(sidecar) as load:
        set_alias(registry.uri, name, "live", raises)
        record = verdict_on(sidecar, raises)
        assert record["result"] == "failed" and record["error"].startswith("canary: ")
        canary = record["canary"]
        assert canary["verdict"] == "rejected" and "were not 2xx" in canary["reason"]
        # MLflow says 400 to a prediction that raises: counted, apart from 5xx.
        assert canary["new"]["4xx"] > canary["old"]["4xx"] * 0.5 and canary["new"]["5xx"] == 0
        # Only the canary's share of the edge rows failed.
        assert {a.version for a in load.failed()} <= {raises}

        set_alias(registry.uri, name, "live", slow)
        record = verdict_on(sidecar, slow)
        assert record["result"] == "failed", record
        # p99 (or p50, should a stall of the old worker have raised its p99) past the allowed
        # 2 times; how far depends on how busy the machine is (4.3 to 12.8 times seen).
        canary = record["canary"]
        assert "latency" in canary["reason"]
        assert max(canary["latency_ratio"], canary.get("p50_ratio", 0)) > 2  # p50: if p99 passed
        assert {a.version for a in load.failed()} <= {raises}  # slow, but never failed

        set_alias(registry.uri, name, "live", good)
        began = time.monotonic()
        record = verdict_on(sidecar, good)
        assert record["result"] == "succeeded", record
        canary = record["canary"]
        assert canary["verdict"] == "passed"
        # The malformed share failed on both arms alike, and counted against neither.
        assert canary["new"]["4xx"] > 0 and canary["old"]["4xx"] > 0
        assert load.failed(since=began) == []
    assert sidecar.status()["active"]["version"] == good


def test_shadow_copies_reject_a_version_that_raises_with_no_client_request_failed(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    name = "judged-shadow"
    base, raises, good = (
        register(registry, name),
        register(registry, name, RAISES),
        register(registry, name),
    )
    set_alias(registry.uri, name, "live", base)
    sidecar = start_sidecar(
        f"models:/{name}@live",
        "--poll-interval", "0.5",
        "--shadow-percent", "50",
        "--shadow-seconds", "4",
        "--shadow-min-agreement", "0.95",
    )  # fmt: skip
    sidecar.wait_active(base, timeout=120)
    with load_on(sidecar) as load:
        set_alias(registry.uri, name, "live", raises)
        record = verdict_on(sidecar, raises)
        assert record["result"] == "failed" and record["error"].startswith("shadow: agreed")
        shadow = record["shadow"]
        assert shadow["verdict"] == "rejected" and shadow["compared"] >= 20
        assert 0.4 < shadow["agreement"] < 0.95
        assert shadow["disagreements"][0]["why"] == "status 400 where the active version said 200"
        assert shadow["disagreements"][0]["shadow"]["status"] == 400
        assert load.failed() == []  # clients only ever saw the active version

        set_alias(registry.uri, name, "live", good)
        record = verdict_on(sidecar, good)
        assert record["result"] == "succeeded", record
        assert record["shadow"]["verdict"] == "passed" and record["shadow"]["agreement"] == 1.0
        sidecar.wait_active(good, timeout=30)
    assert load.failed() == []
    # Copies are in no client-facing metric; their outcomes have their own.
    _code, body = sidecar.get("/metrics", admin=True)
    text = body.decode()
    assert 'mlflow_bluegreen_shadow_requests_total{outcome="disagreed"}' in text
    requests = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mlflow_bluegreen_requests_total{") and 'method="POST"' in line
    )
    assert requests == len(load.answers)


def test_automatic_rollback_returns_traffic_within_the_linger_and_status_says_why(
    registry: Registry, start_sidecar: Callable[..., SidecarProcess]
) -> None:
    name = "judged-rollback"
    base, raises, slow, good = (
        register(registry, name),
        register(registry, name, RAISES),
        register(registry, name, SLOW),
        register(registry, name),
    )
    set_alias(registry.uri, name, "live", base)
    sidecar = start_sidecar(
        f"models:/{name}@live",
        "--poll-interval", "0.5",
        "--linger", "10",
        "--auto-rollback",
    )  # fmt: skip
    sidecar.wait_active(base, timeout=120)
    with load_on(sidecar) as load:
        time.sleep(3)  # what the base version served before the switch: the baseline
        for bad, why in ((raises, "were not 2xx"), (slow, "p99 latency")):
            set_alias(registry.uri, name, "live", bad)
            record = wait_for(lambda bad=bad: rolled_back_from(sidecar, bad), timeout=120)
            assert record["to"] == base and record["cause"].startswith("automatic rollback: ")
            judged = record["after_switch"]
            assert judged["verdict"] == "rejected" and why in judged["reason"]
            assert judged["seconds"] <= 10  # within the judging window
            assert sidecar.status()["active"]["version"] == base
            failure = sidecar.status()["failed_versions"][bad]
            assert failure["retry_in"] is None and "POST /reload" in failure["retry_when"]
            time.sleep(2)  # the registry still names it: not tried again
            assert sidecar.status()["active"]["version"] == base
        # Clients only saw failures from the raising version, while it served.
        assert {a.version for a in load.failed()} <= {raises}

        set_alias(registry.uri, name, "live", good)
        sidecar.wait_active(good, timeout=120)
        began = time.monotonic()
        swap = wait_for(
            lambda: next(
                (r for r in sidecar.status()["history"] if r["to"] == good and r["after_switch"]),
                None,
            ),
            timeout=60,
        )
        assert swap["after_switch"]["verdict"] == "passed", swap
        assert sidecar.status()["active"]["version"] == good
        assert load.failed(since=began) == []
    _code, body = sidecar.get("/metrics", admin=True)
    assert 'mlflow_bluegreen_swaps_total{result="rolled_back"} 2.0' in body.decode()
