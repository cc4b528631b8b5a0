"""The public port alone, in front of a fixed upstream: to measure the proxy itself.

    python -m mlflow_bluegreen.proxy.standalone --upstream http://127.0.0.1:9000 --port 8080

Same forwarder, server settings and metrics as `mlflow-bluegreen serve`, but no worker
processes, registry or swaps. Used by benchmarks/proxy_overhead.py.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from prometheus_client import CollectorRegistry

from ..worker.control.inflight import InFlight
from ..worker.control.supervisor import Supervisor
from ..worker.process.child import connection_pool
from .admin.metrics import Metrics
from .cli import run_with_uvloop
from .relay.forward import Forwarder
from .relay.public_port import PublicPort


class FixedUpstream:
    """Looks like a worker to the forwarder: an address, its pools and an in-flight count."""

    def __init__(self, base_url: str, version: str, timeout: float = 60.0) -> None:
        self.slot = "fixed"
        self.version = version
        self.base_url = base_url.rstrip("/")
        self.read_timeout = timeout
        self.in_flight = InFlight()
        self.session = connection_pool(timeout, 1000)
        self.fresh_session = connection_pool(timeout, 1000, fresh=True)
        # Not our process: it never counts as exited, so an upstream that closes connections
        # without answering gets 502s, not a wait for a replacement.
        self.alive = True

    async def wait_exit(self) -> int | None:
        await asyncio.Event().wait()
        return None


async def run(upstream: str, host: str, port: int, version: str) -> int:
    supervisor = Supervisor(lambda slot, version: None)  # type: ignore[arg-type, return-value]
    supervisor.active = FixedUpstream(upstream, version)  # type: ignore[assignment]
    metrics = Metrics(CollectorRegistry(), in_flight=supervisor.in_flight)
    public = PublicPort(Forwarder(supervisor, metrics.observe_request))
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
    args = parser.parse_args()
    raise SystemExit(run_with_uvloop(run(args.upstream, args.host, args.port, args.version)))


if __name__ == "__main__":
    main()
