"""The admin port: status, metrics, reload, liveness, registry webhooks. Never on the public port.

Authentication, when `--admin-token` is set: every request that can change something (any method
but GET/HEAD/OPTIONS: `POST /reload`, `/rollback`, `/resume`) needs `Authorization: Bearer
<token>`, and gets 401 without it. Reads (`/status`, `/metrics`, `/livez`) stay open, so probes
and Prometheus need no credentials. `POST /webhook` is the one exception to the bearer rule:
MLflow cannot send a bearer token, so a webhook authenticates with its HMAC signature
(`--webhook-secret`; see proxy/webhook.py), and without a valid one it is refused whether or not
a token is set. Without `--admin-token` nothing asks for a bearer token (the CLI allows that only
on a loopback address).
"""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client.aiohttp import make_aiohttp_handler

from ...worker.control import NoRollback
from ..relay.errors import mlflow_error
from .webhook import MAX_BODY_BYTES, WebhookReceiver

if TYPE_CHECKING:
    from ..sidecar import Sidecar

log = logging.getLogger(__name__)

SIDECAR: web.AppKey[Sidecar] = web.AppKey("sidecar")
# The admin token as bytes, or None when none is set (then nothing needs one).
ADMIN_TOKEN: web.AppKey[bytes | None] = web.AppKey("admin_token")
WEBHOOK: web.AppKey[WebhookReceiver] = web.AppKey("webhook")

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Routes that authenticate every request themselves instead of with the bearer token.
SELF_AUTHENTICATED = frozenset({"/webhook"})


def unauthenticated(message: str, challenge: str = "Bearer") -> web.Response:
    return mlflow_error(401, "UNAUTHENTICATED", message, **{"WWW-Authenticate": challenge})


def token_matches(presented: bytes, expected: bytes) -> bool:
    """Constant time: how long the comparison takes says nothing about the token."""
    return hmac.compare_digest(presented, expected)


@web.middleware
async def require_admin_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every mutating request needs the bearer token, if one is set. Routes are protected
    unless listed as reads or as authenticating themselves, so a new POST endpoint is
    protected without anyone remembering to."""
    expected = request.app[ADMIN_TOKEN]
    match = request.match_info
    resource = match.route.resource
    if (
        expected is None
        or request.method in READ_METHODS
        or match.http_exception is not None  # 404/405: nothing would run
        or (resource is not None and resource.canonical in SELF_AUTHENTICATED)
    ):
        return await handler(request)

    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        log.warning(
            "%s %s from %s refused: no bearer token", request.method, request.path, request.remote
        )
        return unauthenticated(
            f"{request.method} {request.path} needs 'Authorization: Bearer <token>' with the "
            "sidecar's --admin-token (MLFLOW_BLUEGREEN_ADMIN_TOKEN)."
        )
    if not token_matches(credentials.encode("utf-8", "replace"), expected):
        # Never the token itself, nor what was presented, in the log.
        log.warning(
            "%s %s from %s refused: wrong bearer token",
            request.method,
            request.path,
            request.remote,
        )
        return unauthenticated(
            "The bearer token is not the sidecar's admin token.",
            'Bearer error="invalid_token"',
        )
    return await handler(request)


async def status(request: web.Request) -> web.Response:
    body = request.app[SIDECAR].status()
    body["webhook"] = request.app[WEBHOOK].status()
    return web.json_response(body)


async def reload(request: web.Request) -> web.Response:
    """Resolve the URI now and swap if the answer changed; also retries failed versions now."""
    sidecar = request.app[SIDECAR]
    sidecar.supervisor.retry_now()
    resolved = await sidecar.watcher.resolve_now()
    body = {
        "resolved": resolved,
        "version": sidecar.watcher.last_version,
        "active_version": sidecar.supervisor.active.version if sidecar.supervisor.active else None,
        "error": None if resolved else str(sidecar.watcher.last_error),
    }
    return web.json_response(body, status=200 if resolved else 503)


async def rollback(request: web.Request) -> web.Response:
    """Switch to the lingering version now and stay there until POST /resume."""
    supervisor = request.app[SIDECAR].supervisor
    try:
        worker = await supervisor.rollback()
    except NoRollback as error:
        return mlflow_error(409, "INVALID_STATE", str(error))
    except TimeoutError:
        return mlflow_error(
            503, "TEMPORARILY_UNAVAILABLE", "The switch back did not happen within 10 s."
        )
    log.warning("POST /rollback from %s: serving %s, pinned", request.remote, worker.version)
    return web.json_response({"active_version": worker.version, "pinned": supervisor.pinned})


async def resume(request: web.Request) -> web.Response:
    """Follow the registry again after a rollback."""
    supervisor = request.app[SIDECAR].supervisor
    was_pinned = supervisor.pinned is not None
    following = supervisor.resume()
    return web.json_response({"resumed": was_pinned, "wanted_version": following})


async def livez(_request: web.Request) -> web.Response:
    """Answers while the event loop runs, whatever the workers do: a liveness probe on this
    restarts the pod only when the sidecar itself is stuck."""
    return web.json_response({"live": True})


def build_admin_app(sidecar: Sidecar) -> web.Application:
    # No admin request has a body bigger than a webhook's.
    app = web.Application(middlewares=[require_admin_token], client_max_size=MAX_BODY_BYTES)
    app[SIDECAR] = sidecar
    token = sidecar.config.admin_token
    app[ADMIN_TOKEN] = token.encode("utf-8") if token else None
    receiver = WebhookReceiver(sidecar)
    app[WEBHOOK] = receiver
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", make_aiohttp_handler(sidecar.metrics.registry))
    app.router.add_post("/reload", reload)
    app.router.add_post("/webhook", receiver.handle)
    app.router.add_post("/rollback", rollback)
    app.router.add_post("/resume", resume)
    app.router.add_get("/livez", livez)
    return app
