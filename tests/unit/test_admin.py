"""The admin app: bearer-token auth of mutating endpoints, and MLflow registry webhooks.

A real Sidecar (its supervisor never started: no workers) with a fake resolver, served by
aiohttp's test server. Deliveries are built the way MLflow's webhook sender builds them, with
MLflow's own signing function and example payloads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import mlflow.webhooks.constants as mlflow_constants
import pytest
from aiohttp.test_utils import TestClient, TestServer
from mlflow.entities.webhook import WebhookEvent
from mlflow.webhooks.delivery import _generate_hmac_signature
from mlflow.webhooks.types import (
    ModelVersionAliasCreatedPayload,
    ModelVersionAliasDeletedPayload,
    ModelVersionCreatedPayload,
    ModelVersionTagSetPayload,
    get_example_payload_for_event,
)
from prometheus_client import CollectorRegistry

from mlflow_bluegreen.proxy.admin import app as admin
from mlflow_bluegreen.proxy.admin import webhook
from mlflow_bluegreen.proxy.admin.app import build_admin_app
from mlflow_bluegreen.proxy.admin.webhook import RecentDeliveries
from mlflow_bluegreen.proxy.config import Config
from mlflow_bluegreen.proxy.sidecar import Sidecar

TOKEN = "s3cr3t-admin-token-0123456789abcdef"
SECRET = "webhook-secret-fedcba9876543210"
# MLflow's example payloads name this model and alias: track them, and the examples fit.
ALIAS_URI = "models:/example_model@example_alias"

ALIAS_CREATED = WebhookEvent("model_version_alias", "created")
ALIAS_DELETED = WebhookEvent("model_version_alias", "deleted")
VERSION_CREATED = WebhookEvent("model_version", "created")
TAG_SET = WebhookEvent("model_version_tag", "set")


class FakeResolver:
    """The registry: always names `version`; counts the lookups (run in a thread)."""

    def __init__(self, version: str = "1") -> None:
        self.version = version
        self.calls = 0
        self._lock = threading.Lock()

    def resolve(self) -> str:
        with self._lock:
            self.calls += 1
        return self.version


@dataclass
class Admin:
    client: TestClient[Any, Any]
    sidecar: Sidecar
    resolver: FakeResolver
    pokes: list[float] = field(default_factory=list)
    prepared_early: list[tuple[str, str]] = field(default_factory=list)

    async def post(
        self, path: str, *, token: str | None = None, **kwargs: Any
    ) -> tuple[int, dict[str, Any], Any]:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.client.post(path, headers=headers, **kwargs) as response:
            return response.status, dict(response.headers), await response.json()

    async def deliver(self, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        status, _headers, answer = await self.post("/webhook", data=body, headers=headers)
        return status, answer


Start = Callable[..., Awaitable[Admin]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """start(uri=ALIAS_URI, watch=False, **config) -> Admin. `watch` runs the watcher loop
    (the real path of a poke); otherwise pokes are only counted in `admin.pokes`."""
    clients: list[TestClient[Any, Any]] = []
    tasks: list[asyncio.Task[None]] = []

    async def _start(uri: str = ALIAS_URI, *, watch: bool = False, **config: Any) -> Admin:
        resolver = FakeResolver()
        sidecar = Sidecar(Config(model_uri=uri, poll_interval=600, **config), resolver=resolver)
        client: TestClient[Any, Any] = TestClient(TestServer(build_admin_app(sidecar)))
        await client.start_server()
        clients.append(client)
        started = Admin(client, sidecar, resolver)
        # Early preparation of a version a webhook names is only recorded: run for real, it
        # would download from a registry these tests do not have (MLflow's default, a
        # mlflow.db in the working directory).
        sidecar.early.begin = lambda *named: started.prepared_early.append(named)  # type: ignore[method-assign]
        if watch:
            # As `serve` does: one lookup first, then the loop (which now waits 600 s or a poke).
            assert await sidecar.watcher.resolve_now()
            tasks.append(asyncio.create_task(sidecar.watcher.run()))
        else:
            real_poke = sidecar.watcher.poke

            def poke() -> None:
                started.pokes.append(time.monotonic())
                real_poke()

            sidecar.watcher.poke = poke  # type: ignore[method-assign]
        return started

    yield _start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        await client.close()


def mlflow_delivery(
    event: WebhookEvent,
    data: Any,
    *,
    secret: str = SECRET,
    delivery_id: str | None = None,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Body and headers as mlflow.webhooks.delivery._send_webhook_request makes them."""
    payload_json = json.dumps(
        {
            "entity": event.entity.value,
            "action": event.action.value,
            "timestamp": datetime.now(UTC).isoformat(),
            "data": data,
        }
    )
    delivery_id = delivery_id or str(uuid.uuid4())
    unix_timestamp = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "Content-Type": "application/json",
        mlflow_constants.WEBHOOK_DELIVERY_ID_HEADER: delivery_id,
        mlflow_constants.WEBHOOK_TIMESTAMP_HEADER: unix_timestamp,
        mlflow_constants.WEBHOOK_SIGNATURE_HEADER: _generate_hmac_signature(
            secret, delivery_id, unix_timestamp, payload_json
        ),
    }
    return payload_json.encode("utf-8"), headers


