"""The public port exactly as the sidecar builds it, in front of real HTTP upstreams, with the
real supervisor's roles set by hand (`_set_active`) instead of by swaps."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from mlflow_bluegreen.proxy.relay.forward import Forwarder
from mlflow_bluegreen.proxy.relay.port import PublicPort
from mlflow_bluegreen.worker.control import Supervisor, Worker
from mlflow_bluegreen.worker.control.inflight import InFlight

HITS = web.AppKey("hits", list)
BIG = 3 * 1024 * 1024 + 17  # over the replay limit: streamed, not read whole


@dataclass(eq=False)  # a worker is itself, not its fields: the supervisor keys state by it
class Upstream:
    """What the relay reads of a worker: an address, a version, an in-flight count and whether
    it exited. `read_timeout` is the relay's setting for the proxy in front of it."""

    base_url: str
    version: str = "7"
    read_timeout: float = 5.0
    in_flight: InFlight = field(default_factory=InFlight)

    def __post_init__(self) -> None:
        self.exited = asyncio.Event()

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()

    async def wait_exit(self) -> int | None:
        await self.exited.wait()
        return -9

    async def close(self) -> None:
        """Nothing to close: connections to it are the relay's (pools.py)."""

    def status(self) -> dict[str, Any]:
        return {"version": self.version, "url": self.base_url, "in_flight": self.in_flight.count}


def _no_workers(slot: str, version: str) -> Worker:
    raise AssertionError("the relay's tests run no swaps")


async def echo(request: web.Request) -> web.StreamResponse:
    if request.path == "/big":
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = BIG
        await response.prepare(request)
        block = bytes(range(256)) * 4096
        sent = 0
        while sent < BIG:
            piece = block[: BIG - sent]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response
    if request.path == "/slow":
        await asyncio.sleep(float(request.query.get("s", "1")))
    if request.path == "/gzipped":
        return web.Response(
            body=gzip.compress(b'{"predictions": [1]}'),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
    body = await request.read()
    request.app[HITS].append(request.path)
    return web.json_response(
        {
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        },
        headers={"X-Upstream": "echo"},
    )


@pytest.fixture
async def echo_upstream() -> AsyncIterator[TestServer]:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[HITS] = []
    app.router.add_route("*", "/{tail:.*}", echo)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(auto_decompress=False)
    yield server
    await server.close()


class Proxy:
    """The public port exactly as the sidecar builds it, in front of `upstream`."""

    def __init__(
        self,
        public: PublicPort,
        supervisor: Supervisor,
        forwarder: Forwarder,
        seen: list[Any],
    ) -> None:
        self.public = public
        self.forwarder = forwarder
        self.supervisor = supervisor
        self.seen = seen
        self.port = public.port
        self.url = f"http://127.0.0.1:{self.port}"

    async def raw(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send bytes exactly as given; parse the answer loosely."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(request)
        await writer.drain()
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers, body


@pytest.fixture
async def make_proxy() -> AsyncIterator[Callable[[Upstream | None], Awaitable[Proxy]]]:
    created: list[PublicPort] = []

    async def make(
        upstream: Upstream | None, keepalive_timeout: float = 75.0, **options: Any
    ) -> Proxy:
        supervisor = Supervisor(_no_workers)
        if upstream is not None:
            supervisor._set_active(upstream)
        seen: list[Any] = []
        if upstream is not None:
            options.setdefault("read_timeout", upstream.read_timeout)
        forwarder = Forwarder(supervisor, lambda *args: seen.append(args), **options)
        public = PublicPort(forwarder, keepalive_timeout=keepalive_timeout)
        await public.start("127.0.0.1", 0)
        created.append(public)
        return Proxy(public, supervisor, forwarder, seen)

    yield make
    for public in created:
        await public.close(1)


@pytest.fixture
async def proxy(echo_upstream: TestServer, make_proxy: Any) -> Proxy:
    upstream = Upstream(f"http://127.0.0.1:{echo_upstream.port}")
    return await make_proxy(upstream)


def hits(upstream: TestServer) -> list[str]:
    return upstream.app[HITS]  # type: ignore[union-attr]
