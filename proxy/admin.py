"""The admin port: status, metrics, reload, liveness. Never on the public port."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

if TYPE_CHECKING:
    from .sidecar import Sidecar

SIDECAR: web.AppKey[Sidecar] = web.AppKey("sidecar")


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIDECAR].status())


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


async def livez(_request: web.Request) -> web.Response:
    """Answers while the event loop runs, whatever the workers do: a liveness probe on this
    restarts the pod only when the sidecar itself is stuck."""
    return web.json_response({"live": True})


def build_admin_app(sidecar: Sidecar) -> web.Application:
    app = web.Application()
    app[SIDECAR] = sidecar
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", make_aiohttp_handler(sidecar.metrics.registry))
    app.router.add_post("/reload", reload)
    app.router.add_get("/livez", livez)
    return app