def assert_mlflow_error(answer: Any, code: str) -> None:
    assert set(answer) == {"error_code", "message"}
    assert answer["error_code"] == code
    assert answer["message"]


async def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.002)


# -- bearer token ----------------------------------------------------------------------------


async def test_reload_needs_no_token_when_none_is_set(start: Start) -> None:
    server = await start()
    status, _headers, body = await server.post("/reload")
    assert status == 200
    assert body["resolved"] is True
    assert server.resolver.calls == 1


async def test_reload_without_a_token_is_401_in_mlflow_shape(start: Start) -> None:
    server = await start(admin_token=TOKEN)
    status, headers, body = await server.post("/reload")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert headers["Content-Type"].startswith("application/json")
    assert_mlflow_error(body, "UNAUTHENTICATED")
    assert "Bearer" in body["message"]
    assert server.resolver.calls == 0


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer wrong",
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        TOKEN,
        "Bearer ",
        "Bearer t\u00f6ken",
    ],
    ids=["longer", "shorter", "other", "basic", "token-scheme", "no-scheme", "empty", "non-ascii"],
)
async def test_reload_with_a_wrong_token_is_401(start: Start, authorization: str) -> None:
    server = await start(admin_token=TOKEN)
    status, headers, body = await server.post("/reload", headers={"Authorization": authorization})
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert_mlflow_error(body, "UNAUTHENTICATED")
    assert server.resolver.calls == 0


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_reload_with_the_token_runs(start: Start, scheme: str) -> None:
    server = await start(admin_token=TOKEN)
    status, _headers, body = await server.post(
        "/reload", headers={"Authorization": f"{scheme} {TOKEN}"}
    )
    assert (status, body["resolved"], body["version"]) == (200, True, "1")
    assert server.resolver.calls == 1


@pytest.mark.parametrize("path", ["/rollback", "/resume"])
async def test_rollback_and_resume_need_the_token(start: Start, path: str) -> None:
    server = await start(admin_token=TOKEN)
    status, _headers, body = await server.post(path)
    assert status == 401
    assert_mlflow_error(body, "UNAUTHENTICATED")
    assert server.sidecar.supervisor.pinned is None


async def test_rollback_with_nothing_lingering_is_409_and_says_why(start: Start) -> None:
    server = await start(admin_token=TOKEN)
    status, _headers, body = await server.post("/rollback", token=TOKEN)
    assert status == 409
    assert_mlflow_error(body, "INVALID_STATE")
    assert "--linger" in body["message"]
    status, _headers, body = await server.post("/resume", token=TOKEN)
    assert (status, body["resumed"]) == (200, False)


