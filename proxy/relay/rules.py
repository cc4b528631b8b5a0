"""The proxy's rules, each written once, with no I/O.

Both ways of relaying call these: the httptools fast path (connection.py, exchange.py) and
aiohttp's server with `Forwarder` (forward.py). What a rule decides is plain data: which headers
go on, which path a request takes, which worker it goes to, what an upstream failure becomes,
and which of the sidecar's own answers (answers.py: status, headers, body) a request gets, which
each path only writes out (errors.py).

Headers are taken as the wire gives them, (name, value) byte pairs: the fast path parses them
so, and aiohttp keeps them as `raw_headers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, TypeVar

from .answers import (
    Answer,
    bad_target,
    body_too_large,
    not_ready,
    shutting_down,
    upstream_failed,
    upstream_timeout,
    version_not_served,
)

# -- limits ---------------------------------------------------------------------------------

# Bodies up to this size are read before forwarding, so a request can be sent again if the worker
# closed a pooled connection just as we wrote to it (the same trade as nginx's
# client_body_buffer_size). Larger bodies stream through and are not retried. Answers up to this
# size are held whole before any of them goes to the client (hold_whole).
REPLAYABLE_BODY = 1 << 20

# A request head (line and headers) longer than this goes to aiohttp, which enforces its own
# limits (8190 bytes a line or field: a 400): the fast path never buffers or relays more.
HEAD_LIMIT = 8190

# How long a worker that closed a fresh connection without answering may take to be seen exiting.
# A SIGKILLed worker drops its connections before its exit is reaped (polled every 0.1 s), so
# the request is resent to its replacement; one still alive after this is sick, and the client
# gets a 502 instead of waiting for a replacement that is not coming.
DYING_GRACE = 0.5

CLIENT_GONE = 499  # nginx's code for a client that went away before the answer
NO_BODY_STATUSES = frozenset({204, 304})
HEALTH_PATHS = frozenset({"/ping", "/health"})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# -- headers --------------------------------------------------------------------------------

VERSION_HEADER = "X-Model-Version"

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded. Trailer goes with
# Transfer-Encoding: we do not forward trailers.
_ONE_HOP = {"connection", "proxy-connection", "keep-alive", "te", "trailer"}
HOP_BY_HOP = frozenset({*_ONE_HOP, "transfer-encoding", "upgrade"})
# Not forwarded on a request, besides those: Host and Content-Length are rewritten for the
# worker's address and the body actually sent; Expect is answered by us (100-continue) before
# the body is read; X-Model-Version on a request is a routing instruction to us.
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect", VERSION_HEADER.lower()}
# Not relayed on an answer, besides hop-by-hop ones: our X-Model-Version is the one that counts.
NOT_RELAYED = HOP_BY_HOP | {VERSION_HEADER.lower()}

_NOT_FORWARDED = frozenset(name.encode() for name in NOT_FORWARDED)
_NOT_RELAYED = frozenset(name.encode() for name in NOT_RELAYED)
# Request headers that describe a request only aiohttp's side relays.
_FRAMED_OTHERWISE = frozenset({b"transfer-encoding", b"upgrade"})

Headers = list[tuple[bytes, bytes]]


def connection_listed(values: Iterable[bytes]) -> frozenset[bytes]:
    """The header names (lower-case) that `Connection:` values name: hop-by-hop too."""
    return frozenset(
        token.strip().lower() for value in values for token in value.split(b",") if token.strip()
    )


_HOP_BY_HOP = frozenset(name.encode() for name in HOP_BY_HOP) | {b"close"}
_beyond_cache: dict[tuple[bytes, ...], frozenset[bytes]] = {}


def _listed_beyond_hop_by_hop(values: list[bytes]) -> frozenset[bytes]:
    """What `Connection:` names besides what is dropped anyway: nearly always nothing
    (`keep-alive`, `close`), and the same few values again and again, so they are remembered."""
    key = tuple(values)
    names = _beyond_cache.get(key)
    if names is None:
        names = connection_listed(values) - _HOP_BY_HOP
        if len(_beyond_cache) < 64:
            _beyond_cache[key] = names
    return names


@dataclass(slots=True)
class RequestHead:
    """What the request header rule found: the headers to forward, and those that are ours."""

    kept: Headers
    length: int | None = None  # Content-Length, as the parser has checked it
    version: bytes | None = None  # the first X-Model-Version: pinned to that version
    expects_continue: bool = False
    unknown_expectation: bool = False
    framed_otherwise: bool = False  # Transfer-Encoding or Upgrade


def request_head(headers: Iterable[tuple[bytes, bytes]]) -> RequestHead:
    """The request's headers split into what goes to the worker and what is for us."""
    kept: Headers = []
    listed: list[bytes] | None = None
    length = version = None
    expects_continue = unknown_expectation = framed_otherwise = False
    for name, value in headers:
        lowered = name.lower()
        if lowered not in _NOT_FORWARDED:
            kept.append((name, value))
        elif lowered == b"host":
            pass  # every request has one: the worker gets its own
        elif lowered == b"content-length":
            length = int(value)  # checked by the parser
        elif lowered == b"connection":
            listed = [value] if listed is None else [*listed, value]
        elif lowered == b"x-model-version":
            if version is None:
                version = value
        elif lowered == b"expect":
            if value.strip().lower() == b"100-continue":
                expects_continue = True
            else:
                unknown_expectation = True
        elif lowered in _FRAMED_OTHERWISE:
            framed_otherwise = True
    if listed is not None and (extra := _listed_beyond_hop_by_hop(listed)):
        kept = _without(kept, extra)
    return RequestHead(
        kept, length, version, expects_continue, unknown_expectation, framed_otherwise
    )


