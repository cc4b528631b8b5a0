"""The sidecar's own answers on the public port, as data: status, headers, body, in MLflow's
error shape. rules.py decides which one a request gets; errors.py writes them out, for aiohttp's
side as responses, for the fast path as bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus

RETRY_AFTER_SECONDS = "5"


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer of the sidecar's own; errors.py and the fast path write it out."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def reason(self) -> str:
        return HTTPStatus(self.status).phrase


def mlflow_error(status: int, error_code: str, message: str, **headers: str) -> Answer:
    """A JSON body `{"error_code": ..., "message": ...}` as the scoring server writes its own."""
    body = json.dumps({"error_code": error_code, "message": message}).encode()
    return Answer(status, (*headers.items(), ("Content-Type", "application/json")), body)


_RETRY = {"Retry-After": RETRY_AFTER_SECONDS}  # on answers that say "try again soon"


def not_ready(message: str = "No model version is ready to serve yet.") -> Answer:
    return mlflow_error(503, "TEMPORARILY_UNAVAILABLE", message, **_RETRY)


def shutting_down() -> Answer:
    return mlflow_error(503, "TEMPORARILY_UNAVAILABLE", "Shutting down.", **_RETRY)


def upstream_failed(reason: str) -> Answer:
    return mlflow_error(
        502, "TEMPORARILY_UNAVAILABLE", f"The model server failed: {reason}", **_RETRY
    )


def upstream_timeout() -> Answer:
    return mlflow_error(504, "DEADLINE_EXCEEDED", "The model server did not answer in time.")


def body_too_large(limit: int) -> Answer:
    return mlflow_error(
        413, "RESOURCE_LIMIT_EXCEEDED", f"The request body is larger than {limit} bytes."
    )


def body_timeout() -> Answer:
    return mlflow_error(408, "BAD_REQUEST", "The request body did not arrive in time.")


def bad_target(target: str) -> Answer:
    return mlflow_error(400, "BAD_REQUEST", f"Unsupported request target {target[:200]!r}.")


def version_not_served(asked: str, serving: str | None) -> Answer:
    now = f" (serving {serving} now)" if serving is not None else ""
    return mlflow_error(
        404,
        "RESOURCE_DOES_NOT_EXIST",
        f"Model version {asked!r} named by X-Model-Version is not served here{now}.",
    )