async def test_token_is_compared_in_constant_time(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[Any, Any]] = []
    real = admin.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admin.hmac, "compare_digest", spy)
    server = await start(admin_token=TOKEN)
    assert (await server.post("/reload", token="nope"))[0] == 401
    assert (await server.post("/reload", token=TOKEN))[0] == 200
    assert compared == [(b"nope", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


@pytest.mark.parametrize("path", ["/status", "/metrics", "/livez"])
async def test_reads_stay_open_with_a_token_set(start: Start, path: str) -> None:
    server = await start(admin_token=TOKEN)
    async with server.client.get(path) as response:
        assert response.status == 200
    async with server.client.head(path) as response:
        assert response.status == 200


async def test_unknown_routes_are_404_not_401(start: Start) -> None:
    server = await start(admin_token=TOKEN)
    async with server.client.post("/nope") as response:
        assert response.status == 404
    async with server.client.get("/reload") as response:
        assert response.status == 405


async def test_the_token_is_never_logged(start: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start(admin_token=TOKEN)
    await server.post("/reload", token=TOKEN + "-guess")
    await server.post("/reload", token=TOKEN)
    await server.post("/reload")
    assert "refused" in caplog.text
    assert TOKEN not in caplog.text
    assert "guess" not in caplog.text


async def test_token_stays_out_of_status_and_repr(start: Start) -> None:
    server = await start(admin_token=TOKEN, webhook_secret=SECRET)
    async with server.client.get("/status") as response:
        text = await response.text()
    assert TOKEN not in text and SECRET not in text
    assert TOKEN not in repr(server.sidecar.config) and SECRET not in repr(server.sidecar.config)


# -- webhook: authentication ---------------------------------------------------------------


def test_header_names_are_mlflows() -> None:
    assert webhook.SIGNATURE_HEADER == mlflow_constants.WEBHOOK_SIGNATURE_HEADER
    assert webhook.TIMESTAMP_HEADER == mlflow_constants.WEBHOOK_TIMESTAMP_HEADER
    assert webhook.DELIVERY_ID_HEADER == mlflow_constants.WEBHOOK_DELIVERY_ID_HEADER
    assert webhook.SIGNATURE_VERSION == mlflow_constants.WEBHOOK_SIGNATURE_VERSION


def test_our_signature_is_mlflows() -> None:
    body, headers = mlflow_delivery(ALIAS_CREATED, ModelVersionAliasCreatedPayload.example())
    ours = webhook.expected_signature(
        SECRET.encode(),
        headers[webhook.DELIVERY_ID_HEADER],
        headers[webhook.TIMESTAMP_HEADER],
        body,
    )
    assert ours.decode() == headers[webhook.SIGNATURE_HEADER]


async def test_webhooks_are_refused_without_a_secret(start: Start) -> None:
    server = await start(admin_token=TOKEN)
    body, headers = mlflow_delivery(ALIAS_CREATED, ModelVersionAliasCreatedPayload.example())
    status, answer = await server.deliver(body, headers)
    assert status == 403
    assert_mlflow_error(answer, "PERMISSION_DENIED")
    assert "--webhook-secret" in answer["message"]
    assert server.pokes == []


async def test_our_alias_moving_triggers_a_registry_lookup(start: Start) -> None:
    server = await start(admin_token=TOKEN, webhook_secret=SECRET, watch=True)
    assert server.resolver.calls == 1  # the lookup at start
    server.resolver.version = "2"
    body, headers = mlflow_delivery(ALIAS_CREATED, ModelVersionAliasCreatedPayload.example())
    # No bearer token: the signature is the webhook's credential.
    status, answer = await server.deliver(body, headers)
    assert status == 200
    assert answer["accepted"] is True
    assert answer["event"] == "model_version_alias.created"
    await wait_for(lambda: server.sidecar.watcher.last_version == "2")
    assert server.resolver.calls == 2
    assert server.sidecar.supervisor.wanted == "2"
    # Each version's download was begun as soon as a lookup named it (the first one's at
    # start), before its swap got to it.
    assert server.prepared_early == [
        ("1", "models:/example_model/1"),
        ("2", "models:/example_model/2"),
    ]


async def test_webhook_with_a_bearer_token_too_is_fine(start: Start) -> None:
    server = await start(admin_token=TOKEN, webhook_secret=SECRET)
    body, headers = mlflow_delivery(ALIAS_CREATED, ModelVersionAliasCreatedPayload.example())
    status, _headers, answer = await server.post(
        "/webhook", token=TOKEN, data=body, headers=headers
    )
    assert (status, answer["accepted"]) == (200, True)


async def test_signature_with_another_secret_is_401(start: Start) -> None:
    server = await start(admin_token=TOKEN, webhook_secret=SECRET)
    body, headers = mlflow_delivery(
        ALIAS_CREATED, ModelVersionAliasCreatedPayload.example(), secret="not-the-secret"
    )
    status, answer = await server.deliver(body, headers)
    assert status == 401
    assert_mlflow_error(answer, "UNAUTHENTICATED")
    assert server.pokes == []


async def test_bearer_token_does_not_replace_the_signature(start: Start) -> None:
    server = await start(admin_token=TOKEN, webhook_secret=SECRET)
    body, headers = mlflow_delivery(ALIAS_CREATED, ModelVersionAliasCreatedPayload.example())
    del headers[webhook.SIGNATURE_HEADER]
    status, _headers, answer = await server.post(
        "/webhook", token=TOKEN, data=body, headers=headers
    )
    assert status == 401
    assert_mlflow_error(answer, "UNAUTHENTICATED")
    assert server.pokes == []


@pytest.mark.parametrize(
    "tamper",
    ["body", "delivery_id", "timestamp", "version", "garbage"],
)
async def test_tampered_deliveries_are_401(start: Start, tamper: str) -> None:
    server = await start(webhook_secret=SECRET)
    body, headers = mlflow_delivery(ALIAS_CREATED, ModelVersionAliasCreatedPayload.example())
    if tamper == "body":
        body = body.replace(b'"version": "1"', b'"version": "9"')
    elif tamper == "delivery_id":
        headers[webhook.DELIVERY_ID_HEADER] = str(uuid.uuid4())
    elif tamper == "timestamp":
        headers[webhook.TIMESTAMP_HEADER] = str(int(headers[webhook.TIMESTAMP_HEADER]) - 1)
    elif tamper == "version":
        headers[webhook.SIGNATURE_HEADER] = "v2" + headers[webhook.SIGNATURE_HEADER][2:]
    else:
        headers[webhook.SIGNATURE_HEADER] = "v1,AAAA"
    status, answer = await server.deliver(body, headers)
    assert status == 401
    assert_mlflow_error(answer, "UNAUTHENTICATED")
    assert server.pokes == []


@pytest.mark.parametrize(
    "missing",
    [webhook.SIGNATURE_HEADER, webhook.DELIVERY_ID_HEADER, webhook.TIMESTAMP_HEADER],
)
async def test_missing_headers_are_refused(start: Start, missing: str) -> None:
    server = await start(webhook_secret=SECRET)
    body, headers = mlflow_delivery(ALIAS_CREATED, ModelVersionAliasCreatedPayload.example())
    del headers[missing]
    status, answer = await server.deliver(body, headers)
    assert status == (401 if missing == webhook.SIGNATURE_HEADER else 400)
    assert answer["error_code"] in {"UNAUTHENTICATED", "BAD_REQUEST"}
    assert server.pokes == []


async def test_several_signatures_one_valid_is_accepted(start: Start) -> None:
    server = await start(webhook_secret=SECRET)
    body, headers = mlflow_delivery(ALIAS_CREATED, ModelVersionAliasCreatedPayload.example())
    headers[webhook.SIGNATURE_HEADER] = "v1,AAAA " + headers[webhook.SIGNATURE_HEADER]
    assert (await server.deliver(body, headers))[0] == 200


async def test_signatures_are_compared_in_constant_time(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[Any, Any]] = []
    real = webhook.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(webhook.hmac, "compare_digest", spy)
    server = await start(webhook_secret=SECRET)
    body, headers = mlflow_delivery(ALIAS_CREATED, ModelVersionAliasCreatedPayload.example())
    assert (await server.deliver(body, headers))[0] == 200
    assert compared == [
        (headers[webhook.SIGNATURE_HEADER].encode(), headers[webhook.SIGNATURE_HEADER].encode())
    ]


@pytest.mark.parametrize("offset", [-301, 301, -10_000, 10_000])
async def test_stale_or_future_timestamps_are_refused(start: Start, offset: int) -> None:
    server = await start(webhook_secret=SECRET)
    body, headers = mlflow_delivery(
        ALIAS_CREATED,
        ModelVersionAliasCreatedPayload.example(),
        timestamp=int(time.time()) + offset,
    )
    status, answer = await server.deliver(body, headers)
    assert status == 400
    assert_mlflow_error(answer, "BAD_REQUEST")
    assert "old" in answer["message"] or "future" in answer["message"]
    assert server.pokes == []


@pytest.mark.parametrize("offset", [-290, 0, 290])
async def test_timestamps_within_tolerance_are_accepted(start: Start, offset: int) -> None:
    server = await start(webhook_secret=SECRET)
    body, headers = mlflow_delivery(
        ALIAS_CREATED,
        ModelVersionAliasCreatedPayload.example(),
        timestamp=int(time.time()) + offset,
    )
    assert (await server.deliver(body, headers))[0] == 200


async def test_non_numeric_timestamp_is_refused(start: Start) -> None:
    server = await start(webhook_secret=SECRET)
    payload_json = json.dumps({"entity": "model_version_alias", "action": "created", "data": {}})
    headers = {
        webhook.DELIVERY_ID_HEADER: "d-1",
        webhook.TIMESTAMP_HEADER: "yesterday",
        webhook.SIGNATURE_HEADER: _generate_hmac_signature(
            SECRET, "d-1", "yesterday", payload_json
        ),
    }
    status, answer = await server.deliver(payload_json.encode(), headers)
    assert status == 400
    assert_mlflow_error(answer, "BAD_REQUEST")


async def test_replayed_delivery_is_refused(start: Start) -> None:
    server = await start(webhook_secret=SECRET)
    body, headers = mlflow_delivery(ALIAS_CREATED, ModelVersionAliasCreatedPayload.example())
    assert (await server.deliver(body, headers))[0] == 200
    status, answer = await server.deliver(body, headers)
    assert status == 400
    assert_mlflow_error(answer, "BAD_REQUEST")
    assert "already" in answer["message"]
    assert len(server.pokes) == 1


async def test_a_refused_delivery_id_is_not_remembered(start: Start) -> None:
    """Only signed deliveries enter the replay memory: a forged one cannot block a real one."""
    server = await start(webhook_secret=SECRET)
    body, headers = mlflow_delivery(
        ALIAS_CREATED, ModelVersionAliasCreatedPayload.example(), delivery_id="d-42"
    )
    forged = {**headers, webhook.SIGNATURE_HEADER: "v1,AAAA"}
    assert (await server.deliver(body, forged))[0] == 401
    assert (await server.deliver(body, headers))[0] == 200


def test_recent_deliveries_forget_after_the_window_and_stay_bounded() -> None:
    now = [0.0]
    recent = RecentDeliveries(ttl=600, maxlen=3, clock=lambda: now[0])
    assert recent.add("a")
    assert not recent.add("a")
    now[0] = 601
    assert recent.add("a")  # outside the window a timestamp check refuses it anyway
    for name in ("b", "c", "d", "e"):
        assert recent.add(name)
    assert len(recent) == 3
    assert not recent.add("e")


async def test_body_too_large_is_413(start: Start) -> None:
    server = await start(webhook_secret=SECRET)
    data = {**ModelVersionAliasCreatedPayload.example(), "padding": "x" * webhook.MAX_BODY_BYTES}
    body, headers = mlflow_delivery(ALIAS_CREATED, data)
    status, answer = await server.deliver(body, headers)
    assert status == 413
    assert_mlflow_error(answer, "RESOURCE_LIMIT_EXCEEDED")
    assert server.pokes == []


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"entity": "model_version_alias"}',
        b'{"entity": 1, "action": 2, "data": []}',
    ],
    ids=["text", "list", "no-action", "data-not-object"],
)
async def test_signed_but_malformed_payload_is_400(start: Start, payload: bytes) -> None:
    server = await start(webhook_secret=SECRET)
    delivery_id, timestamp = str(uuid.uuid4()), str(int(time.time()))
    headers = {
        webhook.DELIVERY_ID_HEADER: delivery_id,
        webhook.TIMESTAMP_HEADER: timestamp,
        webhook.SIGNATURE_HEADER: _generate_hmac_signature(
            SECRET, delivery_id, timestamp, payload.decode()
        ),
    }
    status, answer = await server.deliver(payload, headers)
    assert status == 400
    assert_mlflow_error(answer, "MALFORMED_REQUEST")


