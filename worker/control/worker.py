"""What the state machine knows of a worker: a thing that starts, becomes ready, serves at an
address and stops. How it does so (a child process, HTTP probes, a model copy) is the worker
package's business; how requests reach it (connection pools) is the proxy's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .inflight import InFlight


class Worker(Protocol):
    slot: str
    version: str
    in_flight: InFlight
    pid: int | None
    port: int | None
    base_url: str
    """Where it serves, once started: `http://host:port`."""
    timings: dict[str, float]
    """Seconds of each step `start` took before launching the server (download, prepare_env)."""

    async def start(self) -> None: ...
    async def wait_ready(self, timeout: float) -> None: ...
    async def warm_up(self) -> bool: ...
    async def input_schema(self) -> Any | None: ...
    async def healthy(self) -> bool: ...
    async def stop(self, grace: float) -> None: ...
    async def wait_exit(self) -> int | None: ...
    def kill_now(self) -> None: ...
    def rss_bytes(self) -> int: ...
    @property
    def alive(self) -> bool: ...
    def status(self) -> dict[str, Any]: ...


WorkerFactory = Callable[[str, str], Worker]
"""(slot, version) -> a worker not yet started."""
