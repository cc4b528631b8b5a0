"""One request on the fast path and its answer, from the parsed head to the last byte out.

An Exchange is made per request (as uvicorn's RequestResponseCycle): what was read of the
request, the worker it went to, the upstream connection and the state of the answer live here
and die with it, so nothing is reset by hand between requests.

When a worker is serving and one of its pooled connections is idle, the request is sent at once
and its answer comes back through callbacks (upstream.ResponseSink): no task, no future. A task
is made only to wait: for a worker to be ready, to connect, to learn whether a worker died, or
for the one retry after a stale connection. What a failure becomes is rules.after_failure's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ...worker.control.shadow import Reply, ShadowPair
from ...worker.control.worker import Worker
from . import answers, rules
from .forward import decoded
from .upstream import BrokenResponse, CutShort, StaleConnection, UpstreamConnection

if TYPE_CHECKING:
    from .connection import PublicConnection

log = logging.getLogger(__name__)
access_log = logging.getLogger("aiohttp.access")

_METHODS: dict[bytes, str] = {}


def _failure(error: Exception) -> rules.Failure:
    if isinstance(error, StaleConnection):
        return rules.Failure.STALE
    if isinstance(error, CutShort):
        return rules.Failure.CUT
    if isinstance(error, BrokenResponse):
        return rules.Failure.MALFORMED
    return rules.Failure.TIMEOUT


class Exchange:
    """A request read by a PublicConnection, and its answer (as upstream.ResponseSink)."""

    __slots__ = (
        "_client",
        "_task",
        "body",
        "chunked",
        "close_after",
        "complete",
        "entered",
        "head",
        "head_sent",
        "headers",
        "headers_done",
        "holding",
        "http11",
        "keep_alive",
        "method",
        "model_version",
        "out",
        "retried",
        "shadow",
        "shadow_body",
        "started",
        "status",
        "upstream",
        "url",
        "worker",
    )

    def __init__(self, client: PublicConnection) -> None:
        self._client = client
        # The request, as parsed
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.head = _NO_HEAD
        self.method = b""
        self.headers_done = False
        self.complete = False
        self.keep_alive = True
        self.http11 = True
        # Its way
        self.started = 0.0
        self.entered = 0.0  # when its worker took it
        self.worker: Worker | None = None
        self.upstream: UpstreamConnection | None = None
        self.retried = False  # this is the one retry on a new connection
        self._task: asyncio.Task[None] | None = None
        self.shadow: ShadowPair | None = None  # its copy to a version under shadow
        self.shadow_body: bytes | None = None  # the answer's body, held whole, for the pair
        # Its answer
        self.status = rules.CLIENT_GONE  # until it is answered
        self.model_version = b""
        self.out: list[bytes] = []
        self.head_sent = False
        self.holding = False
        self.chunked = False
        self.close_after = False

    @property
    def state(self) -> str:
        """Where it is, for logs and debugging (as mitmproxy names a stream's state)."""
        if self.head_sent:
            return "answering"
        if self.upstream is not None:
            return "at the worker"
        if self._task is not None:
            return "waiting"
        return "dispatched" if self.started else "complete" if self.complete else "reading"

    def __repr__(self) -> str:
        return f"<Exchange {self.method.decode()} {self.url[:60]!r} {self.state} {self.status}>"

    def head_size(self) -> int:
        """The request head's size, near enough: it came in the same read as a body."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    # -- the request's way -----------------------------------------------------------------

    def dispatch(self) -> None:
        """The request is in: send it."""
        self.started = time.perf_counter()
        self.body = [b"".join(self.body)] if len(self.body) > 1 else self.body
        client = self._client
        if client.forwarder.shadowing:
            self._copy_to_shadow()
        worker = client.forwarder.serving_now() if self.head.version is None else None
        if worker is not None:
            connection = client.port.pools.raw(worker).idle()
            if connection is not None:
                self._use(worker)
                self._send(connection, retried=False)
                return
        self._wait(self._route_and_send(worker))

    def _copy_to_shadow(self) -> None:
        self.shadow = self._client.forwarder.shadow_copy(
            self.method,
            path=self._path(),
            target=self.url.decode("latin-1"),
            version=self.head.version,
            headers=lambda: decoded(self.head.kept),
            body=self.body[0] if self.body else b"",
        )

    def _wait(self, steps: Awaitable[None]) -> None:
        self._task = self._client.loop.create_task(self._guarded(steps))

    async def _guarded(self, steps: Awaitable[None]) -> None:
        try:
            await steps
        except Exception:
            log.exception("failed to answer %s", self.url)
            self._end(
                rules.after_failure(
                    rules.Failure.MALFORMED, retried=True, sent=self.head_sent, replayable=True
                ),
                "internal error in the sidecar",
            )

    async def _route_and_send(self, worker: Worker | None) -> None:
        if worker is None:
            chosen = await self._client.forwarder.choose_worker(self._path(), self._version())
            if isinstance(chosen, answers.Answer):
                self._answer(chosen)
                self._finish(failed=False)
                return
            worker = chosen
        self._use(worker)
        await self._connect_and_send(retried=False)

    def _use(self, worker: Worker) -> None:
        # Counted before anything is sent: a swap that switches away from this worker now will
        # wait for this request before stopping it.
        worker.in_flight.enter()
        self.entered = time.perf_counter()
        self.worker = worker

    async def _connect_and_send(self, retried: bool) -> None:
        while True:
            worker = self.worker
            assert worker is not None
            pool = self._client.port.pools.raw(worker)
            connection = None if retried else pool.idle()
            if connection is None:
                try:
                    connection = await pool.connect()
                except (OSError, TimeoutError) as error:
                    outcome = rules.after_failure(
                        rules.Failure.CONNECT, retried=retried, sent=False, replayable=True
                    )
                    if outcome is rules.Outcome.RESEND and await self._moved_off(
                        worker, f"cannot connect: {error}"
                    ):
                        retried = False
                        continue
                    return
            self._send(connection, retried)
            return

    async def _moved_off(self, gone: Worker, reason: str) -> bool:
        """The request got no answer from `gone`, which died: hold it for the worker that
        replaces it (True), or answer 502 when none comes (False)."""
        gone.in_flight.leave(502, time.perf_counter() - self.entered)
        self.worker = None
        replacement = await self._client.forwarder.replacement(self._path(), gone, self._version())
        if replacement is None:
            self._answer(answers.upstream_failed(reason))
            self._finish(failed=False)
            return False
        self._use(replacement)
        return True

    async def _after_close(self, failure: rules.Failure, error: Exception) -> None:
        # A fresh connection closed without an answer too, or an answer stopped before any of
        # it went to the client: a dying worker (resend elsewhere) or a sick one (502).
        worker = self.worker
        assert worker is not None
        self._drop_answer()  # what was held of a cut answer is dropped
        outcome = await self._client.forwarder.after_failure(
            worker, failure, retried=True, sent=False, replayable=True
        )
        if outcome is not rules.Outcome.RESEND:
            self._end(outcome, str(error))
        elif await self._moved_off(worker, f"worker exited: {error}"):
            await self._connect_and_send(retried=False)

    def _send(self, connection: UpstreamConnection, retried: bool) -> None:
        worker = self.worker
        assert worker is not None
        self.upstream = connection
        self.retried = retried
        # Nothing of an answer has come yet (a retry follows a close before any byte).
        self.model_version = worker.version.encode()
        body = self.body[0] if self.body else b""
        length = (
            b""
            if self.head.length is None and not body
            else b"Content-Length: %d\r\n" % (len(body))
        )
        request = b"%s %s HTTP/1.1\r\n%s%s%s\r\n" % (
            self.method,
            self.url,
            connection.pool.host_header,
            rules.header_lines(self.head.kept),
            length,
        )
        client = self._client
        connection.start(request, body, self, client.port.pools.read_timeout)
        if client.write_paused:
            connection.pause_reading()  # the client has not taken the last answer yet

    # -- how it ends -----------------------------------------------------------------------

    def exchange_done(self, status: int) -> None:
        connection, self.upstream = self.upstream, None
        assert connection is not None
        connection.pool.release(connection)
        self._finish(failed=False)  # whatever its status: that is what the worker said

    def exchange_failed(self, error: Exception) -> None:
        self.upstream = None
        failure = _failure(error)
        outcome = rules.after_failure(
            failure, retried=self.retried, sent=self.head_sent, replayable=True
        )
        if outcome is rules.Outcome.RETRY:
            log.debug("retrying %s after %s", self.url, error)  # once, on a new connection
            self._wait(self._connect_and_send(retried=True))
        elif outcome is rules.Outcome.ASK:
            if failure is rules.Failure.CUT:
                # Held whole (response_head), so the client has seen nothing: a worker that died
                # mid-answer costs it nothing, the request goes to the replacement.
                log.warning("upstream failed mid-response, nothing sent yet: %s", error)
            self._wait(self._after_close(failure, error))
        else:
            if isinstance(error, BrokenResponse):
                log.warning("upstream failed mid-response: %s", error)
            self._end(outcome, str(error))

    def _end(self, outcome: rules.Outcome, reason: str) -> None:
        """An outcome that ends the exchange as a failure of the worker's."""
        if outcome is rules.Outcome.CUT:
            # Headers are out: all we can do is cut the connection so the client sees a broken
            # response rather than a short one that looks whole.
            self.close_after = True
            transport = self._client.transport
            assert transport is not None
            transport.close()
        else:
            answer = rules.failure_answer(outcome, reason, self._client.forwarder.max_body_size)
            self._answer(answer)
        self._finish(failed=True)

    def client_gone(self) -> None:
        """The client went away mid-request: stop waiting, drop the worker's answer (a worker
        does not keep computing answers nobody will read), and do not hold it against it."""
        if self._task is not None:
            self._task.cancel()
        if self.upstream is not None:
            self.upstream.abandon()
            self.upstream = None
        self.status = rules.CLIENT_GONE
        self._finish(failed=False)

    def _finish(self, failed: bool) -> None:
        worker, self.worker = self.worker, None
        now = time.perf_counter()
        if worker is not None:
            worker.in_flight.leave(rules.worker_status(self.status, failed), now - self.entered)
        self._task = None
        client = self._client
        seconds = now - self.started
        if self.shadow is not None and self.status != rules.CLIENT_GONE:
            self.shadow.primary_answered(Reply(self.status, self.shadow_body, seconds))
        method = self.method
        name = _METHODS.get(method) or _METHODS.setdefault(method, method.decode("ascii"))
        client.forwarder.observe(name, self.status, seconds)
        if client.port.access_log:
            self._log_access(name, seconds)
        client.exchange_finished(self)

    def _path(self) -> str:
        return self.url.partition(b"?")[0].decode("latin-1")

    def _version(self) -> str | None:
        version = self.head.version
        return version.decode("latin-1") if version is not None else None

    # -- the answer, as upstream.ResponseSink ----------------------------------------------

    def pause_reading(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_reading(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        head = rules.response_head(headers)
        # Held whole, if small: in one read anyway, so holding costs nothing (syscalls per
        # request unchanged), and a worker killed between head and body costs the client
        # nothing (see rules.hold_whole).
        self.holding = rules.hold_whole(head.length, status)
        framing = rules.framing(
            head.length,
            status,
            http11=self.http11,
            must_close=self.close_after or self._client.must_close(self),
        )
        self.chunked = framing.chunked
        self.close_after = framing.close
        self.out.append(
            b"HTTP/1.1 %d %s\r\n%sX-Model-Version: %s\r\n%s%s\r\n"
            % (
                status,
                reason,
                rules.header_lines(head.kept),
                self.model_version,
                b"Transfer-Encoding: chunked\r\n" if framing.chunked else b"",
                framing.connection,
            )
        )

    def response_body(self, data: bytes) -> None:
        if self.chunked:
            self.out.append(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.out.append(data)

    def response_flush(self) -> None:
        if self.out and not self.holding:
            out = self.out
            self.out = []
            transport = self._client.transport
            assert transport is not None
            transport.write(out[0] if len(out) == 1 else b"".join(out))
            self.head_sent = True

    def response_end(self) -> None:
        if self.chunked:
            self.out.append(b"0\r\n\r\n")
        if self.shadow is not None and self.holding:
            self.shadow_body = b"".join(self.out[1:])  # what follows the head
        self.holding = False
        self.response_flush()

    def _drop_answer(self) -> None:
        """A cut answer nothing of which went out: the next worker's answer replaces it."""
        self.status = rules.CLIENT_GONE
        self.out = []
        self.holding = self.chunked = self.close_after = False

    def _answer(self, answer: answers.Answer) -> None:
        self.status = answer.status
        self.out = []
        self._client.write_answer(answer, self)

    def _log_access(self, method: str, seconds: float) -> None:
        transport = self._client.transport
        peer: Any = transport.get_extra_info("peername") if transport else None
        access_log.info(
            '%s "%s %s HTTP/%s" %d %.6f',
            peer[0] if peer else "-",
            method,
            self.url.decode("latin-1"),
            "1.1" if self.http11 else "1.0",
            self.status,
            seconds,
        )


_NO_HEAD = rules.RequestHead([])
