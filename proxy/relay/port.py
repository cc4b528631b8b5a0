"""The public port: a lean HTTP/1.1 relay for the common request, aiohttp for every other one.

Nearly every request a model server sees is small: a body with a Content-Length, answered with
one response. Those are parsed with httptools (connection.py) and relayed over raw keep-alive
connections (upstream.py), one `Exchange` per request (exchange.py). Through aiohttp's server and
client the same request cost about five times the CPU, on the core the worker needs (figures in
benchmarks/README.md).

Anything else goes to aiohttp's server and `Forwarder` (handover.py, forward.py), with the bytes
read so far, untouched: rules.handover says which. The handover happens before anything was
forwarded and the connection stays with aiohttp after it, so each of those behaviours has one
implementation. Both paths follow rules.py and share the Forwarder's routing, its connection
pools (pools.py), its limits and its request metrics.
"""

from __future__ import annotations

import asyncio
import contextlib

from .connection import PublicConnection
from .forward import Forwarder
from .handover import public_server
from .pools import Pools


class PublicPort:
    """Listens on the public address; owns the client connections."""

    def __init__(
        self,
        forwarder: Forwarder,
        *,
        access_log: bool = False,
        keepalive_timeout: float = 75.0,
    ) -> None:
        self.forwarder = forwarder
        self.pools: Pools = forwarder.pools
        self.access_log = access_log
        self.keepalive_timeout = keepalive_timeout
        self.handover = public_server(
            forwarder, access_log=access_log, keepalive_timeout=keepalive_timeout
        )
        self.connections: set[PublicConnection] = set()
        self._all_closed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: PublicConnection(self), host, port, reuse_address=True, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def connection_closed(self, connection: PublicConnection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._all_closed.set()

    async def close(self, timeout: float) -> None:
        """Stop accepting, let requests in progress finish (up to `timeout`), close the rest
        and the connections to the workers."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_when_idle()
        self.handover.pre_shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                if self.connections:
                    self._all_closed.clear()
                    await self._all_closed.wait()
        for connection in list(self.connections):
            connection.abort()
        await self.handover.shutdown(timeout)
        await self.forwarder.shadower.close()
        await self.pools.close()
