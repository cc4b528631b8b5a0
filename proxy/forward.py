"""The public port: every request goes to the active worker, bytes in and bytes out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from ..worker.swap import Supervisor, Worker
from . import errors

log = logging.getLogger(__name__)

VERSION_HEADER = istr("X-Model-Version")

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded. Trailer goes with
# Transfer-Encoding: we do not forward trailers.
HOP_BY_HOP = frozenset(
    istr(h)
    for h in (
        "Connection",
        "Proxy-Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
# Rewritten by the client library for the worker's address and the body actually sent; Expect is
# answered by our own server (100-continue) before the body is read.
_NOT_FORWARDED = HOP_BY_HOP | {hdrs.HOST, hdrs.CONTENT_LENGTH, hdrs.EXPECT}

# Bodies up to this size are read before forwarding, so a request can be sent again if the worker
# closed a pooled connection just as we wrote to it (the same trade as nginx's
# client_body_buffer_size). Larger bodies stream through and are not retried.
REPLAYABLE_BODY = 1 << 20

_RETRYABLE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)

RequestObserver = Callable[[str, int, float], None]
"""(method, status, seconds) for every request answered."""


def _listed_in_connection(headers: CIMultiDictProxy[str]) -> frozenset[istr]:
    named = headers.getall(hdrs.CONNECTION, ())
    return frozenset(istr(t.strip()) for v in named for t in v.split(",") if t.strip())


def request_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    extra = _listed_in_connection(headers) if hdrs.CONNECTION in headers else frozenset()
    return CIMultiDict(
        (k, v) for k, v in headers.items() if k not in _NOT_FORWARDED and k not in extra
    )


def response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    extra = _listed_in_connection(headers) if hdrs.CONNECTION in headers else frozenset()
    return CIMultiDict((k, v) for k, v in headers.items() if k not in HOP_BY_HOP and k not in extra)


class Forwarder:
    """The request handler of the public port."""

    def __init__(self, supervisor: Supervisor, observe: RequestObserver | None = None) -> None:
        self._supervisor = supervisor
        self._observe = observe or (lambda _m, _s, _t: None)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        worker = self._supervisor.active
        if worker is None:
            response: web.StreamResponse = errors.not_ready()
        else:
            # Counted before the first await: a swap that switches away from this worker now
            # will wait for this request before stopping it.
            worker.in_flight.enter()
            try:
                response = await self._forward(request, worker)
            finally:
                worker.in_flight.leave()
        self._observe(request.method, response.status, time.perf_counter() - started)
        return response

    async def _forward(self, request: web.BaseRequest, worker: Worker) -> web.StreamResponse:
        headers = request_headers(request.headers)
        data: bytes | aiohttp.StreamReader | None = None
        if request.body_exists:
            length = request.content_length
            if length is not None and length <= REPLAYABLE_BODY:
                data = await request.read()
            else:
                data = request.content
                if length is not None:
                    headers[hdrs.CONTENT_LENGTH] = str(length)
        url = URL(worker.base_url + request.raw_path, encoded=True)
        sessions = (worker.session, worker.fresh_session)
        assert sessions[0] is not None and sessions[1] is not None
        for attempt, session in enumerate(sessions):
            try:
                upstream = await session.request(
                    request.method, url, headers=headers, data=data, allow_redirects=False
                )
            except _RETRYABLE as error:
                # Closed before any response byte: the worker never handled it. Once more, on a
                # connection of its own, if we still hold the whole body.
                if attempt == 0 and not isinstance(data, aiohttp.StreamReader):
                    log.debug("retrying %s %s after %r", request.method, request.path, error)
                    continue
                return errors.upstream_failed(repr(error))
            except aiohttp.ClientConnectorError as error:
                return errors.upstream_failed(f"cannot connect: {error.os_error}")
            except (TimeoutError, aiohttp.ServerTimeoutError):
                return errors.upstream_timeout()
            try:
                return await self._relay(request, upstream, worker.version)
            finally:
                upstream.release()
        raise AssertionError("unreachable")

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, version: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(response_headers(upstream.headers))
        response.headers[VERSION_HEADER] = version
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
            return response
        await response.write_eof()
        return response
