"""Giving a client connection to aiohttp's server, and bounding a client that stops reading."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from .forward import Forwarder

log = logging.getLogger(__name__)


def public_server(
    forwarder: Forwarder, *, access_log: bool = False, keepalive_timeout: float = 75.0
) -> web.Server:
    """aiohttp's low-level server, for the requests the fast path hands over."""
    return web.Server(
        forwarder,
        # aiohttp has no separate header timeout: its keep-alive timer runs from the moment a
        # connection opens until a request's headers are complete, so it also closes a client
        # that trickles its headers (slowloris). Such a client never reaches a worker: one is
        # chosen only once the body is in.
        keepalive_timeout=keepalive_timeout,
        # A client that goes away cancels its request, and so its upstream request: a worker
        # does not keep computing answers nobody will read.
        handler_cancellation=True,
        auto_decompress=False,  # forward compressed bodies as they came
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
    )


class ClientStall:
    """Cuts off a client that takes none of its answer for `timeout` seconds, as nginx's
    send_timeout does. While it does not read, the worker's clock is stopped (the delay is not
    the worker's), so without this a client that stops reading would hold its answer, and the
    worker's connection, for ever."""

    def __init__(self, timeout: float, cut_off: Callable[[], None]) -> None:
        self._timeout = timeout
        self._cut_off = cut_off
        self._timer: asyncio.TimerHandle | None = None

    def writes_paused(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._timeout, self._stalled)

    def writes_resumed(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        log.warning("a client took none of its answer for %.0f s: connection cut", self._timeout)
        self._cut_off()


class HandedOver(asyncio.Protocol):
    """aiohttp's protocol for a connection handed to it, with a client's stall bounded too:
    aiohttp waits for a client to read for as long as it takes."""

    def __init__(self, handler: asyncio.Protocol, stall: ClientStall) -> None:
        self.handler = handler
        self._stall = stall

    def data_received(self, data: bytes) -> None:
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        self._stall.writes_paused()
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self._stall.writes_resumed()
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stall.writes_resumed()
        self.handler.connection_lost(exc)


def hand_over(
    server: web.Server, transport: asyncio.Transport, data: bytes, timeout: float
) -> None:
    """Give `transport`, and `data` (every byte read since the last answer), to aiohttp."""
    handler = server()
    stall = ClientStall(timeout, transport.abort)
    transport.set_protocol(HandedOver(handler, stall))
    handler.connection_made(transport)
    if data:
        handler.data_received(data)
