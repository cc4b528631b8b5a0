"""Responses in MLflow's error shape, for what the sidecar itself answers on the public port."""

from __future__ import annotations

import json

from aiohttp import web

RETRY_AFTER_SECONDS = "5"


def mlflow_error(status: int, error_code: str, message: str, **headers: str) -> web.Response:
    """A JSON body `{"error_code": ..., "message": ...}` as the scoring server writes its own."""
    body = json.dumps({"error_code": error_code, "message": message})
    return web.Response(
        status=status, body=body.encode(), content_type="application/json", headers=headers
    )


def not_ready(message: str = "No model version is ready to serve yet.") -> web.Response:
    return mlflow_error(
        503, "TEMPORARILY_UNAVAILABLE", message, **{"Retry-After": RETRY_AFTER_SECONDS}
    )


def upstream_timeout() -> web.Response:
    return mlflow_error(504, "DEADLINE_EXCEEDED", "The model server did not answer in time.")


def upstream_failed(reason: str) -> web.Response:
    return mlflow_error(
        502,
        "TEMPORARILY_UNAVAILABLE",
        f"The model server failed: {reason}",
        **{"Retry-After": RETRY_AFTER_SECONDS},
    )


def body_too_large(limit: int) -> web.Response:
    return mlflow_error(
        413, "RESOURCE_LIMIT_EXCEEDED", f"The request body is larger than {limit} bytes."
    )


def body_timeout() -> web.Response:
    return mlflow_error(408, "BAD_REQUEST", "The request body did not arrive in time.")


def bad_target(target: str) -> web.Response:
    return mlflow_error(400, "BAD_REQUEST", f"Unsupported request target {target[:200]!r}.")


def shutting_down() -> web.Response:
    return mlflow_error(
        503, "TEMPORARILY_UNAVAILABLE", "Shutting down.", **{"Retry-After": RETRY_AFTER_SECONDS}
    )


def version_not_served(asked: str, serving: str | None) -> web.Response:
    now = f" (serving {serving} now)" if serving is not None else ""
    return mlflow_error(
        404,
        "RESOURCE_DOES_NOT_EXIST",
        f"Model version {asked!r} named by X-Model-Version is not served here{now}.",
    )