@dataclass(slots=True)
class ResponseHead:
    kept: Headers
    length: int | None = None  # Content-Length, as the parser has checked it


def response_head(headers: Iterable[tuple[bytes, bytes]]) -> ResponseHead:
    """The worker's answer headers that go on to the client (our X-Model-Version is added)."""
    kept: Headers = []
    listed: list[bytes] | None = None
    length = None
    for name, value in headers:
        lowered = name.lower()
        if lowered not in _NOT_RELAYED:
            if lowered == b"content-length":
                length = int(value)
            kept.append((name, value))
        elif lowered == b"connection":
            listed = [value] if listed is None else [*listed, value]
    if listed is not None and (extra := _listed_beyond_hop_by_hop(listed)):
        kept = _without(kept, extra)
    return ResponseHead(kept, length)


def _without(headers: Headers, names: frozenset[bytes]) -> Headers:
    return [(name, value) for name, value in headers if name.lower() not in names]


def header_lines(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Headers as they go on the wire, each `Name: value\\r\\n`."""
    return b"".join([b"%s: %s\r\n" % pair for pair in headers])


def send_continue(head: RequestHead, http11: bool) -> bool:
    """Whether to answer `100 Continue` before reading the body: only to HTTP/1.1 clients. An
    HTTP/1.0 client's expectation is ignored (RFC 9110 §10.1.1): it sends the body anyway.
    Expectations we do not know are ignored too, as uvicorn ignores them."""
    return head.expects_continue and http11


# -- which path a request takes -------------------------------------------------------------


class Handover(Enum):
    """Why the fast path gives a connection to aiohttp's server, which relays everything."""

    MALFORMED = "llhttp rejects it: aiohttp answers 400"
    UPGRADE = "an upgrade or CONNECT"
    PIPELINED = "a second request came before the first was answered"
    LARGE_HEAD = "a head over HEAD_LIMIT: aiohttp enforces its limits"
    FRAMING = "a chunked body, or an upgrade"
    EXPECTATION = "an expectation we do not know: aiohttp's answer"
    HEAD = "HEAD: aiohttp answers without a body"
    TARGET = "absolute-form or `*`: aiohttp sorts them out"
    LARGE_BODY = "a body too large to hold: streamed"
    SHUTTING_DOWN = "shutting down: health checks say 503, connections close"


def head_too_large(size: int) -> bool:
    """Bytes read of a head still incomplete (or an upper bound of a complete one's size)."""
    return size > HEAD_LIMIT


def handover(
    head: RequestHead,
    *,
    method: bytes,
    target: bytes,
    head_size: int,
    upgrade: bool,
    closing: bool,
    max_body_size: int,
) -> Handover | None:
    """Why a request whose head is complete goes to aiohttp; None: the fast path relays it."""
    if head.framed_otherwise:
        return Handover.FRAMING
    if head.unknown_expectation:
        return Handover.EXPECTATION
    if upgrade:
        return Handover.UPGRADE
    if method == b"HEAD":
        return Handover.HEAD
    if head_size > HEAD_LIMIT:
        return Handover.LARGE_HEAD
    if not target.startswith(b"/"):
        return Handover.TARGET
    if closing:
        return Handover.SHUTTING_DOWN
    if head.length is not None and head.length > min(REPLAYABLE_BODY, max_body_size):
        return Handover.LARGE_BODY
    return None


def upstream_target(raw_target: str, path_qs: str) -> str | None:
    """What the worker is asked for: the origin-form target as sent, the path and query of an
    absolute-form one; None for `*` or an authority (CONNECT), which are not forwarded."""
    if raw_target.startswith("/"):
        return raw_target
    return path_qs if path_qs.startswith("/") else None


def refusal(
    path: str,
    raw_target: str,
    target: str | None,
    length: int | None,
    *,
    closing: bool,
    max_body_size: int,
) -> Answer | None:
    """The answer to give before reading a body or choosing a worker, if any. `target` is
    upstream_target's."""
    if closing and path in HEALTH_PATHS:
        return shutting_down()  # load balancers stop sending
    if target is None:
        return bad_target(raw_target)
    if length is not None and length > max_body_size:
        return body_too_large(max_body_size)
    return None


# -- which worker a request goes to ---------------------------------------------------------


class Routable(Protocol):
    @property
    def version(self) -> str: ...


W = TypeVar("W", bound=Routable)
W_co = TypeVar("W_co", bound=Routable, covariant=True)


class RoleView(Protocol[W_co]):
    """What routing reads of the supervisor's roles, once per request."""

    @property
    def active(self) -> W_co | None: ...
    @property
    def canary(self) -> W_co | None: ...
    @property
    def canary_share(self) -> float: ...
    @property
    def lingering(self) -> W_co | None: ...


class Hold(Enum):
    """No worker is ready now: wait for the active one (up to the queue timeout)."""

    HOLD = "hold"


HOLD = Hold.HOLD


def route(roles: RoleView[W], draw: Callable[[], float]) -> W | None:
    """The worker for a request that names no version: the active one, or during a canary the
    canary when `draw()` (uniform in [0, 1)) falls under `canary_share`, and all of them when no
    worker is active (the canary is warm). `draw` is called during a canary only."""
    canary = roles.canary
    if canary is not None and (roles.active is None or draw() < roles.canary_share):
        return canary
    return roles.active


def pinned(roles: RoleView[W], version: str) -> W | None:
    """The worker serving `version` that may take traffic: active, canary or lingering."""
    for worker in (roles.active, roles.canary, roles.lingering):
        if worker is not None and worker.version == version:
            return worker
    return None


def shadowed(
    share: float,
    method: str | bytes,
    *,
    path: str,
    version: str | bytes | None,
    body_size: int,
    draw: Callable[[], float],
) -> bool:
    """Whether a copy of a request also goes to the version under shadow (shadow.ShadowRun):
    a prediction that names no version, whose body is held whole (it is sent twice), drawn
    under `share`. `draw` is called for such requests only."""
    posted = method in ("POST", b"POST") and path == "/invocations" and version is None
    return posted and body_size <= REPLAYABLE_BODY and draw() < share


def may_hold(path: str, served: bool) -> bool:
    """Whether a request may wait for a worker: never before the first worker was ready (a
    sidecar still starting says so at once) and never a health check."""
    return served and path not in HEALTH_PATHS


def choose(
    roles: RoleView[W], version: str | None, *, path: str, served: bool, draw: Callable[[], float]
) -> W | Answer | Hold:
    """A request's worker; or the answer instead (404 for a version not served, 503 when
    nothing serves and the request may not wait); or HOLD."""
    if version is not None:
        # A client may ask for the version it started a session with (active, lingering or
        # canary); it goes to that worker or nowhere.
        worker = pinned(roles, version.strip())
        if worker is None:
            active = roles.active
            return version_not_served(version, active.version if active is not None else None)
        return worker
    worker = route(roles, draw)
    if worker is not None:
        return worker
    return HOLD if may_hold(path, served) else not_ready()


def resend_to(replacement: W | None, gone: W, version: str | None) -> W | None:
    """Where a request `gone` never received goes: to the worker that replaced it, unless the
    request is pinned to a version the replacement does not serve."""
    if replacement is None or (version is not None and replacement.version != gone.version):
        return None
    return replacement


# -- what an upstream failure becomes -------------------------------------------------------


class Failure(Enum):
    CONNECT = "nothing listens on the worker's port"
    STALE = "the connection closed before any byte of an answer"
    CUT = "the connection closed part-way through the answer"
    MALFORMED = "the answer is not HTTP we relay"
    TIMEOUT = "the worker sent nothing for the read timeout"


class Outcome(Enum):
    RETRY = "send again once, on a new connection"
    ASK = "ask whether the worker died (DYING_GRACE), then decide again"
    RESEND = "hold the request for the worker that replaces the dead one"
    FAIL = "answer 502"
    TIMEOUT = "answer 504"
    CUT = "cut the client's connection: its answer's head is already out"
    TOO_LARGE = "answer 413: a streamed body went over the limit"


def after_failure(
    failure: Failure,
    *,
    retried: bool,
    sent: bool,
    replayable: bool,
    died: bool | None = None,
    over_limit: bool = False,
) -> Outcome:
    """What an upstream failure becomes.

    `retried`: this was already the one retry; `sent`: bytes of the answer went to the client;
    `replayable`: the request body is held whole (not streamed); `died`: whether the worker
    exited (None: not asked yet); `over_limit`: a streamed body exceeded the body limit.
    """
    if sent:
        # All we can do is cut the connection so the client sees a broken answer rather than a
        # short one that looks whole.
        return Outcome.CUT
    if over_limit:
        return Outcome.TOO_LARGE
    if failure is Failure.TIMEOUT:
        return Outcome.TIMEOUT
    if failure is Failure.MALFORMED or not replayable:
        return Outcome.FAIL
    if failure is Failure.CONNECT:
        return Outcome.RESEND  # the worker died and its exit is not yet noticed
    if failure is Failure.STALE and not retried:
        # The worker closed an idle keep-alive connection as we wrote to it: it never saw the
        # request.
        return Outcome.RETRY
    # Closed a fresh connection without an answer, or an answer part-way (held whole, so the
    # client has seen nothing): a dying worker (resend elsewhere) or a sick one (502).
    if died is None:
        return Outcome.ASK
    return Outcome.RESEND if died else Outcome.FAIL


def failure_answer(outcome: Outcome, reason: str, max_body_size: int) -> Answer:
    """The answer an outcome that ends the exchange gives the client."""
    if outcome is Outcome.TIMEOUT:
        return upstream_timeout()
    if outcome is Outcome.TOO_LARGE:
        return body_too_large(max_body_size)
    return upstream_failed(reason)


def worker_status(status: int, failed: bool) -> int | None:
    """What a request counts as in its worker's tally (InFlight.leave): its status; 502 for an
    answer the worker broke off (`failed`, its status still that of a success); None when the
    client went away before the answer, which is no verdict on the worker."""
    if status == CLIENT_GONE:
        return None
    return 502 if failed and status < 500 else status


# -- the answer's framing -------------------------------------------------------------------


def closes_connection(keep_alive: bool, shutting_down: bool) -> bool:
    """Whether the client's connection ends with this answer: the client asked (HTTP/1.0
    without keep-alive, `Connection: close`), or the sidecar is shutting down, so that clients
    reconnect to another replica."""
    return shutting_down or not keep_alive


def hold_whole(length: int | None, status: int, head_request: bool = False) -> bool:
    """Whether an answer goes out whole, once it is all in: one of known, replayable size.
    uvicorn writes the head and the body separately, and a worker killed between the two would
    otherwise leave the client a broken answer instead of one from the replacement."""
    return (
        length is not None
        and length <= REPLAYABLE_BODY
        and not head_request
        and status not in NO_BODY_STATUSES
    )


@dataclass(frozen=True, slots=True)
class Framing:
    chunked: bool  # re-framed as chunks: no length, HTTP/1.1 client
    close: bool  # the connection ends with this answer
    connection: bytes  # the Connection header line to add, if any


def framing(length: int | None, status: int, *, http11: bool, must_close: bool) -> Framing:
    """How the fast path frames an answer for its client."""
    chunked = False
    close = must_close
    if length is None and status not in NO_BODY_STATUSES:
        if http11:
            chunked = True
        else:
            close = True  # an HTTP/1.0 client reads to the end
    return _FRAMINGS[chunked, close, http11]


_FRAMINGS = {  # made once: a frozen dataclass costs a microsecond to make
    (chunked, close, http11): Framing(
        chunked,
        close,
        b"Connection: close\r\n" if close else b"" if http11 else b"Connection: keep-alive\r\n",
    )
    for chunked in (False, True)
    for close in (False, True)
    for http11 in (False, True)
}
