"""The public port: every request goes to the active worker, bytes in and bytes out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from ...worker.control.supervisor import Supervisor, Worker
from . import errors

log = logging.getLogger(__name__)

VERSION_HEADER = istr("X-Model-Version")

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded. Trailer goes with
# Transfer-Encoding: we do not forward trailers. Lower-case: header names are compared that way
# (istr hashes by its original spelling, so a set of istr misses "x-hop" spelled "X-Hop").
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Rewritten by the client library for the worker's address and the body actually sent; Expect is
# answered by our own server (100-continue) before the body is read; X-Model-Version on a
# request is a routing instruction to us.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect", VERSION_HEADER.lower()}

# Bodies up to this size are read before forwarding, so a request can be sent again if the worker
# closed a pooled connection just as we wrote to it (the same trade as nginx's
# client_body_buffer_size). Larger bodies stream through and are not retried.
REPLAYABLE_BODY = 1 << 20

# The connection closed before any response byte: the worker never handled the request.
_STALE_CONNECTION = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HEALTH_PATHS = frozenset({"/ping", "/health"})

# How long a worker that closed a fresh connection without answering may take to be seen exiting.
# A SIGKILLed worker drops its connections before its exit is reaped (polled every 0.1 s), so
# the request is resent to its replacement; one still alive after this is sick, and the client
# gets a 502 instead of waiting for a replacement that is not coming.
DYING_GRACE = 0.5

RequestObserver = Callable[[str, int, float], None]
"""(method, status, seconds) for every request answered."""


def _listed_in_connection(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    named = headers.getall(hdrs.CONNECTION, ())
    return frozenset(t.strip().lower() for v in named for t in v.split(",") if t.strip())


def _without(headers: CIMultiDictProxy[str], dropped: frozenset[str]) -> CIMultiDict[str]:
    if hdrs.CONNECTION in headers:
        dropped = dropped | _listed_in_connection(headers)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in dropped)


def request_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return _without(headers, _NOT_FORWARDED)


def response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return _without(headers, HOP_BY_HOP)


class _BodyTooLarge(Exception):
    pass


class _WorkerGone(Exception):
    """The request never got an answer from the worker because the worker died: nothing
    listens on its port, it closed a fresh connection and exited, or it exited part-way
    through a small answer nothing of which was sent on yet."""


class StreamedBody:
    """A request body too large to hold, passed on as it arrives; `limit` bounds it and
    `idle_timeout` bounds each wait for the next piece, so a slow client cannot hold a worker's
    connection open for ever."""

    def __init__(
        self, prefix: bytes, stream: aiohttp.StreamReader, limit: int, idle_timeout: float
    ) -> None:
        self._prefix = prefix
        self._stream = stream
        self._limit = limit
        self._idle_timeout = idle_timeout
        self.exceeded = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = len(self._prefix)
        if self._prefix:
            yield self._prefix
        while True:
            async with asyncio.timeout(self._idle_timeout):
                chunk = await self._stream.readany()
            if not chunk:
                return
            total += len(chunk)
            if total > self._limit:
                self.exceeded = True
                raise _BodyTooLarge
            yield chunk


class Forwarder:
    """The request handler of the public port.

    A request's body is read (or its streaming started) before a worker is chosen, so a slow
    client never counts as in flight on a worker and cannot delay a swap's drain.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        observe: RequestObserver | None = None,
        *,
        queue_timeout: float = 30.0,
        max_body_size: int = 64 * 1024 * 1024,
        body_timeout: float = 60.0,
    ) -> None:
        self._supervisor = supervisor
        self.observe = observe or (lambda _m, _s, _t: None)
        self._queue_timeout = queue_timeout
        self.max_body_size = max_body_size
        self.body_timeout = body_timeout
        # Set on SIGTERM: /ping and /health say 503 so load balancers stop sending, and every
        # response closes its connection so clients reconnect to another replica.
        self.closing = False

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        status = 499  # nginx's code for a client that went away before the answer
        try:
            response = await self._handle(request)
            status = response.status
            if self.closing and not response.prepared:
                response.force_close()
            return response
        finally:
            self.observe(request.method, status, time.perf_counter() - started)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.closing and request.path in _HEALTH_PATHS:
            return errors.shutting_down()
        target = request.raw_path
        if not target.startswith("/"):
            target = request.rel_url.raw_path_qs  # absolute-form: the worker gets the path
            if not target.startswith("/"):  # `OPTIONS *`, or an authority (CONNECT)
                return errors.bad_target(request.raw_path)
        length = request.content_length
        if length is not None and length > self.max_body_size:
            return errors.body_too_large(self.max_body_size)
        if (
            request.version >= aiohttp.HttpVersion11
            and request.headers.get(hdrs.EXPECT, "").lower() == "100-continue"
        ):
            # aiohttp's low-level server (ours) leaves this to the handler. Other expectations
            # are ignored, as uvicorn ignores them.
            await request.writer.write(CONTINUE)
            request.writer.output_size = 0
        headers = request_headers(request.headers)
        try:
            data = await self._body(request, headers)
        except TimeoutError:
            return errors.body_timeout()
        except _BodyTooLarge:
            return errors.body_too_large(self.max_body_size)
        version = request.headers.get(VERSION_HEADER)
        chosen = await self.choose_worker(request.path, version)
        if isinstance(chosen, web.Response):
            return chosen
        worker = chosen
        while True:
            try:
                return await self._forward(request, target, worker, headers, data)
            except _WorkerGone as error:
                # The request never reached a worker: hold it for the restarted one.
                replacement = None
                if not isinstance(data, StreamedBody):
                    replacement = await self.replacement(request.path, worker, version)
                if replacement is None:
                    return errors.upstream_failed(str(error))
                worker = replacement
            except _BodyTooLarge:
                return errors.body_too_large(self.max_body_size)

    def serving_now(self) -> Worker | None:
        """The worker for a request that names no version, when one is ready now."""
        return self._supervisor.route()

    async def choose_worker(self, path: str, version: str | None) -> Worker | web.Response:
        """The worker for a request, or the answer to give instead."""
        if version is not None:
            # A client may ask for the version it started a session with (active, lingering
            # or canary); it goes to that worker or nowhere.
            worker = self._supervisor.worker_for(version.strip())
            if worker is None:
                active = self._supervisor.active
                return errors.version_not_served(version, active.version if active else None)
            return worker
        worker = self._supervisor.route()
        if worker is None:
            worker = await self._wait_for_worker(path, gone=None)
            if worker is None:
                return errors.not_ready()
        return worker

    async def replacement(self, path: str, gone: Worker, version: str | None) -> Worker | None:
        """The worker to resend a request to that `gone` never received, if any."""
        replacement = await self._wait_for_worker(path, gone=gone)
        if replacement is None or (version is not None and replacement.version != gone.version):
            return None
        return replacement

    async def worker_died(self, worker: Worker) -> bool:
        """Whether `worker` has exited or exits within DYING_GRACE."""
        if not worker.alive:
            return True
        try:
            async with asyncio.timeout(DYING_GRACE):
                await worker.wait_exit()
        except TimeoutError:
            return False
        return True

    async def _body(
        self, request: web.BaseRequest, headers: CIMultiDict[str]
    ) -> bytes | StreamedBody | None:
        if not request.body_exists:
            return None
        length = request.content_length
        if length is not None and length <= REPLAYABLE_BODY and request.content.is_eof():
            # The whole body came with the headers: nothing to wait for, no timer to arm.
            return await request.read()
        async with asyncio.timeout(self.body_timeout):
            if length is not None and length <= REPLAYABLE_BODY:
                return await request.read()
            # Unknown or large: hold up to the replay size, stream the rest.
            prefix = bytearray()
            while len(prefix) <= REPLAYABLE_BODY:
                chunk = await request.content.readany()
                if not chunk:
                    if len(prefix) > self.max_body_size:
                        raise _BodyTooLarge
                    return bytes(prefix)
                prefix += chunk
        if length is not None:
            headers[hdrs.CONTENT_LENGTH] = str(length)
        return StreamedBody(bytes(prefix), request.content, self.max_body_size, self.body_timeout)

    async def _wait_for_worker(self, path: str, gone: Worker | None) -> Worker | None:
        """Hold a request while the active worker restarts; never before the first worker was
        ready (a sidecar still starting says so at once) and never for health checks."""
        if path in _HEALTH_PATHS or not self._supervisor.served:
            return None
        return await self._supervisor.wait_for_worker(self._queue_timeout, exclude=gone)

    async def _forward(
        self,
        request: web.BaseRequest,
        target: str,
        worker: Worker,
        headers: CIMultiDict[str],
        data: bytes | StreamedBody | None,
    ) -> web.StreamResponse:
        url = URL(worker.base_url + target, encoded=True)
        sessions = (worker.session, worker.fresh_session)
        assert sessions[0] is not None and sessions[1] is not None
        # Counted before the first await: a swap that switches away from this worker now will
        # wait for this request before stopping it.
        worker.in_flight.enter()
        failed = True  # unless an answer below says otherwise: counts against a canary
        try:
            for attempt, session in enumerate(sessions):
                try:
                    upstream = await session.request(
                        request.method, url, headers=headers, data=data, allow_redirects=False
                    )
                except aiohttp.ClientConnectorError as error:
                    raise _WorkerGone(f"cannot connect: {error.os_error}") from error
                except _STALE_CONNECTION as error:
                    if isinstance(data, StreamedBody):
                        if data.exceeded:
                            raise _BodyTooLarge from error
                        return errors.upstream_failed(repr(error))
                    if attempt == 0:  # once more, on a connection of its own
                        log.debug("retrying %s %s after %r", request.method, request.path, error)
                        continue
                    if await self.worker_died(worker):
                        raise _WorkerGone(f"worker exited: {error!r}") from error
                    return errors.upstream_failed(repr(error))
                except (TimeoutError, aiohttp.ServerTimeoutError):
                    return errors.upstream_timeout()
                try:
                    response, failed = await self._relay(request, upstream, worker)
                finally:
                    upstream.release()
                return response
            raise AssertionError("unreachable")
        except asyncio.CancelledError:
            failed = False  # the client went away: not the worker's fault
            raise
        finally:
            worker.in_flight.leave(failed)

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, worker: Worker
    ) -> tuple[web.StreamResponse, bool]:
        """The worker's answer, relayed; and whether it counts as the worker's failure."""
        headers = response_headers(upstream.headers)
        headers[VERSION_HEADER] = worker.version
        length = upstream.content_length
        if (
            length is not None
            and length <= REPLAYABLE_BODY
            and request.method != "HEAD"
            and upstream.status not in (204, 304)
        ):
            # A small answer of known size: one write of headers and body, no chunk loop.
            try:
                body = await upstream.read()
            except TimeoutError as error:
                log.warning("upstream stalled mid-response: %r", error)
                return errors.upstream_timeout(), True  # as the fast path answers it
            except aiohttp.ClientError as error:
                log.warning("upstream failed mid-response, nothing sent yet: %r", error)
                if await self.worker_died(worker):
                    raise _WorkerGone(f"worker exited mid-answer: {error!r}") from error
                return errors.upstream_failed(repr(error)), True
            del headers[hdrs.CONTENT_LENGTH]
            # Not prepared yet: __call__ closes its connection when shutting down.
            answer = web.Response(
                status=upstream.status, reason=upstream.reason, headers=headers, body=body
            )
            return answer, answer.status >= 500
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(headers)
        if self.closing:
            response.force_close()
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (TimeoutError, aiohttp.ClientError) as error:
            # Headers are out: all we can do is cut the connection so the client sees a broken
            # response rather than a short one that looks whole.
            log.warning("upstream failed mid-response: %r", error)
            if request.transport is not None:
                request.transport.close()
            return response, True  # a cut answer is the worker's failure, whatever its status
        await response.write_eof()
        return response, response.status >= 500
