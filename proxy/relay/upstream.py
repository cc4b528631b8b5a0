"""Raw keep-alive connections to a worker, for the public port's fast path.

One request at a time per connection. The worker's answer is parsed with httptools (llhttp, the
parser uvicorn and aiohttp use) and handed, piece by piece, to a `ResponseSink`: the request's
`Exchange` (exchange.py), which writes it out. Nothing is copied or re-framed here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, cast

import httptools

# Idle connections to a worker older than this are closed instead of reused (here and in
# aiohttp's pools, pools.py). The worker keeps them open far longer (its WORKER_KEEPALIVE, 75 s),
# so the proxy, never the worker, closes an idle connection. Otherwise a request can be written
# onto a connection the worker closed a moment before, and aiohttp never retries a POST.
POOL_KEEPALIVE = 15.0
CONNECT_TIMEOUT = 5.0


class ResponseSink(Protocol):
    """Where a worker's answer goes, as it is parsed, and how its exchange ended."""

    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_flush(self) -> None:
        """The bytes read so far are parsed: send what is pending."""

    def response_end(self) -> None: ...

    def exchange_done(self, status: int) -> None:
        """The answer is complete; the connection may go back to its pool."""

    def exchange_failed(self, error: Exception) -> None:
        """StaleConnection, BrokenResponse (CutShort) or TimeoutError; the connection is
        closed."""


class StaleConnection(Exception):
    """The worker closed the connection before sending any byte of an answer: it never saw the
    request (it closed an idle keep-alive connection as we wrote to it)."""


class BrokenResponse(Exception):
    """The worker's answer stopped or was malformed after it began."""


class CutShort(BrokenResponse):
    """The worker closed the connection part-way through its answer: it may have died."""


class UpstreamConnection(asyncio.Protocol):
    """One connection to a worker. Callbacks, not a future per request: a request on the fast
    path costs no task, future or extra turn of the event loop."""

    __slots__ = (
        "_complete",
        "_headers",
        "_last_read",
        "_loop",
        "_parser",
        "_reason",
        "_sink",
        "_timeout",
        "_timer",
        "idle_since",
        "keep_alive",
        "pool",
        "reading_paused",
        "received",
        "transport",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._sink: ResponseSink | None = None
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self._last_read = 0.0
        self._complete = 0  # the status of an answer parsed to its end, until reported
        self.received = False
        self.keep_alive = False
        self.reading_paused = False
        self.idle_since = 0.0

    # -- one exchange ----------------------------------------------------------------------

    def start(self, request: bytes, body: bytes, sink: ResponseSink, timeout: float) -> None:
        """Send a request; its answer goes to `sink`, then exchange_done or exchange_failed.
        `timeout` bounds each wait for the worker's next bytes."""
        assert self.transport is not None
        self._sink = sink
        self.received = False
        self._timeout = timeout
        self._start_clock()
        if body and len(body) < 65536:
            self.transport.write(request + body)
        else:
            self.transport.write(request)
            if body:
                self.transport.write(body)

    def abandon(self) -> None:
        """The client went away: drop the answer and the connection, report nothing."""
        self._stop()
        self.close()

    def _start_clock(self) -> None:
        self._last_read = self._loop.time()
        self._timer = self._loop.call_at(self._last_read + self._timeout, self._check_timeout)

    def _stop_clock(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_timeout(self) -> None:
        # One timer per exchange, moved forward lazily: reads only note their time.
        due = self._last_read + self._timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_timeout)
        else:
            self._timer = None
            self._fail(TimeoutError())

    def _stop(self) -> ResponseSink | None:
        sink, self._sink = self._sink, None
        self._stop_clock()
        return sink

    def _fail(self, error: Exception) -> None:
        sink = self._stop()
        self.close()
        if sink is not None:
            sink.exchange_failed(error)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def usable(self) -> bool:
        """Not closed, and not closing."""
        return self.transport is not None and not self.transport.is_closing()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
            self._stop_clock()  # the client is slow, not the worker: no clock on the worker

    def resume_reading(self) -> None:
        if self.transport is not None and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
            if self._sink is not None and self._timer is None:
                self._start_clock()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.pool.open += 1

    def data_received(self, data: bytes) -> None:
        sink = self._sink
        if sink is None:  # bytes nobody asked for: this connection is unusable
            self.close()
            return
        self.received = True
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            # An upgrade (101) nobody asked for is as unusable as a malformed answer.
            self._fail(BrokenResponse(f"malformed answer: {error!r}"))
            return
        sink.response_flush()
        if self._complete:
            # Reported here, after the parser returned: the sink may start the next exchange
            # on this very connection.
            status, self._complete = self._complete, 0
            self._stop()
            sink.exchange_done(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        if self._sink is not None:
            if self.received:
                self._fail(CutShort(f"connection closed mid-answer ({exc or 'EOF'})"))
            else:
                self._fail(StaleConnection(f"connection closed before any answer ({exc or 'EOF'})"))

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue): not the answer, not forwarded
            return
        assert self._sink is not None
        self._sink.response_head(status, self._reason, self._headers)

    def on_body(self, data: bytes) -> None:
        assert self._sink is not None
        self._sink.response_body(data)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200 or self._sink is None:
            return
        self.keep_alive = self._parser.should_keep_alive()
        self._sink.response_end()
        self._complete = status


class UpstreamPool:
    """Keep-alive connections to one worker address, most recently used first."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.host_header = b"Host: %s:%d\r\n" % (host.encode(), port)
        self._idle: list[UpstreamConnection] = []
        self.open = 0  # connections made and not yet lost

    def idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection young enough to reuse, if any."""
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < POOL_KEEPALIVE and connection.usable:
                return connection
            connection.close()
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection to the worker."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _transport, connection = await loop.create_connection(
                lambda: UpstreamConnection(self), self.host, self.port
            )
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        # The whole answer may have come before the client's buffer filled and paused us.
        connection.resume_reading()
        if connection.keep_alive and connection.usable:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()

    def forget(self, connection: UpstreamConnection) -> None:
        self.open -= 1
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
