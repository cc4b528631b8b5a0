"""Raw keep-alive connections to a worker, for the public port's fast path.

One request at a time per connection. The worker's answer is parsed with httptools (llhttp, the
parser uvicorn and aiohttp use) and handed, piece by piece, to a `ResponseSink`: the client's
connection, which writes it out. Nothing is copied or re-framed here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import httptools

# Idle connections older than POOL_KEEPALIVE are closed instead of reused: well under the
# keep-alive the worker is given, so the worker never closes one we are about to use.
from ..worker.process import POOL_KEEPALIVE

CONNECT_TIMEOUT = 5.0


class ResponseSink(Protocol):
    """Where a worker's answer goes, as it is parsed."""

    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None: ...

    def response_body(self, data: bytes) -> None: ...

    def response_flush(self) -> None:
        """The bytes read so far are parsed: send what is pending."""

    def response_end(self) -> None: ...


class StaleConnection(Exception):
    """The worker closed the connection before sending any byte of an answer: it never saw the
    request (it closed an idle keep-alive connection as we wrote to it)."""


class BrokenResponse(Exception):
    """The worker's answer stopped or was malformed after it began."""


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_done",
        "_headers",
        "_last_read",
        "_parser",
        "_pool",
        "_reason",
        "_sink",
        "_timer",
        "idle_since",
        "keep_alive",
        "received",
        "transport",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._sink: ResponseSink | None = None
        self._done: asyncio.Future[int] | None = None
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self.received = False
        self.keep_alive = False
        self.idle_since = 0.0

    # -- one exchange ----------------------------------------------------------------------

    async def exchange(
        self, request: bytes, body: bytes, sink: ResponseSink, timeout: float
    ) -> int:
        """Send a request; feed the answer to `sink`; return its status once it is complete.

        `timeout` bounds each wait for the worker's next bytes. Raises StaleConnection,
        BrokenResponse or TimeoutError; the connection is then closed, never reused."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._sink = sink
        self._done = done = loop.create_future()
        self.received = False
        self._last_read = loop.time()
        self._timer = loop.call_at(self._last_read + timeout, self._check_timeout, timeout)
        if body and len(body) < 65536:
            self.transport.write(request + body)
        else:
            self.transport.write(request)
            if body:
                self.transport.write(body)
        try:
            status = await done
        except BaseException:
            self.close()
            raise
        finally:
            self._timer.cancel()
            self._sink = None
            self._done = None
        return status

    def _check_timeout(self, timeout: float) -> None:
        # One timer per exchange, moved forward lazily: reads only note their time.
        loop = asyncio.get_running_loop()
        due = self._last_read + timeout
        if loop.time() < due:
            self._timer = loop.call_at(due, self._check_timeout, timeout)
        elif self._done is not None and not self._done.done():
            self._done.set_exception(TimeoutError())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._done is None:  # bytes nobody asked for: this connection is unusable
            self.close()
            return
        self.received = True
        self._last_read = asyncio.get_running_loop().time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(BrokenResponse(f"malformed answer: {error}"))
            return
        if self._sink is not None:
            self._sink.response_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool.forget(self)
        if self._done is not None and not self._done.done():
            if self.received:
                self._fail(BrokenResponse(f"connection closed mid-answer ({exc or 'EOF'})"))
            else:
                self._fail(StaleConnection(f"connection closed before any answer ({exc or 'EOF'})"))

    def pause_writing(self) -> None:  # we only ever write one request: nothing to pause
        pass

    def _fail(self, error: Exception) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(error)
        self.close()

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
        if status < 200 or self._sink is None or self._done is None:
            return
        self.keep_alive = self._parser.should_keep_alive()
        self._sink.response_end()
        if not self._done.done():
            self._done.set_result(status)


class UpstreamPool:
    """Keep-alive connections to one worker address, most recently used first."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[UpstreamConnection] = []
        self.open = 0

    async def acquire(self, fresh: bool = False) -> UpstreamConnection:
        """A connection to the worker; `fresh` never reuses one."""
        if not fresh:
            now = time.monotonic()
            while self._idle:
                connection = self._idle.pop()
                if now - connection.idle_since < POOL_KEEPALIVE and not (
                    connection.transport is None or connection.transport.is_closing()
                ):
                    return connection
                connection.close()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _transport, connection = await loop.create_connection(
                lambda: UpstreamConnection(self), self.host, self.port
            )
        self.open += 1
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        if connection.keep_alive and not (
            connection.transport is None or connection.transport.is_closing()
        ):
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