# -- webhook: which events matter -----------------------------------------------------------


def alias_event(name: str = "example_model", alias: str = "example_alias") -> dict[str, Any]:
    return {**ModelVersionAliasCreatedPayload.example(), "name": name, "alias": alias}


@pytest.mark.parametrize(
    ("uri", "event", "data", "relevant"),
    [
        # An alias: only that alias of that model.
        (ALIAS_URI, ALIAS_CREATED, ModelVersionAliasCreatedPayload.example(), True),
        (ALIAS_URI, ALIAS_DELETED, ModelVersionAliasDeletedPayload.example(), True),
        (ALIAS_URI, ALIAS_CREATED, alias_event(name="other_model"), False),
        (ALIAS_URI, ALIAS_CREATED, alias_event(alias="challenger"), False),
        (ALIAS_URI, ALIAS_CREATED, alias_event(name="EXAMPLE_MODEL", alias="Example_Alias"), True),
        (ALIAS_URI, VERSION_CREATED, ModelVersionCreatedPayload.example(), False),
        (ALIAS_URI, TAG_SET, ModelVersionTagSetPayload.example(), False),
        # Latest: a new version of that model.
        (
            "models:/example_model/latest",
            VERSION_CREATED,
            ModelVersionCreatedPayload.example(),
            True,
        ),
        (
            "models:/example_model/latest",
            VERSION_CREATED,
            {**ModelVersionCreatedPayload.example(), "name": "other_model"},
            False,
        ),
        ("models:/example_model/latest", ALIAS_CREATED, alias_event(), False),
        # A stage: MLflow sends no stage events; anything about the model is a cue to look.
        ("models:/example_model/Production", TAG_SET, ModelVersionTagSetPayload.example(), True),
        (
            "models:/example_model/Production",
            VERSION_CREATED,
            ModelVersionCreatedPayload.example(),
            True,
        ),
        ("models:/example_model/Production", ALIAS_CREATED, alias_event(name="other"), False),
        (
            "models:/example_model/Production",
            WebhookEvent("prompt", "created"),
            get_example_payload_for_event(WebhookEvent("prompt", "created")),
            False,
        ),
        # Fixed URIs never change.
        (
            "models:/example_model/1",
            ALIAS_CREATED,
            ModelVersionAliasCreatedPayload.example(),
            False,
        ),
        ("runs:/abc/model", VERSION_CREATED, ModelVersionCreatedPayload.example(), False),
    ],
)
async def test_only_events_that_can_move_the_uri_start_a_lookup(
    start: Start, uri: str, event: WebhookEvent, data: Any, relevant: bool
) -> None:
    server = await start(uri, webhook_secret=SECRET)
    status, answer = await server.deliver(*mlflow_delivery(event, data))
    assert status == 200
    if relevant:
        assert answer["accepted"] is True
        assert len(server.pokes) == 1
    else:
        assert isinstance(answer["ignored"], str) and answer["ignored"]
        assert "accepted" not in answer
        assert server.pokes == []


