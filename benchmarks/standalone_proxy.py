"""The public port alone, in front of a fixed upstream: to measure the proxy itself.

    python benchmarks/standalone_proxy.py --upstream http://127.0.0.1:9000 --port 8080

Same relay (fast path, aiohttp's side, pools), server settings and metrics as
`mlflow-bluegreen serve`, but no worker processes, registry or swaps. Used by
proxy_overhead.py and profile_proxy.py.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from prometheus_client import CollectorRegistry

from mlflow_bluegreen.proxy.admin.metrics import Metrics
from mlflow_bluegreen.proxy.cli import run_with_uvloop
from mlflow_bluegreen.proxy.relay.forward import Forwarder
from mlflow_bluegreen.proxy.relay.port import PublicPort
from mlflow_bluegreen.worker.control.inflight import InFlight


class FixedUpstream:
    """What the relay reads of a worker: an address, a version, an in-flight count and whether
    it exited."""

    def __init__(self, base_url: str, version: str) -> None:
        self.slot = "fixed"
        self.version = version
        self.base_url = base_url.rstrip("/")
        self.in_flight = InFlight()
        # Not our process: it never counts as exited, so an upstream that closes connections
        # without answering gets 502s, not a wait for a replacement.
        self.alive = True

    async def wait_exit(self) -> int | None:
        await asyncio.Event().wait()
        return None


class FixedRoles:
    def __init__(self, active: FixedUpstream) -> None:
        self.active = active
        self.canary = None
        self.canary_share = 0.0
        self.shadow = None  # no shadow run: copies go nowhere
        self.lingering = None


class FixedRouting:
    """What the relay reads of the supervisor (forward.Supervision): one worker, always there."""

    def __init__(self, upstream: FixedUpstream) -> None:
        self.roles = FixedRoles(upstream)
        self.served = True

    async def wait_for_worker(self, timeout: float, exclude: Any = None) -> Any:
        return None if exclude is self.roles.active else self.roles.active

    def workers(self) -> list[tuple[str, Any]]:
        return [("active", self.roles.active)]

    def in_flight(self) -> int:
        return self.roles.active.in_flight.count


async def run(upstream: str, host: str, port: int, version: str, timeout: float = 60.0) -> int:
    routing = FixedRouting(FixedUpstream(upstream, version))
    metrics = Metrics(CollectorRegistry(), in_flight=routing.in_flight)
    forwarder = Forwarder(routing, metrics.observe_request, read_timeout=timeout)  # type: ignore[arg-type]
    public = PublicPort(forwarder)
    await public.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"proxying http://{host}:{port} -> {upstream}", flush=True)
    await stop.wait()
    await public.close(5)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--version", default="0", help="value of X-Model-Version")
    parser.add_argument("--timeout", type=float, default=60.0, help="read timeout, seconds")
    args = parser.parse_args()
    raise SystemExit(
        run_with_uvloop(run(args.upstream, args.host, args.port, args.version, args.timeout))
    )


if __name__ == "__main__":
    main()
