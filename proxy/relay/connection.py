"""One client connection on the fast path: parses requests with httptools, one `Exchange` each,
and hands the connection to aiohttp when rules.handover says so.

The connection owns what outlives a request: the socket, the parser, the bytes read since the
last answer (for a handover), what a pipelining client sent while it was answered, and the
idle and body timers. Everything about one request and its answer is its Exchange's.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools

from . import answers, errors, rules
from .exchange import Exchange
from .handover import ClientStall, hand_over

if TYPE_CHECKING:
    from .port import PublicPort


class PublicConnection(asyncio.Protocol):
    """One client connection, served one request at a time until it is handed over."""

    def __init__(self, port: PublicPort) -> None:
        self.port = port
        self.forwarder = port.forwarder
        self.loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._stall = ClientStall(self.forwarder.body_timeout, self.abort)
        self._read: list[bytes] = []  # bytes since the last request boundary
        self._read_size = 0
        self._stash: list[bytes] = []  # bytes that came while a request was being answered
        # The request being read, then answered; None between requests.
        self.exchange: Exchange | None = None
        self._headers: list[tuple[bytes, bytes]] = []  # the exchange's, as they are parsed
        self._handover: rules.Handover | None = None
        self._busy = False  # the exchange is being answered
        self._idle_deadline = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.write_paused = False

    def __repr__(self) -> str:
        return f"<PublicConnection {self.exchange!r} busy={self._busy}>"

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.port.connections.add(self)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        if self._busy or self.write_paused:
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
        except httptools.HttpParserUpgrade:
            self._give_to_aiohttp(rules.Handover.UPGRADE)  # an upgrade or CONNECT as such
            return
        except httptools.HttpParserError:
            self._give_to_aiohttp(rules.Handover.MALFORMED)  # aiohttp answers it 400
            return
        exchange = self.exchange
        if self._handover is not None:
            self._give_to_aiohttp(self._handover)
        elif exchange is None or not exchange.headers_done:
            if rules.head_too_large(self._read_size):
                self._give_to_aiohttp(rules.Handover.LARGE_HEAD)
        elif exchange.complete:
            self._dispatch(exchange)
        elif self._body_timer is None:
            self._body_timer = self.loop.call_later(
                self.forwarder.body_timeout, self._body_timed_out
            )
            if rules.send_continue(exchange.head, exchange.http11):
                # The client waits for this before sending its body.
                assert self.transport is not None
                self.transport.write(rules.CONTINUE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.port.connection_closed(self)
        self._cancel_timers()
        if self._busy and self.exchange is not None:
            self.exchange.client_gone()

    def pause_writing(self) -> None:
        # The client reads slower than the worker answers: stop reading the worker, and the
        # client's next requests too, until it has taken what is buffered.
        self.write_paused = True
        self._stall.writes_paused()
        if self._busy and self.exchange is not None:
            self.exchange.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._stall.writes_resumed()
        if self._busy and self.exchange is not None:
            self.exchange.resume_reading()
        elif not self._busy:
            self._read_stash()

    # -- httptools callbacks ---------------------------------------------------------------

    # What a pipelined request's callbacks add to the exchange before it is handed over is
    # never used: the handover sends aiohttp the bytes read, not what was parsed of them.

    def on_message_begin(self) -> None:
        if self.exchange is not None:  # a second request in the same read: pipelining
            self._handover = rules.Handover.PIPELINED
            return
        self.exchange = exchange = Exchange(self)
        self._headers = exchange.headers

    def on_url(self, url: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None  # made by on_message_begin, which llhttp calls first
        exchange.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._handover is not None:
            return
        exchange = self.exchange
        assert exchange is not None
        parser = self._parser
        head = exchange.head = rules.request_head(exchange.headers)
        exchange.headers_done = True
        exchange.keep_alive = parser.should_keep_alive()
        exchange.http11 = parser.get_http_version() == "1.1"
        exchange.method = method = parser.get_method()
        read = self._read_size
        self._handover = rules.handover(
            head,
            method=method,
            target=exchange.url,
            # What was read is an upper bound of the head: counted only when over the limit.
            head_size=read if not rules.head_too_large(read) else exchange.head_size(),
            upgrade=parser.should_upgrade(),
            closing=self.forwarder.closing,
            max_body_size=self.forwarder.max_body_size,
        )

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
        exchange.body.append(body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        exchange.complete = True

    # -- one request after the other -------------------------------------------------------

    def _dispatch(self, exchange: Exchange) -> None:
        self._busy = True
        self._read = []
        self._read_size = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        exchange.dispatch()

    def exchange_finished(self, exchange: Exchange) -> None:
        """Its answer is out (or the client is gone): on to the next request."""
        self.exchange = None
        self._busy = False
        transport = self.transport
        assert transport is not None
        if exchange.close_after or self.must_close(exchange) or transport.is_closing():
            transport.close()
            return
        self._idle_deadline = self.loop.time() + self.port.keepalive_timeout
        if self._idle_timer is None:
            self._arm_idle_timer()
        if not self.write_paused:
            self._read_stash()

    def _read_stash(self) -> None:
        """Go on with what the client sent while its last request was being answered."""
        if self._stash and self.transport is not None:
            data = b"".join(self._stash)
            self._stash = []
            self.transport.resume_reading()
            self.data_received(data)

    def must_close(self, exchange: Exchange) -> bool:
        """The connection ends with this answer: the client asked, or we are shutting down."""
        return rules.closes_connection(exchange.keep_alive, self.forwarder.closing or self.closing)

    def write_answer(self, answer: answers.Answer, exchange: Exchange) -> None:
        """An answer of the sidecar's own, written as aiohttp writes it."""
        close = self.must_close(exchange)
        if close:
            exchange.close_after = True
        assert self.transport is not None
        self.transport.write(errors.raw(answer, close))

    # -- time limits and handover ----------------------------------------------------------

    def _arm_idle_timer(self) -> None:
        self._idle_deadline = self.loop.time() + self.port.keepalive_timeout
        self._idle_timer = self.loop.call_at(self._idle_deadline, self._idle_check)

    def _idle_check(self) -> None:
        # One timer per connection, moved forward lazily: a request only notes the time.
        self._idle_timer = None
        exchange = self.exchange
        if self._busy or (exchange is not None and exchange.headers_done):
            return  # re-armed when the answer is out; a body has its own limit
        if self.loop.time() < self._idle_deadline:
            self._idle_timer = self.loop.call_at(self._idle_deadline, self._idle_check)
        elif self.transport is not None:
            # Idle too long, or headers trickling in too slowly (slowloris): close.
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        exchange = self.exchange
        if self._busy or exchange is None or exchange.complete:
            return
        exchange.keep_alive = False
        exchange.status = 408
        self.write_answer(answers.body_timeout(), exchange)
        self.forwarder.observe(exchange.method.decode("ascii"), 408, 0.0)
        assert self.transport is not None
        self.transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._idle_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._body_timer = None
        self._stall.writes_resumed()

    def _give_to_aiohttp(self, why: rules.Handover) -> None:
        """Hand this connection, and every byte read since the last answer, to aiohttp."""
        transport = self.transport
        assert transport is not None
        self._cancel_timers()
        self.port.connection_closed(self)
        data = b"".join(self._read)
        self._read = []
        self._read_size = 0
        self.exchange = None
        hand_over(self.port.handover, transport, data, self.forwarder.body_timeout)

    def close_when_idle(self) -> None:
        """Shutting down: close now if no request is being answered, else after its answer."""
        self.closing = True
        if not self._busy and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
