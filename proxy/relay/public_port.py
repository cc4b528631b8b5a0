"""The public port: a lean HTTP/1.1 relay for the common request, aiohttp for every other one.

Nearly every request a model server sees is small: a body with a Content-Length, answered with
one response. Those are parsed here with httptools and relayed over raw keep-alive connections
(upstream.py). Through aiohttp's server and client the same request cost about five times the
CPU, on the core the worker needs (figures in benchmarks/README.md).

Anything else goes to aiohttp's server and `Forwarder`, with the bytes read so far, untouched:
a chunked, large or slow-to-start body, Expect, HEAD, an upgrade, pipelining, a request llhttp
rejects (aiohttp answers it 400), and every request once the sidecar is shutting down. The
handover happens before anything was forwarded and the connection stays with aiohttp after it,
so each of those behaviours has one implementation. Both paths share the Forwarder's routing
(choose_worker, replacement), its limits and its request metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

import httptools
from aiohttp import web
from yarl import URL

from ...worker.control.supervisor import Worker
from . import errors
from .forward import CONTINUE, HOP_BY_HOP, REPLAYABLE_BODY, Forwarder
from .upstream import BrokenResponse, CutShort, StaleConnection, UpstreamConnection, UpstreamPool

log = logging.getLogger(__name__)
access_log = logging.getLogger("aiohttp.access")

_HOP_BY_HOP = frozenset(name.encode() for name in HOP_BY_HOP)
# Request headers the fast path does not copy: hop-by-hop ones, those rewritten for the worker
# (Host, Content-Length), Expect (answered here, before the body is read), our routing header.
_NOT_COPIED = _HOP_BY_HOP | {b"host", b"content-length", b"x-model-version", b"expect"}
# Requests these headers describe need aiohttp's handling (see the module docstring).
_HANDED_OVER = frozenset({b"transfer-encoding", b"upgrade"})
# A request head (line and headers) longer than this goes to aiohttp, which enforces its own
# limits (8190 bytes a line or field: a 400): the fast path never buffers or relays more.
_HEAD_LIMIT = 8190
_NO_BODY_STATUSES = frozenset({204, 304})
_METHODS: dict[bytes, str] = {}


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


class PublicPort:
    """Listens on the public address; owns the client connections and the upstream pools."""

    def __init__(
        self,
        forwarder: Forwarder,
        *,
        access_log: bool = False,
        keepalive_timeout: float = 75.0,
    ) -> None:
        self.forwarder = forwarder
        self.access_log = access_log
        self.keepalive_timeout = keepalive_timeout
        self.handover = public_server(
            forwarder, access_log=access_log, keepalive_timeout=keepalive_timeout
        )
        self.connections: set[PublicConnection] = set()
        self._all_closed = asyncio.Event()
        self._pools: dict[str, UpstreamPool] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: PublicConnection(self), host, port, reuse_address=True, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def pool_for(self, worker: Worker) -> UpstreamPool:
        pool = self._pools.get(worker.base_url)
        if pool is None:
            # A new address means a new worker: forget pools of workers that are gone.
            for address, old in list(self._pools.items()):
                if old.open <= 0:
                    del self._pools[address]
            url = URL(worker.base_url)
            assert url.host is not None and url.port is not None
            pool = self._pools[worker.base_url] = UpstreamPool(url.host, url.port)
        return pool

    def connection_closed(self, connection: PublicConnection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._all_closed.set()

    async def close(self, timeout: float) -> None:
        """Stop accepting, let requests in progress finish (up to `timeout`), close the rest."""
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
        for pool in self._pools.values():
            pool.close()


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


class PublicConnection(asyncio.Protocol):
    """One client connection, served one request at a time until it is handed over."""

    def __init__(self, port: PublicPort) -> None:
        self._port = port
        self._forwarder = port.forwarder
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._stall = ClientStall(self._forwarder.body_timeout, self.abort)
        self._read: list[bytes] = []  # bytes since the last request boundary
        self._read_size = 0
        self._stash: list[bytes] = []  # bytes that came while a request was being answered
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._idle_deadline = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._upstream: UpstreamConnection | None = None
        self._worker: Worker | None = None
        self._fresh = False
        self._method = b""
        self._request_body = b""
        self._started = 0.0
        self._closing = False
        self._write_paused = False
        self._reset_request()
        self._reset_response()

    def _reset_request(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._headers_done = False
        self._complete = False
        self._hand_over = False
        self._copied = b""
        self._version: bytes | None = None
        self._length: int | None = None
        self._keep_alive = True
        self._http11 = True
        self._expects_continue = False

    def _reset_response(self) -> None:
        self._model_version = b""
        self._out: list[bytes] = []
        self._head_sent = False
        self._holding = False
        self._chunked = False
        self._close_after = False
        self._status = 499  # nginx's code for a client that went away before the answer

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._port.connections.add(self)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        if self._busy or self._write_paused:
            # Pipelined, or sent while the client does not read our answers: read on once this
            # request is answered and the client has taken it.
            self._stash.append(data)
            assert self.transport is not None
            self.transport.pause_reading()
            return
        self._read.append(data)
        self._read_size += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._give_to_aiohttp()  # a 400 for a bad request; an upgrade or CONNECT as such
            return
        if self._hand_over or (not self._headers_done and self._read_size > _HEAD_LIMIT):
            self._give_to_aiohttp()
        elif self._complete:
            self._dispatch()
        elif self._headers_done and self._body_timer is None:
            self._body_timer = self._loop.call_later(
                self._forwarder.body_timeout, self._body_timed_out
            )
            if self._expects_continue:  # the client waits for this before sending its body
                assert self.transport is not None
                self.transport.write(CONTINUE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._port.connection_closed(self)
        self._cancel_timers()
        if not self._busy:
            return
        # The client went away mid-request: stop waiting, drop the worker's answer (a worker
        # does not keep computing answers nobody will read), and do not hold it against it.
        if self._task is not None:
            self._task.cancel()
        if self._upstream is not None:
            self._upstream.abandon()
            self._upstream = None
        self._status = 499
        self._finish(failed=False)

    def pause_writing(self) -> None:
        # The client reads slower than the worker answers: stop reading the worker, and the
        # client's next requests too, until it has taken what is buffered.
        self._write_paused = True
        self._stall.writes_paused()
        if self._upstream is not None:
            self._upstream.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._stall.writes_resumed()
        if self._upstream is not None:
            self._upstream.resume_reading()
        elif not self._busy:
            self._read_stash()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:  # a second request in the same read: pipelining
            self._hand_over = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._hand_over:
            return
        self._headers_done = True
        parser = self._parser
        copied: list[bytes] = []
        listed: bytes | None = None
        expects_continue = False
        for name, value in self._headers:
            lowered = name.lower()
            if lowered in _NOT_COPIED or lowered in _HANDED_OVER:
                if lowered in _HANDED_OVER:
                    self._hand_over = True
                elif lowered == b"content-length":
                    self._length = int(value)  # llhttp has checked it
                elif lowered == b"connection":
                    listed = value if listed is None else listed + b"," + value
                elif lowered == b"x-model-version" and self._version is None:
                    self._version = value
                elif lowered == b"expect":
                    if value.lower() == b"100-continue":
                        expects_continue = True
                    else:
                        self._hand_over = True  # aiohttp's answer to what we do not know
                continue
            copied.append(b"%s: %s\r\n" % (name, value))
        if listed is not None:
            copied = _without_listed(copied, listed)
        self._copied = b"".join(copied)
        self._keep_alive = parser.should_keep_alive()
        self._http11 = parser.get_http_version() == "1.1"
        # An HTTP/1.0 client's expectation is ignored (RFC 9110 §10.1.1): it sends the body.
        self._expects_continue = expects_continue and self._http11
        if (
            parser.get_method() == b"HEAD"
            or (self._read_size > _HEAD_LIMIT and self._head_size() > _HEAD_LIMIT)
            or not self._url.startswith(b"/")  # absolute-form or `*`: aiohttp sorts them out
            or parser.should_upgrade()
            or self._forwarder.closing
            or (
                self._length is not None
                and self._length > min(REPLAYABLE_BODY, self._forwarder.max_body_size)
            )
        ):
            self._hand_over = True

    def _head_size(self) -> int:
        """The request head's size, near enough: it came in the same read as a body."""
        return len(self._url) + sum(len(name) + len(value) + 4 for name, value in self._headers)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    # -- the request's way -----------------------------------------------------------------
    #
    # When a worker is serving and one of its pooled connections is idle, the request is sent
    # at once and its answer comes back through callbacks (exchange_done, exchange_failed):
    # no task, no future. A task is made only to wait: for a worker to be ready, to connect,
    # or for the one retry after a stale connection.

    def _dispatch(self) -> None:
        self._busy = True
        self._read = []
        self._read_size = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._method = self._parser.get_method()
        self._request_body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._started = time.perf_counter()
        self._reset_response()
        worker = self._forwarder.serving_now() if self._version is None else None
        if worker is not None:
            connection = self._port.pool_for(worker).idle()
            if connection is not None:
                self._use(worker)
                self._send(connection, fresh=False)
                return
        self._task = self._loop.create_task(self._guarded(self._route_and_send(worker)))

    async def _guarded(self, steps: Awaitable[None]) -> None:
        try:
            await steps
        except Exception:
            log.exception("failed to answer %s", self._url)
            self._broken_or(errors.upstream_failed("internal error in the sidecar"))
            self._finish(failed=True)

    async def _route_and_send(self, worker: Worker | None) -> None:
        if worker is None:
            chosen = await self._forwarder.choose_worker(self._path(), self._version_text())
            if isinstance(chosen, web.Response):
                self._own_answer(chosen)
                self._finish(failed=False)
                return
            worker = chosen
        self._use(worker)
        await self._connect_and_send(fresh=False)

    def _use(self, worker: Worker) -> None:
        # Counted before anything is sent: a swap that switches away from this worker now will
        # wait for this request before stopping it.
        worker.in_flight.enter()
        self._worker = worker

    async def _connect_and_send(self, fresh: bool) -> None:
        while True:
            worker = self._worker
            assert worker is not None
            pool = self._port.pool_for(worker)
            connection = None if fresh else pool.idle()
            if connection is None:
                try:
                    connection = await pool.connect()
                except (OSError, TimeoutError) as error:
                    # Nothing listens: the worker died and its exit is not yet noticed.
                    if await self._moved_off(worker, f"cannot connect: {error}"):
                        fresh = False
                        continue
                    return
            self._send(connection, fresh)
            return

    async def _moved_off(self, gone: Worker, reason: str) -> bool:
        """The request got no answer from `gone`, which died: hold it for the worker that
        replaces it (True), or answer 502 when none comes (False)."""
        gone.in_flight.leave(True)
        self._worker = None
        replacement = await self._forwarder.replacement(self._path(), gone, self._version_text())
        if replacement is None:
            self._own_answer(errors.upstream_failed(reason))
            self._finish(failed=False)
            return False
        self._use(replacement)
        return True

    async def _resend_unless_alive(self, error: StaleConnection | CutShort) -> None:
        # A fresh connection closed without an answer too, or an answer stopped before any of it
        # went to the client: a dying worker (resend elsewhere) or a sick one (502).
        worker = self._worker
        assert worker is not None
        self._reset_response()  # what was held of a cut answer is dropped
        if not await self._forwarder.worker_died(worker):
            self._own_answer(errors.upstream_failed(str(error)))
            self._finish(failed=True)
        elif await self._moved_off(worker, f"worker exited: {error}"):
            await self._connect_and_send(fresh=False)

    def _send(self, connection: UpstreamConnection, fresh: bool) -> None:
        worker = self._worker
        assert worker is not None
        self._upstream = connection
        self._fresh = fresh
        # Nothing of an answer has come yet (a retry follows a close before any byte).
        self._model_version = worker.version.encode()
        body = self._request_body
        length = b"" if self._length is None and not body else b"Content-Length: %d\r\n" % len(body)
        head = b"%s %s HTTP/1.1\r\n%s%s%s\r\n" % (
            self._method,
            self._url,
            connection.pool.host_header,
            self._copied,
            length,
        )
        connection.start(head, body, self, worker.read_timeout)
        if self._write_paused:
            connection.pause_reading()  # the client has not taken the last answer yet

    def exchange_done(self, status: int) -> None:
        connection, self._upstream = self._upstream, None
        assert connection is not None
        connection.pool.release(connection)
        self._finish(failed=status >= 500)

    def exchange_failed(self, error: Exception) -> None:
        self._upstream = None
        if isinstance(error, StaleConnection):
            if self._fresh:
                self._task = self._loop.create_task(self._guarded(self._resend_unless_alive(error)))
            else:
                log.debug("retrying %s after %s", self._url, error)  # once, on a new connection
                steps = self._connect_and_send(fresh=True)
                self._task = self._loop.create_task(self._guarded(steps))
            return
        if isinstance(error, CutShort) and not self._head_sent:
            # Held whole (response_head), so the client has seen nothing: a worker that died
            # mid-answer costs it nothing, the request goes to the replacement.
            log.warning("upstream failed mid-response, nothing sent yet: %s", error)
            self._task = self._loop.create_task(self._guarded(self._resend_unless_alive(error)))
            return
        if isinstance(error, TimeoutError):
            self._broken_or(errors.upstream_timeout())
        else:
            if isinstance(error, BrokenResponse):
                log.warning("upstream failed mid-response: %s", error)
            self._broken_or(errors.upstream_failed(str(error)))
        self._finish(failed=True)

    def _finish(self, failed: bool) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.in_flight.leave(failed)
        seconds = time.perf_counter() - self._started
        method = self._method
        name = _METHODS.get(method) or _METHODS.setdefault(method, method.decode("ascii"))
        self._forwarder.observe(name, self._status, seconds)
        if self._port.access_log:
            self._log_access(name, seconds)
        self._request_done()

    def _path(self) -> str:
        return self._url.partition(b"?")[0].decode("latin-1")

    def _version_text(self) -> str | None:
        return self._version.decode("latin-1") if self._version is not None else None

    def _broken_or(self, answer: web.Response) -> None:
        if self._head_sent:
            # Headers are out: all we can do is cut the connection so the client sees a broken
            # response rather than a short one that looks whole.
            self._close_after = True
            assert self.transport is not None
            self.transport.close()
        else:
            self._own_answer(answer)

    def _request_done(self) -> None:
        self._task = None
        self._busy = False
        self._reset_request()
        transport = self.transport
        assert transport is not None
        if self._close_after or self._must_close() or transport.is_closing():
            transport.close()
            return
        self._idle_deadline = self._loop.time() + self._port.keepalive_timeout
        if self._idle_timer is None:
            self._arm_idle_timer()
        if not self._write_paused:
            self._read_stash()

    def _read_stash(self) -> None:
        """Go on with what the client sent while its last request was being answered."""
        if self._stash and self.transport is not None:
            data = b"".join(self._stash)
            self._stash = []
            self.transport.resume_reading()
            self.data_received(data)

    # -- the answer, as upstream.ResponseSink ----------------------------------------------

    def response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self._status = status
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        listed: bytes | None = None
        length: int | None = None
        for name, value in headers:
            lowered = name.lower()
            if lowered in _HOP_BY_HOP:
                if lowered == b"connection":
                    listed = value if listed is None else listed + b"," + value
                continue
            if lowered == b"content-length":
                length = int(value)  # llhttp has checked it
            elif lowered == b"x-model-version":
                continue  # ours is the one that counts
            lines.append(b"%s: %s\r\n" % (name, value))
        if listed is not None:
            lines = lines[:1] + _without_listed(lines[1:], listed)
        lines.append(b"X-Model-Version: %s\r\n" % self._model_version)
        # An answer of known, replayable size goes out whole, once it is all in: uvicorn writes
        # the head and the body separately, and a worker killed between the two would otherwise
        # leave the client a broken answer instead of one from the replacement. Otherwise both
        # come in one read: holding costs nothing (syscalls per request unchanged).
        self._holding = length is not None and length <= REPLAYABLE_BODY
        if length is None and status not in _NO_BODY_STATUSES:
            if self._http11:
                lines.append(b"Transfer-Encoding: chunked\r\n")
                self._chunked = True
            else:
                self._close_after = True  # an HTTP/1.0 client reads to the end
        if self._close_after or self._must_close():
            self._close_after = True
            lines.append(b"Connection: close\r\n")
        elif not self._http11:
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self._out.append(b"".join(lines))

    def response_body(self, data: bytes) -> None:
        if self._chunked:
            self._out.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self._out.append(data)

    def response_flush(self) -> None:
        if self._out and not self._holding:
            out = self._out
            self._out = []
            assert self.transport is not None
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            self._head_sent = True

    def response_end(self) -> None:
        if self._chunked:
            self._out.append(b"0\r\n\r\n")
        self._holding = False
        self.response_flush()

    def _must_close(self) -> bool:
        """The connection ends with this answer: the client asked, or we are shutting down."""
        return not self._keep_alive or self._forwarder.closing or self._closing

    def _own_answer(self, response: web.Response) -> None:
        """An answer of the sidecar's own (errors.py), written as aiohttp would."""
        self._status = response.status
        self._out = []
        body = response.body
        assert isinstance(body, bytes)
        lines = [b"HTTP/1.1 %d %s\r\n" % (response.status, response.reason.encode())]
        for name, value in response.headers.items():
            if name.lower() != "content-length":
                lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"Content-Length: %d\r\nDate: %s\r\n" % (len(body), _http_date()))
        if self._must_close():
            self._close_after = True
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        lines.append(body)
        assert self.transport is not None
        self.transport.write(b"".join(lines))

    # -- time limits and handover ----------------------------------------------------------

    def _arm_idle_timer(self) -> None:
        self._idle_deadline = self._loop.time() + self._port.keepalive_timeout
        self._idle_timer = self._loop.call_at(self._idle_deadline, self._idle_check)

    def _idle_check(self) -> None:
        # One timer per connection, moved forward lazily: a request only notes the time.
        self._idle_timer = None
        if self._busy or self._headers_done:
            return  # re-armed when the answer is out; a body has its own limit
        if self._loop.time() < self._idle_deadline:
            self._idle_timer = self._loop.call_at(self._idle_deadline, self._idle_check)
        elif self.transport is not None:
            # Idle too long, or headers trickling in too slowly (slowloris): close.
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self._busy or self._complete:
            return
        self._keep_alive = False
        self._own_answer(errors.body_timeout())
        self._forwarder.observe(self._parser.get_method().decode("ascii"), 408, 0.0)
        assert self.transport is not None
        self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._idle_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._body_timer = None
        self._stall.writes_resumed()

    def _give_to_aiohttp(self) -> None:
        """Hand this connection, and every byte read since the last answer, to aiohttp."""
        transport = self.transport
        assert transport is not None
        self._cancel_timers()
        self._port.connection_closed(self)
        data = b"".join(self._read)
        self._read = []
        self._read_size = 0
        handler = self._port.handover()
        stall = ClientStall(self._forwarder.body_timeout, transport.abort)
        transport.set_protocol(HandedOver(handler, stall))
        handler.connection_made(transport)
        if data:
            handler.data_received(data)

    def close_when_idle(self) -> None:
        """Shutting down: close now if no request is being answered, else after its answer."""
        self._closing = True
        if not self._busy and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _log_access(self, method: str, seconds: float) -> None:
        peer: Any = self.transport.get_extra_info("peername") if self.transport else None
        access_log.info(
            '%s "%s %s HTTP/%s" %d %.6f',
            peer[0] if peer else "-",
            method,
            self._url.decode("latin-1"),
            "1.1" if self._http11 else "1.0",
            self._status,
            seconds,
        )


def _without_listed(lines: list[bytes], listed: bytes) -> list[bytes]:
    """`lines` ("Name: value\\r\\n") without the headers a Connection header names."""
    names = {token.strip().lower() for token in listed.split(b",") if token.strip()}
    return [line for line in lines if line.partition(b":")[0].lower() not in names]


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]
