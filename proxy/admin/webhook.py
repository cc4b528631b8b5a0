"""`POST /webhook`: MLflow model-registry webhooks start a registry lookup at once.

MLflow (>= 3.3) can POST an event to a URL whenever the registry changes
(`MlflowClient().create_webhook(name, url, events, secret=...)`). Pointed at this endpoint,
an alias move starts the swap within moments instead of at the next poll; polling stays on
as the fallback for events that are lost, or that MLflow has no webhook for (stage
transitions, deleted versions).

Authentication is the delivery's HMAC signature, exactly as MLflow signs it
(`mlflow/webhooks/delivery.py`): the header `X-MLflow-Signature: v1,<base64 HMAC-SHA256>` over
`f"{delivery_id}.{timestamp}.{body}"` with the webhook's secret, which must be the sidecar's
`--webhook-secret`. MLflow cannot send a bearer token, so this endpoint does not ask for
`--admin-token`: the signature is its credential, and nothing without a valid one is acted
on. Without `--webhook-secret` every delivery is refused (403): unsigned events are never
accepted. A signed delivery must also be fresh (its `X-MLflow-Timestamp` within
`TOLERANCE_SECONDS` of our clock, either way) and new (its `X-MLflow-Delivery-Id` not seen in
that window), so a captured delivery cannot be replayed.

A relevant event only *pokes* the watcher (`Watcher.poke()`), which then asks the registry
what the URI names now, exactly as a poll would; the event's own fields are never trusted
for the version. Poking rather than resolving in the handler keeps every lookup on the
watcher's one loop (a poll that started before the alias moved cannot finish after the
webhook's lookup and hand the supervisor the older answer), coalesces a burst of events into
one lookup, and answers MLflow at once instead of holding its delivery thread while the
registry is asked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ...worker.model.uri import ModelRef, Selector
from ..relay.errors import mlflow_error

if TYPE_CHECKING:
    from ..sidecar import Sidecar

log = logging.getLogger(__name__)

# As in mlflow/webhooks/constants.py (importing mlflow here would cost the sidecar a second of
# start-up; tests/unit/test_admin.py checks they agree).
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"

# MLflow's payloads are a few hundred bytes.
MAX_BODY_BYTES = 1024 * 1024
# How far a delivery's timestamp may be from our clock, in the past or the future.
TOLERANCE_SECONDS = 300.0
MAX_DELIVERY_ID_LENGTH = 256
# Delivery ids remembered against replays. A replay is only possible while the timestamp is
# fresh, so an id needs keeping for 2 x TOLERANCE_SECONDS at most; the bound caps memory.
RECENT_DELIVERIES = 4096

# The registry events that can change what each kind of tracked URI resolves to.
ALIAS_EVENTS = frozenset({"model_version_alias.created", "model_version_alias.deleted"})
LATEST_EVENTS = frozenset({"model_version.created"})
# Stage transitions have no webhook event: any event of the model is a hint to look.
MODEL_EVENTS = frozenset(
    {
        "registered_model.created",
        "model_version.created",
        "model_version_tag.set",
        "model_version_tag.deleted",
        "model_version_alias.created",
        "model_version_alias.deleted",
    }
)


class RecentDeliveries:
    """The delivery ids seen in the last `ttl` seconds, at most `maxlen` of them."""

    def __init__(
        self,
        ttl: float = 2 * TOLERANCE_SECONDS,
        maxlen: int = RECENT_DELIVERIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._maxlen = maxlen
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, delivery_id: str) -> bool:
        """Remember `delivery_id`; False if it was already seen (a replay)."""
        now = self._clock()
        while self._seen:
            oldest, seen_at = next(iter(self._seen.items()))
            if now - seen_at <= self._ttl and len(self._seen) < self._maxlen:
                break
            del self._seen[oldest]
        if delivery_id in self._seen:
            return False
        self._seen[delivery_id] = now
        return True


def expected_signature(secret: bytes, delivery_id: str, timestamp: str, body: bytes) -> bytes:
    """`v1,<base64>` as MLflow's `_generate_hmac_signature` makes it. MLflow signs the JSON
    text and sends it UTF-8 encoded, so signing the raw body bytes gives the same digest."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return SIGNATURE_VERSION.encode() + b"," + base64.b64encode(digest)


def signature_matches(header: str, expected: bytes) -> bool:
    """Constant-time check of every signature in the header (Standard Webhooks allows a
    space-separated list, e.g. during a secret rotation; MLflow sends one)."""
    matched = False
    for candidate in header.split():
        # Not short-circuited: every candidate is compared, whatever the earlier ones gave.
        matched |= hmac.compare_digest(candidate.encode("utf-8", "replace"), expected)
    return matched


