"""aiohttp's side of the public port: the requests the fast path hands over, relayed with
aiohttp's client. Both paths share this module's routing (choose_worker, replacement,
worker_died); every rule they follow is in rules.py."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, istr
from yarl import URL

from ...worker.control.shadow import Reply, ShadowPair, ShadowRun
from ...worker.control.worker import Worker
from . import answers, errors, rules
from .pools import STALE_CONNECTION, Pools
from .shadow import Shadower

log = logging.getLogger(__name__)

VERSION_HEADER = istr(rules.VERSION_HEADER)

RequestObserver = Callable[[str, int, float], None]
"""(method, status, seconds) for every request answered."""


class RolesRead(rules.RoleView[Worker], Protocol):
    @property
    def shadow(self) -> ShadowRun | None:
        """The shadow run, while copies of live predictions go to a new version."""


class Supervision(Protocol):
    """What the relay reads of the supervisor."""

    @property
    def roles(self) -> RolesRead: ...
    @property
    def served(self) -> bool: ...
    async def wait_for_worker(
        self, timeout: float, exclude: Worker | None = None
    ) -> Worker | None: ...
    def workers(self) -> list[tuple[str, Worker]]: ...


def decoded(headers: rules.Headers) -> CIMultiDict[str]:
    """Headers as aiohttp's parser gives them."""
    return CIMultiDict(
        (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        for name, value in headers
    )


def _bytes(body: object) -> bytes | None:
    return body if isinstance(body, bytes) else None


def version_text(head: rules.RequestHead) -> str | None:
    return head.version.decode("latin-1") if head.version is not None else None


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
        supervisor: Supervision,
        observe: RequestObserver | None = None,
        *,
        queue_timeout: float = 30.0,
        max_body_size: int = 64 * 1024 * 1024,
        body_timeout: float = 60.0,
        read_timeout: float = 70.0,
    ) -> None:
        self._supervisor = supervisor
        self.observe = observe or (lambda _m, _s, _t: None)
        self._queue_timeout = queue_timeout
        self.max_body_size = max_body_size
        self.body_timeout = body_timeout
        # Connections to the workers, for both paths; `read_timeout` bounds each wait for a
        # worker's next bytes.
        self.pools = Pools(read_timeout, lambda: (w for _role, w in supervisor.workers()))
        self.shadower = Shadower(self.pools)
        # Set on SIGTERM: /ping and /health say 503 so load balancers stop sending, and every
        # response closes its connection so clients reconnect to another replica.
        self.closing = False

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        status = rules.CLIENT_GONE  # unless it is answered
        try:
            response = await self._handle(request)
            status = response.status
            if not response.prepared and rules.closes_connection(True, self.closing):
                response.force_close()
            return response
        finally:
            self.observe(request.method, status, time.perf_counter() - started)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw_target = request.raw_path
        target = rules.upstream_target(raw_target, request.rel_url.raw_path_qs)
        refusal = rules.refusal(
            request.path,
            raw_target,
            target,
            request.content_length,
            closing=self.closing,
            max_body_size=self.max_body_size,
        )
        if refusal is not None:
            return errors.response(refusal)
        assert target is not None
        head = rules.request_head(request.raw_headers)
        if rules.send_continue(head, request.version >= aiohttp.HttpVersion11):
            # aiohttp's low-level server (ours) leaves this to the handler.
            await request.writer.write(rules.CONTINUE)
            request.writer.output_size = 0
        headers = decoded(head.kept)
        try:
            data = await self._body(request, headers)
        except TimeoutError:
            return errors.response(answers.body_timeout())
        except _BodyTooLarge:
            return errors.response(answers.body_too_large(self.max_body_size))
        version = version_text(head)
        chosen = await self.choose_worker(request.path, version)
        if isinstance(chosen, answers.Answer):
            return errors.response(chosen)
        worker = chosen
        pair = self.shadow_copy(
            request.method,
            path=request.path,
            target=target,
            version=version,
            headers=lambda: headers,
            body=data,
        )
        began = time.perf_counter()
        while True:
            try:
                response = await self._forward(request, target, worker, headers, data)
                if pair is not None:
                    body = response.body if isinstance(response, web.Response) else None
                    seconds = time.perf_counter() - began
                    pair.primary_answered(Reply(response.status, _bytes(body), seconds))
                return response
            except _WorkerGone as error:
                # The request never reached a worker: hold it for the restarted one.
                replacement = await self.replacement(request.path, worker, version)
                if replacement is None:
                    return errors.response(answers.upstream_failed(str(error)))
                worker = replacement
            except _BodyTooLarge:
                return errors.response(answers.body_too_large(self.max_body_size))

    def shadow_copy(
        self,
        method: str | bytes,
        *,
        path: str,
        target: str,
        version: str | bytes | None,
        headers: Callable[[], Mapping[str, str]],
        body: bytes | StreamedBody | None,
    ) -> ShadowPair | None:
        """A copy of a request for the version under shadow, if one is and the rules say so."""
        run: ShadowRun | None = self._supervisor.roles.shadow
        if run is None or not isinstance(body, bytes):
            return None
        return self.shadower.copy(
            run,
            method=method,
            path=path,
            target=target,
            version=version,
            headers=headers,
            body=body,
        )

    @property
    def shadowing(self) -> bool:
        return self._supervisor.roles.shadow is not None

    def serving_now(self) -> Worker | None:
        """The worker for a request that names no version, when one is ready now."""
        return rules.route(self._supervisor.roles, random.random)

    async def choose_worker(self, path: str, version: str | None) -> Worker | answers.Answer:
        """The worker for a request, or the answer to give instead."""
        supervisor = self._supervisor
        chosen = rules.choose(
            supervisor.roles, version, path=path, served=supervisor.served, draw=random.random
        )
        if chosen is rules.HOLD:
            # The active worker restarts: hold the request for it.
            worker = await supervisor.wait_for_worker(self._queue_timeout)
            return worker if worker is not None else answers.not_ready()
        return chosen

    async def replacement(self, path: str, gone: Worker, version: str | None) -> Worker | None:
        """The worker to resend a request to that `gone` never received, if any."""
        if not rules.may_hold(path, self._supervisor.served):
            return None
        replacement = await self._supervisor.wait_for_worker(self._queue_timeout, exclude=gone)
        return rules.resend_to(replacement, gone, version)

    async def worker_died(self, worker: Worker) -> bool:
        """Whether `worker` has exited or exits within DYING_GRACE."""
        if not worker.alive:
            return True
        try:
            async with asyncio.timeout(rules.DYING_GRACE):
                await worker.wait_exit()
        except TimeoutError:
            return False
        return True

    async def after_failure(
        self,
        worker: Worker,
        failure: rules.Failure,
        *,
        retried: bool,
        sent: bool,
        replayable: bool,
        over_limit: bool = False,
    ) -> rules.Outcome:
        """rules.after_failure, asking whether the worker died when the rule needs to know."""
        outcome = rules.after_failure(
            failure, retried=retried, sent=sent, replayable=replayable, over_limit=over_limit
        )
        if outcome is rules.Outcome.ASK:
            died = await self.worker_died(worker)
            outcome = rules.after_failure(
                failure, retried=retried, sent=sent, replayable=replayable, died=died
            )
        return outcome

    async def _body(
        self, request: web.BaseRequest, headers: CIMultiDict[str]
    ) -> bytes | StreamedBody | None:
        if not request.body_exists:
            return None
        length = request.content_length
        if length is not None and length <= rules.REPLAYABLE_BODY and request.content.is_eof():
            # The whole body came with the headers: nothing to wait for, no timer to arm.
            return await request.read()
        async with asyncio.timeout(self.body_timeout):
            if length is not None and length <= rules.REPLAYABLE_BODY:
                return await request.read()
            # Unknown or large: hold up to the replay size, stream the rest.
            prefix = bytearray()
            while len(prefix) <= rules.REPLAYABLE_BODY:
                chunk = await request.content.readany()
                if not chunk:
                    if len(prefix) > self.max_body_size:
                        raise _BodyTooLarge
                    return bytes(prefix)
                prefix += chunk
        if length is not None:
            headers[hdrs.CONTENT_LENGTH] = str(length)
        return StreamedBody(bytes(prefix), request.content, self.max_body_size, self.body_timeout)

    async def _forward(
        self,
        request: web.BaseRequest,
        target: str,
        worker: Worker,
        headers: CIMultiDict[str],
        data: bytes | StreamedBody | None,
    ) -> web.StreamResponse:
        url = URL(worker.base_url + target, encoded=True)
        sessions = self.pools.for_worker(worker).sessions
        replayable = not isinstance(data, StreamedBody)
        # Counted before the first await: a swap that switches away from this worker now will
        # wait for this request before stopping it.
        worker.in_flight.enter()
        entered = time.perf_counter()
        status = 502  # unless an answer below says otherwise: the worker failed it
        failed = True
        try:
            retried = False
            while True:
                session = sessions[1] if retried else sessions[0]
                try:
                    upstream = await session.request(
                        request.method, url, headers=headers, data=data, allow_redirects=False
                    )
                except aiohttp.ClientConnectorError as error:
                    failure, reason = rules.Failure.CONNECT, f"cannot connect: {error.os_error}"
                except STALE_CONNECTION as error:
                    failure, reason = rules.Failure.STALE, repr(error)
                except (TimeoutError, aiohttp.ServerTimeoutError):
                    failure, reason = rules.Failure.TIMEOUT, "timeout"
                except aiohttp.ClientResponseError as error:
                    failure, reason = rules.Failure.MALFORMED, repr(error)
                else:
                    try:
                        response, failed = await self._relay(request, upstream, worker, replayable)
                    finally:
                        upstream.release()
                    status = response.status
                    return response
                outcome = await self.after_failure(
                    worker,
                    failure,
                    retried=retried,
                    sent=False,
                    replayable=replayable,
                    over_limit=isinstance(data, StreamedBody) and data.exceeded,
                )
                if outcome is rules.Outcome.RETRY:  # once more, on a connection of its own
                    log.debug("retrying %s %s after %s", request.method, request.path, reason)
                    retried = True
                    continue
                if outcome is rules.Outcome.RESEND:
                    if failure is not rules.Failure.CONNECT:
                        reason = f"worker exited: {reason}"
                    raise _WorkerGone(reason)
                answer = rules.failure_answer(outcome, reason, self.max_body_size)
                status = answer.status
                return errors.response(answer)
        except asyncio.CancelledError:
            status, failed = rules.CLIENT_GONE, False  # the client went away: nobody's verdict
            raise
        finally:
            worker.in_flight.leave(
                rules.worker_status(status, failed), time.perf_counter() - entered
            )

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        worker: Worker,
        replayable: bool,
    ) -> tuple[web.StreamResponse, bool]:
        """The worker's answer, relayed; and whether the worker broke it off (rules.worker_status
        counts that as a 502, whatever its status)."""
        head = rules.response_head(upstream.raw_headers)
        headers = decoded(head.kept)
        headers[VERSION_HEADER] = worker.version
        if rules.hold_whole(upstream.content_length, upstream.status, request.method == "HEAD"):
            # A small answer of known size: one write of headers and body, no chunk loop.
            try:
                body = await upstream.read()
            except (TimeoutError, aiohttp.ClientError) as error:
                timeout = isinstance(error, TimeoutError)
                log.warning(
                    "upstream %s mid-response, nothing sent yet: %r",
                    "stalled" if timeout else "failed",
                    error,
                )
                outcome = await self.after_failure(
                    worker,
                    rules.Failure.TIMEOUT if timeout else rules.Failure.CUT,
                    retried=True,
                    sent=False,
                    replayable=replayable,
                )
                if outcome is rules.Outcome.RESEND:
                    raise _WorkerGone(f"worker exited mid-answer: {error!r}") from error
                failed = rules.failure_answer(outcome, repr(error), self.max_body_size)
                return errors.response(failed), True
            headers.popall(hdrs.CONTENT_LENGTH, None)
            # Not prepared yet: __call__ closes its connection when shutting down.
            answer = web.Response(
                status=upstream.status, reason=upstream.reason, headers=headers, body=body
            )
            return answer, False
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(headers)
        if rules.closes_connection(True, self.closing):  # aiohttp sees to the client's own
            response.force_close()
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (TimeoutError, aiohttp.ClientError) as error:
            # rules.Outcome.CUT: headers are out.
            log.warning("upstream failed mid-response: %r", error)
            if request.transport is not None:
                request.transport.close()
            return response, True  # a cut answer is the worker's failure, whatever its status
        await response.write_eof()
        return response, False
