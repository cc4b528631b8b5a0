"""MLflow registry webhooks, end to end: a real `mlflow server` sends signed deliveries to a real
sidecar's admin port, and an alias move starts a swap at once although the sidecar polls only
every 600 s. A webhook with the wrong secret moves nothing; POST /reload needs the admin token.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlflow_bluegreen.proxy.demo import SidecarProcess
from mlflow_bluegreen.worker.sandbox import EmbeddedRegistry, register_iris_version, set_alias

pytestmark = pytest.mark.integration

NAME, ALIAS = "iris-webhook", "champion"
SECRET = "webhook-secret-for-the-test"
TOKEN = "admin-token-for-the-test"
POLL_INTERVAL = 600
# From set_alias to the sidecar asking the registry: MLflow delivers from a thread pool.
LOOKUP_WITHIN = 10.0

# The MLflow server must be allowed to post to http://127.0.0.1 (by default it posts only to
# https URLs of public addresses), and must not cache "no webhook for this event" for the
# default 60 s: each test creates its webhook just before it moves the alias.
SERVER_ENV = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
}


@dataclass
class Setup:
    registry: EmbeddedRegistry
    sidecar: SidecarProcess
    versions: tuple[str, str]

    @property
    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(self.registry.uri)

    def other_version(self) -> str:
        active = self.sidecar.status()["active"]["version"]
        first, second = self.versions
        return second if active == first else first

    def webhook_counts(self) -> dict[str, float]:
        code, body = self.sidecar.get("/metrics", admin=True)
        assert code == 200
        counts: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line.startswith("mlflow_bluegreen_webhooks_total{"):
                labels, value = line.rsplit(" ", 1)
                counts[labels.split('result="')[1].split('"')[0]] = float(value)
        return counts

    def create_webhook(self, name: str, secret: str) -> str:
        webhook = self.client.create_webhook(
            name=name,
            url=f"{self.sidecar.admin_url}/webhook",
            events=["model_version_alias.created", "model_version_alias.deleted"],
            secret=secret,
        )
        # Any list of webhooks the server cached before this one expires (MLFLOW_WEBHOOK_CACHE_TTL).
        time.sleep(1.2)
        return str(webhook.webhook_id)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    import mlflow

    previous_tracking_uri = mlflow.get_tracking_uri()
    logs = tmp_path_factory.mktemp("webhook")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SERVER_ENV.items():
            patch.setenv(name, value)  # EmbeddedRegistry copies os.environ when it starts
        with EmbeddedRegistry() as registry:
            versions = (
                register_iris_version(registry.uri, NAME, 1.0),
                register_iris_version(registry.uri, NAME, 0.05),
            )
            set_alias(registry.uri, NAME, ALIAS, versions[0])
            sidecar = SidecarProcess(
                f"models:/{NAME}@{ALIAS}",
                tracking_uri=registry.uri,
                extra_args=(
                    "--poll-interval",
                    str(POLL_INTERVAL),
                    "--webhook-secret",
                    SECRET,
                    "--admin-token",
                    TOKEN,
                ),
                log_path=logs / "sidecar.log",
            )
            try:
                sidecar.wait_active(versions[0], timeout=120)
                yield Setup(registry, sidecar, versions)
            except BaseException:
                print(f"--- sidecar log ---\n{sidecar.log_text()[-5000:]}")
                print(f"--- mlflow server log ---\n{registry.log_path.read_text()[-3000:]}")
                raise
            finally:
                sidecar.stop()
    mlflow.set_tracking_uri(previous_tracking_uri)


def post(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, method="POST", data=b"", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_alias_move_swaps_at_once_through_the_webhook(setup: Setup) -> None:
    sidecar, client = setup.sidecar, setup.client
    assert sidecar.status()["registry"]["poll_interval"] == POLL_INTERVAL
    webhook_id = setup.create_webhook("bluegreen", SECRET)
    try:
        # MLflow's own test delivery (an example payload for another model) arrives signed and
        # is answered 200 without starting anything.
        result = client.test_webhook(webhook_id)
        assert (result.success, result.response_status) == (True, 200), result.error_message
        assert "ignored" in json.loads(result.response_body)

        target = setup.other_version()
        before = setup.webhook_counts()
        moved = time.monotonic()
        set_alias(setup.registry.uri, NAME, ALIAS, target)
        sidecar.wait_until(
            lambda status: status["registry"]["resolved_version"] == target,
            LOOKUP_WITHIN,
            f"a registry lookup naming {target} after the webhook",
        )
        looked_up_after = time.monotonic() - moved
        assert setup.webhook_counts()["accepted"] == before["accepted"] + 1
        sidecar.wait_active(target, timeout=60)
        latest = sidecar.status()["history"][0]  # newest first
        assert (latest["to"], latest["result"]) == (target, "succeeded")
        assert looked_up_after < LOOKUP_WITHIN < POLL_INTERVAL
    finally:
        client.delete_webhook(webhook_id)


def test_webhook_with_a_wrong_secret_moves_nothing(setup: Setup) -> None:
    sidecar = setup.sidecar
    serving = sidecar.status()["active"]["version"]
    target = setup.other_version()
    webhook_id = setup.create_webhook("bluegreen-wrong-secret", "not-the-sidecars-secret")
    try:
        before = setup.webhook_counts()
        set_alias(setup.registry.uri, NAME, ALIAS, target)
        deadline = time.monotonic() + LOOKUP_WITHIN
        while setup.webhook_counts()["rejected"] == before["rejected"]:
            assert time.monotonic() < deadline, "the delivery never arrived"
            time.sleep(0.1)
        time.sleep(0.5)
        status = sidecar.status()
        assert status["registry"]["resolved_version"] == serving
        assert status["active"]["version"] == serving
        assert not status["swap_in_progress"]
        assert setup.webhook_counts()["accepted"] == before["accepted"]
        assert "webhook from" in sidecar.log_text()  # the refusal is logged...
        assert SECRET not in sidecar.log_text()  # ...and no secret is
    finally:
        setup.client.delete_webhook(webhook_id)
        # Back where the registry says the sidecar serves, for whatever runs next.
        set_alias(setup.registry.uri, NAME, ALIAS, serving)


def test_reload_needs_the_admin_token(setup: Setup) -> None:
    url = setup.sidecar.admin_url + "/reload"
    code, body = post(url)
    assert code == 401
    assert body["error_code"] == "UNAUTHENTICATED"
    assert post(url, token="wrong")[0] == 401
    code, body = post(url, token=TOKEN)
    assert code == 200
    assert body["resolved"] is True
    assert TOKEN not in Path(setup.sidecar.log_path).read_text()
    # Reads stay open.
    assert setup.sidecar.get("/status", admin=True)[0] == 200
    assert setup.sidecar.get("/livez", admin=True)[0] == 200