def relevance(ref: ModelRef, event: str, data: dict[str, Any]) -> str | None:
    """None when `event` may change what `ref` resolves to, else why it cannot."""
    if not ref.tracked or ref.name is None:
        return f"{ref.uri} is a fixed URI: no registry event changes it"
    name = data.get("name")
    # Case-insensitively: some registry databases compare names that way, and a needless
    # lookup costs less than a missed one.
    if not isinstance(name, str) or name.casefold() != ref.name.casefold():
        return f"event for registered model {name!r}, not {ref.name!r}"
    if ref.selector is Selector.ALIAS:
        if event not in ALIAS_EVENTS:
            return f"{event} cannot move alias {ref.selector_value!r}"
        alias = data.get("alias")
        if not isinstance(alias, str) or alias.casefold() != str(ref.selector_value).casefold():
            return f"event for alias {alias!r}, not {ref.selector_value!r}"
        return None
    if ref.selector is Selector.LATEST:
        return None if event in LATEST_EVENTS else f"{event} adds no version"
    # A stage: MLflow sends no event for a stage transition; any event of the model is a cue.
    return None if event in MODEL_EVENTS else f"{event} is not a model-registry event"


class WebhookReceiver:
    """The `/webhook` handler of one sidecar (`handle`), with its replay memory."""

    def __init__(
        self,
        sidecar: Sidecar,
        *,
        tolerance: float = TOLERANCE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sidecar = sidecar
        secret = sidecar.config.webhook_secret
        self._secret = secret.encode() if secret else None
        self._tolerance = tolerance
        self._clock = clock
        self._recent = RecentDeliveries(ttl=2 * tolerance)
        self._counter = sidecar.metrics.webhooks
        self.received = 0
        self.last_accepted: dict[str, Any] | None = None

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self._secret is not None,
            "received": self.received,
            "last_accepted": self.last_accepted,
        }

    def _reject(self, request: web.Request, status: int, code: str, message: str) -> web.Response:
        self._counter.labels("rejected").inc()
        log.warning("webhook from %s refused (%d): %s", request.remote, status, message)
        return mlflow_error(status, code, message)

    async def handle(self, request: web.Request) -> web.Response:
        self.received += 1
        secret = self._secret
        if secret is None:
            return self._reject(
                request,
                403,
                "PERMISSION_DENIED",
                "Webhooks are disabled: start the sidecar with --webhook-secret "
                "(MLFLOW_BLUEGREEN_WEBHOOK_SECRET) and give the MLflow webhook the same secret.",
            )
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return self._too_large(request)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(request)

        headers = request.headers
        signature = headers.get(SIGNATURE_HEADER)
        delivery_id = headers.get(DELIVERY_ID_HEADER)
        timestamp = headers.get(TIMESTAMP_HEADER)
        if not signature:
            return self._reject(
                request,
                401,
                "UNAUTHENTICATED",
                f"Missing {SIGNATURE_HEADER}: create the MLflow webhook with a secret.",
            )
        if not delivery_id or not timestamp or len(delivery_id) > MAX_DELIVERY_ID_LENGTH:
            return self._reject(
                request,
                400,
                "BAD_REQUEST",
                f"Missing or invalid {DELIVERY_ID_HEADER} or {TIMESTAMP_HEADER}.",
            )
        expected = expected_signature(secret, delivery_id, timestamp, body)
        if not signature_matches(signature, expected):
            return self._reject(
                request,
                401,
                "UNAUTHENTICATED",
                f"Invalid {SIGNATURE_HEADER}: the webhook's secret is not --webhook-secret.",
            )
        # Signed by a holder of the secret from here on.
        try:
            sent_at = int(timestamp)
        except ValueError:
            return self._reject(
                request, 400, "BAD_REQUEST", f"{TIMESTAMP_HEADER} is not unix seconds."
            )
        skew = self._clock() - sent_at
        if abs(skew) > self._tolerance:
            when = "old" if skew > 0 else "far in the future"
            return self._reject(
                request,
                400,
                "BAD_REQUEST",
                f"{TIMESTAMP_HEADER} is {abs(skew):.0f} s {when} (more than "
                f"{self._tolerance:.0f} s): stale delivery, or clocks out of step.",
            )
        if not self._recent.add(delivery_id):
            return self._reject(
                request, 400, "BAD_REQUEST", f"Delivery {delivery_id} was received already."
            )
        try:
            payload = json.loads(body)
            event = f"{payload['entity']}.{payload['action']}"
            data = payload["data"]
            if not isinstance(data, dict):
                raise TypeError("data is not an object")
        except (ValueError, KeyError, TypeError) as error:
            return self._reject(
                request, 400, "MALFORMED_REQUEST", f"Not an MLflow webhook payload: {error!r}"
            )

        ref = self._sidecar.ref
        reason = relevance(ref, event, data)
        if reason is not None:
            self._counter.labels("ignored").inc()
            log.debug("webhook %s ignored: %s", event, reason)
            return web.json_response({"ignored": reason, "event": event})

        self._counter.labels("accepted").inc()
        log.info("webhook %s for %s: looking the registry up now", event, ref.describe())
        self._sidecar.watcher.poke()
        self.last_accepted = {
            "event": event,
            "delivery_id": delivery_id,
            "timestamp": sent_at,
            "received_at": self._clock(),
        }
        return web.json_response(
            {"accepted": True, "event": event, "tracks": ref.describe(), "lookup": "started"}
        )

    def _too_large(self, request: web.Request) -> web.Response:
        return self._reject(
            request,
            413,
            "RESOURCE_LIMIT_EXCEEDED",
            f"A webhook body is at most {MAX_BODY_BYTES} bytes.",
        )