async def test_mlflows_test_delivery_is_answered(start: Start) -> None:
    """`MlflowClient.test_webhook` sends the example payload: answered 200, nothing started."""
    server = await start("models:/iris@champion", webhook_secret=SECRET)
    data = get_example_payload_for_event(ALIAS_CREATED)
    status, answer = await server.deliver(*mlflow_delivery(ALIAS_CREATED, data))
    assert status == 200 and "ignored" in answer
    assert server.pokes == []


async def test_webhooks_are_counted_and_shown_in_status(start: Start) -> None:
    server = await start(webhook_secret=SECRET)
    await server.deliver(*mlflow_delivery(ALIAS_CREATED, ModelVersionAliasCreatedPayload.example()))
    await server.deliver(*mlflow_delivery(ALIAS_CREATED, alias_event(alias="other")))
    await server.deliver(*mlflow_delivery(ALIAS_CREATED, alias_event(), secret="wrong"))
    registry: CollectorRegistry = server.sidecar.metrics.registry
    for result in ("accepted", "ignored", "rejected"):
        value = registry.get_sample_value("mlflow_bluegreen_webhooks_total", {"result": result})
        assert value == 1, result
    async with server.client.get("/status") as response:
        status = await response.json()
    assert status["webhook"]["enabled"] is True
    assert status["webhook"]["received"] == 3
    assert status["webhook"]["last_accepted"]["event"] == "model_version_alias.created"


async def test_admin_app_can_be_built_twice_for_one_sidecar(start: Start) -> None:
    server = await start(webhook_secret=SECRET)
    build_admin_app(server.sidecar)  # the webhook counter is registered once per registry
