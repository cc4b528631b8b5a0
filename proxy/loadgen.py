"""Traffic for the demo, the tests and the benchmarks: every request recorded, none hidden."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp

VERSION_HEADER = "X-Model-Version"

IRIS_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
IRIS_PAYLOAD = json.dumps(
    {
        "dataframe_split": {
            "columns": IRIS_COLUMNS,
            "data": [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]],
        }
    }
).encode()


@dataclass(frozen=True)
class Outcome:
    """One request: when it was sent (seconds since the run began), how long it took, and what
    came back. `error` is set when no HTTP response arrived at all."""

    sent: float
    seconds: float
    status: int | None
    version: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class LoadResult:
    outcomes: list[Outcome]

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def by_version(self) -> Counter[str | None]:
        return Counter(o.version for o in self.outcomes if o.ok)

    def describe_failures(self, limit: int = 5) -> str:
        kinds = Counter(o.error or f"HTTP {o.status}" for o in self.failures)
        return ", ".join(f"{n}× {kind}" for kind, n in kinds.most_common(limit))


async def closed_loop(
    url: str,
    stop: asyncio.Event,
    *,
    concurrency: int = 4,
    payload: bytes = IRIS_PAYLOAD,
    content_type: str = "application/json",
    timeout: float = 30.0,
    began: float | None = None,
) -> LoadResult:
    """`concurrency` clients, each sending the next request when the last one answered, over
    keep-alive connections, until `stop` is set. `Outcome.sent` counts from `began`
    (a `time.monotonic()` reading; default: now)."""
    began = time.monotonic() if began is None else began
    outcomes: list[Outcome] = []
    headers = {"Content-Type": content_type}

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                async with session.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    outcome = Outcome(
                        sent - began,
                        time.monotonic() - sent,
                        response.status,
                        response.headers.get(VERSION_HEADER),
                    )
            except (aiohttp.ClientError, TimeoutError) as error:
                outcome = Outcome(sent - began, time.monotonic() - sent, None, None, repr(error))
                await asyncio.sleep(0.01)  # a refused connection must not spin
            outcomes.append(outcome)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return LoadResult(outcomes)
