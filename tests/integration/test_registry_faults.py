"""The registry misbehaves for real while clients send requests: a tracking server that is slow
or answers 5xx (a fault-injecting reverse proxy in front of a real `mlflow server`), an alias or
a registered model deleted, and MLflow's own basic-auth app refusing the sidecar's credentials.
In every case the sidecar keeps serving what it serves, with zero failed requests, says what is
wrong once in its log and all the time in /status and /metrics, and recovers by itself."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from mlflow_bluegreen.proxy.demo import SidecarProcess
from mlflow_bluegreen.proxy.loadgen import LoadResult, closed_loop
from mlflow_bluegreen.worker.sandbox import EmbeddedRegistry, register_iris_version, set_alias
from mlflow_bluegreen.worker.spec import free_port

from .conftest import Registry

pytestmark = pytest.mark.integration

ALIAS_LOOKUP = "/registered-models/alias"
FAILED = "registry lookup failed"
RECOVERED = "registry answers again"


# -- a reverse proxy that passes, fails or stalls requests to the real registry ----------------

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "host",
}


@dataclass(frozen=True)
class Hit:
    at: float  # time.monotonic()
    mode: str
    path: str


@dataclass
class FaultInjector:
    """Sits between the sidecar (and its workers) and a real `mlflow server`, on its own event
    loop in a thread. `mode`: `pass` forwards, `error` answers `error_status` without asking
    the server, `slow` holds each request until the mode changes (or `hold` seconds) and then
    treats it as the mode says by then. Set it with `set_mode` from any thread."""

    upstream: str
    mode: str = "pass"
    error_status: int = 503
    hold: float = 60.0
    hits: list[Hit] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultInjector:
        self._loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name="fault-injector", daemon=True
        )
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fault injector did not start")
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def set_mode(self, mode: str) -> None:
        def apply() -> None:
            self.mode = mode
            self._changed.set()
            self._changed = asyncio.Event()

        asyncio.run_coroutine_threadsafe(_call(apply), self._loop).result(5)

    def lookups(self, mode: str, since: float = 0.0) -> list[float]:
        """When the registry was asked for the alias in `mode` (each attempt, retries too)."""
        return [
            h.at
            for h in list(self.hits)
            if h.mode == mode and ALIAS_LOOKUP in h.path and h.at >= since
        ]

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._open())
        started.set()
        self._loop.run_forever()

    async def _open(self) -> None:
        self._changed = asyncio.Event()  # pulsed on each mode change
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        # Bodies pass through as they are (compressed or not): this is a wire, not a client.
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def _close(self) -> None:
        await self._session.close()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(Hit(time.monotonic(), self.mode, request.path))
        if self.mode == "slow":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.hold):
                    await self._changed.wait()
        if self.mode == "error":
            return web.Response(status=self.error_status, text="injected fault")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as answer:
            body = await answer.read()
            back = [(k, v) for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP]
            response = web.Response(status=answer.status, body=body)
            for name, value in back:
                response.headers.add(name, value)
            return response


async def _call(function: Callable[[], None]) -> None:
    function()


# -- helpers -------------------------------------------------------------------------------------


def registry_errors(sidecar: SidecarProcess) -> dict[str, float]:
    """`mlflow_bluegreen_registry_errors_total` by kind, read with Prometheus' own parser."""
    _code, body = sidecar.get("/metrics", admin=True)
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "mlflow_bluegreen_registry_errors":
            return {s.labels["kind"]: s.value for s in family.samples if s.name.endswith("_total")}
    return {}


def grown(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


class LogCursor:
    """The sidecar's log from a point on: a module-scoped sidecar's log spans several tests."""

    def __init__(self, sidecar: SidecarProcess) -> None:
        self._sidecar = sidecar
        self._offset = len(sidecar.log_text())

    def text(self) -> str:
        return self._sidecar.log_text()[self._offset :]

    def count(self, needle: str) -> int:
        return self.text().count(needle)


def polls(attempts: list[float], gap: float = 0.3) -> list[list[float]]:
    """Attempts grouped into lookups: MLflow's retry of one lookup follows it at once, the next
    lookup waits at least half a poll interval."""
    groups: list[list[float]] = []
    for at in sorted(attempts):
        if groups and at - groups[-1][-1] < gap:
            groups[-1].append(at)
        else:
            groups.append([at])
    return groups


async def under_load(
    sidecar: SidecarProcess,
    scenario: Callable[[], Awaitable[None]],
    concurrency: int = 2,
    began: float | None = None,
) -> LoadResult:
    """Light closed-loop traffic on the public port for as long as `scenario` runs; `sent` of
    each outcome counts from `began` (a time.monotonic() reading, default now)."""
    stop = asyncio.Event()
    load = asyncio.create_task(
        closed_loop(f"{sidecar.url}/invocations", stop, concurrency=concurrency, began=began)
    )
    try:
        await scenario()
    finally:
        stop.set()
    return await load


def blocking(function: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    return asyncio.to_thread(function, *args)


def wait_state(sidecar: SidecarProcess, state: str, timeout: float = 60.0) -> dict[str, Any]:
    sidecar.wait_until(lambda s: s["registry"]["state"] == state, timeout, f"registry {state}")
    return sidecar.status()


def start_sidecar(
    model_uri: str, tracking_uri: str, log_path: Path, env: dict[str, str] | None = None
) -> SidecarProcess:
    return SidecarProcess(
        model_uri,
        tracking_uri=tracking_uri,
        extra_args=("--poll-interval", "1"),
        log_path=log_path,
        env=env,
    )


def dump_log_on_failure(sidecar: SidecarProcess) -> None:
    print(f"--- {sidecar.log_path} ---\n{sidecar.log_text()[-6000:]}")


# -- a slow, then failing, then healthy tracking server; deleted aliases and models ------------


@dataclass
class Flaky:
    registry: Registry
    injector: FaultInjector
    sidecar: SidecarProcess
    name: str
    versions: tuple[str, str]

    def active(self) -> str:
        return str(self.sidecar.status()["active"]["version"])


@pytest.fixture(scope="class")
def flaky(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flaky]:
    name = "wobbly"
    first = register_iris_version(registry.uri, name, 1.0)
    second = register_iris_version(registry.uri, name, 0.1)
    set_alias(registry.uri, name, "live", first)
    injector = FaultInjector(registry.uri).start()
    # Short enough that a stalled lookup fails in seconds; only the timeout is set here, the
    # retries are the sidecar's own default (CLIENT_ENV_DEFAULTS), which the test checks.
    sidecar = start_sidecar(
        f"models:/{name}@live",
        injector.uri,
        tmp_path_factory.mktemp("flaky") / "sidecar.log",
        env={"MLFLOW_HTTP_REQUEST_TIMEOUT": "2"},
    )
    try:
        sidecar.wait_active(first, timeout=120)
        yield Flaky(registry, injector, sidecar, name, (first, second))
    finally:
        code = sidecar.stop()
        injector.stop()
        if code != 0:
            dump_log_on_failure(sidecar)


class TestFlakyRegistry:
    def test_slow_then_5xx_registry_keeps_serving_backs_off_and_recovers_by_itself(
        self, flaky: Flaky
    ) -> None:
        sidecar, injector = flaky.sidecar, flaky.injector
        injector.set_mode("pass")
        wait_state(sidecar, "ok")
        serving = flaky.active()
        other = next(v for v in flaky.versions if v != serving)
        log = LogCursor(sidecar)
        errors_before = registry_errors(sidecar)
        total_before = sidecar.status()["registry"]["errors"]
        marks: dict[str, float] = {}
        seen: dict[str, Any] = {}
        status_latency: list[float] = []

        async def sample_status(until: asyncio.Event) -> None:
            async with aiohttp.ClientSession() as session:
                while not until.is_set():
                    began = time.monotonic()
                    async with session.get(f"{sidecar.admin_url}/status") as answer:
                        await answer.read()
                    status_latency.append(time.monotonic() - began)
                    await asyncio.sleep(0.2)

        async def scenario() -> None:
            await asyncio.sleep(1)
            marks["slow"], marks["slow_wall"] = time.monotonic(), time.time()
            injector.set_mode("slow")
            sampling = asyncio.Event()
            sampler = asyncio.create_task(sample_status(sampling))
            await asyncio.sleep(10)
            sampling.set()
            await sampler
            seen["slow"] = await blocking(sidecar.status)
            marks["error"] = time.monotonic()
            injector.set_mode("error")
            await asyncio.sleep(10)
            seen["error"] = await blocking(sidecar.status)
            seen["log"] = log.text()
            marks["pass"], marks["pass_wall"] = time.monotonic(), time.time()
            injector.set_mode("pass")
            await blocking(wait_state, sidecar, "ok", 60)
            marks["recovered"] = time.monotonic()
            # Healthy again, it follows the registry as before.
            await blocking(set_alias, flaky.registry.uri, flaky.name, "live", other)
            await blocking(sidecar.wait_active, other, 120)
            await asyncio.sleep(1)

        began = time.monotonic()
        result = asyncio.run(under_load(sidecar, scenario, began=began))
        during = [
            o for o in result.outcomes if marks["slow"] <= began + o.sent < marks["recovered"]
        ]
        print(
            f"\nslow {marks['error'] - marks['slow']:.0f} s,"
            f" 5xx {marks['pass'] - marks['error']:.0f} s,"
            f" recovered {marks['recovered'] - marks['pass']:.1f} s after:"
            f" {len(during)} requests while faulty, {len(result.outcomes)} in all,"
            f" {len(result.failures)} failed, slowest while faulty"
            f" {max(o.seconds for o in during):.3f} s; /status slowest {max(status_latency):.3f} s"
        )
        assert result.failures == [], result.describe_failures()
        assert len(during) > 100
        assert set(result.by_version()) == {serving, other}

        # The lookups ran in a thread: neither the public port nor the admin port waited for a
        # lookup that hung for two 2-s timeouts.
        assert max(o.seconds for o in during) < 2.0
        assert max(status_latency) < 2.0

        slow = seen["slow"]["registry"]
        assert slow["state"] == "timeout", slow
        # MLflow read MLFLOW_HTTP_REQUEST_TIMEOUT at request time, in the polling client.
        assert "read timeout=2" in slow["last_error"]["message"]
        # Nothing succeeded once the registry went slow. A lookup answered just as the mode
        # changed (the mark is taken before the injector's loop applies it) lands a few ms
        # after the mark (CI, 12-03: 8 ms); a lookup that hung would land seconds after.
        assert slow["last_success"] < marks["slow_wall"] + 0.5
        assert seen["slow"]["active"]["version"] == serving
        failed = seen["error"]["registry"]
        assert failed["state"] == "server_error", failed
        assert "503" in failed["last_error"]["message"]
        assert failed["last_success"] == slow["last_success"]
        # Failing since the first stalled lookup gave up: a poll interval and two timeouts in.
        assert marks["slow_wall"] < failed["failing_since"] < marks["slow_wall"] + 8
        assert seen["error"]["active"]["version"] == serving

        # Each failed lookup is one request and MLflow's one retry (the sidecar's default, not
        # MLflow's 7), and the lookups back off from the 1-s poll interval.
        failing = polls(injector.lookups("error", marks["error"]))
        print(
            f"5xx lookups: {[len(p) for p in failing]} attempts, starting at "
            f"{[round(p[0] - marks['error'], 1) for p in failing]} s"
        )
        assert 2 <= len(failing) <= 5  # about 10 without backoff
        assert all(len(p) <= 2 for p in failing) and any(len(p) == 2 for p in failing)
        starts = [p[0] for p in failing]
        assert max(b - a for a, b in itertools.pairwise(starts)) >= 2.0
        # The first lookup after the registry is back succeeds, within the backoff cap.
        assert marks["recovered"] - marks["pass"] < 35

        # Counted in the metric, by kind, once per failed lookup.
        healthy = sidecar.status()["registry"]
        counted = grown(registry_errors(sidecar), errors_before)
        print(f"registry_errors_total grew by {counted}")
        assert counted.get("timeout", 0) >= 1 and counted.get("server_error", 0) >= 2, counted
        assert sum(counted.values()) == healthy["errors"] - total_before

        # Logged once per state change: timeout, 5xx, healthy again; never once per lookup.
        assert seen["log"].count(f"{FAILED} (timeout)") == 1, seen["log"]
        assert seen["log"].count(f"{FAILED} (server_error)") == 1, seen["log"]
        assert log.count(FAILED) == 2
        assert log.count(RECOVERED) == 1
        assert "Retrying (" not in log.text()  # urllib3's per-attempt warning

        assert healthy["last_success"] > marks["pass_wall"]
        assert healthy["last_error"] is None and healthy["consecutive_errors"] == 0

    def test_a_worker_killed_while_the_registry_is_down_restarts_from_its_copy(
        self, flaky: Flaky
    ) -> None:
        sidecar, injector = flaky.sidecar, flaky.injector
        injector.set_mode("pass")
        wait_state(sidecar, "ok")
        victim = sidecar.status()["active"]
        log = LogCursor(sidecar)
        seen: dict[str, Any] = {}

        def restarted(status: dict[str, Any]) -> bool:
            active = status["active"]
            return active is not None and active["pid"] != victim["pid"]

        async def scenario() -> None:
            await asyncio.sleep(1)
            injector.set_mode("error")  # lookups and artifact downloads alike get 503
            await blocking(wait_state, sidecar, "server_error", 30)
            os.killpg(victim["pid"], signal.SIGKILL)
            await blocking(sidecar.wait_until, restarted, 120, "a restarted worker")
            seen["back"] = await blocking(sidecar.status)
            await asyncio.sleep(1)

        try:
            result = asyncio.run(under_load(sidecar, scenario))
        finally:
            injector.set_mode("pass")
        back = seen["back"]
        print(
            f"\nworker killed, registry down: {len(result.outcomes)} requests,"
            f" {len(result.failures)} failed; restart {back['history'][0]['steps']}"
        )
        assert result.failures == [], result.describe_failures()
        assert back["active"]["version"] == victim["version"]
        assert back["registry"]["state"] == "server_error"  # it was down all along
        assert back["active"]["served_from"] == victim["served_from"]
        restart = back["history"][0]
        assert restart["cause"] == "restart after exit" and restart["result"] == "succeeded"
        assert "download" not in restart["steps"]
        assert "serving the copy of the worker that exited" in log.text()

    def test_alias_deleted_then_model_deleted_keeps_serving_and_follows_the_alias_back(
        self, flaky: Flaky
    ) -> None:
        sidecar, injector = flaky.sidecar, flaky.injector
        injector.set_mode("pass")
        client = MlflowClient(tracking_uri=flaky.registry.uri, registry_uri=flaky.registry.uri)
        uri, name = flaky.registry.uri, flaky.name
        wait_state(sidecar, "ok")
        serving = flaky.active()
        other = next(v for v in flaky.versions if v != serving)
        log = LogCursor(sidecar)
        seen: dict[str, Any] = {}

        async def scenario() -> None:
            await asyncio.sleep(1)
            await blocking(client.delete_registered_model_alias, name, "live")
            seen["alias"] = await blocking(wait_state, sidecar, "not_found", 30)
            await asyncio.sleep(4)  # several lookups, one log line
            seen["alias_later"] = await blocking(sidecar.status)
            # The alias is back, on another version: followed, by itself.
            await blocking(set_alias, uri, name, "live", other)
            await blocking(sidecar.wait_active, other, 120)
            seen["back"] = await blocking(sidecar.status)

            await blocking(client.delete_registered_model, name)
            seen["model"] = await blocking(wait_state, sidecar, "not_found", 30)
            await asyncio.sleep(4)
            seen["model_later"] = await blocking(sidecar.status)
            # Created again from scratch: its versions count from 1 again. Point the alias at a
            # version whose label differs from the one served, so following it shows as a swap.
            version = other
            while version == other:
                version = await blocking(register_iris_version, uri, name, 0.5)
            await blocking(set_alias, uri, name, "live", version)
            await blocking(sidecar.wait_active, version, 120)
            seen["recreated"] = version
            await asyncio.sleep(1)

        result = asyncio.run(under_load(sidecar, scenario))
        print(
            f"\nalias deleted, model deleted: {len(result.outcomes)} requests,"
            f" {len(result.failures)} failed, by version {dict(result.by_version())}"
        )
        assert result.failures == [], result.describe_failures()
        assert set(result.by_version()) == {serving, other, seen["recreated"]}

        alias = seen["alias"]
        assert alias["active"]["version"] == serving
        assert alias["registry"]["last_error"]["permanent"] is True
        assert "alias" in alias["registry"]["last_error"]["message"].lower()
        assert seen["alias_later"]["registry"]["errors"] > alias["registry"]["errors"]
        assert seen["alias_later"]["active"]["version"] == serving
        assert seen["back"]["registry"]["state"] == "ok"

        model = seen["model"]
        assert model["active"]["version"] == other
        assert name in model["registry"]["last_error"]["message"]
        assert seen["model_later"]["registry"]["errors"] > model["registry"]["errors"]
        assert seen["model_later"]["active"]["version"] == other
        assert sidecar.process.poll() is None

        text = log.text()
        assert text.count(f"{FAILED} (not_found)") == 2, text  # alias gone, then model gone
        assert text.count(f"still serving {serving}") == 1
        assert text.count(f"still serving {other}") == 1
        assert text.count(RECOVERED) == 2


# -- MLflow's basic-auth app: the right credentials, then wrong ones, then no permission ------

ADMIN = ("admin", "admin-pw-7c1e5f0a93")
SCORER = ("scorer", "scorer-pw-4b8d2e6f10")
CHANGED = "changed-pw-9a3c5e7b21"


@contextlib.contextmanager
def credentials(user: tuple[str, str]) -> Iterator[None]:
    """MLflow reads these from the environment at request time: the test's own client."""
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update(dict(zip(names, user, strict=True)))
    try:
        yield
    finally:
        for n, value in saved.items():
            if value is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = value


def as_admin(server: EmbeddedRegistry, action: Callable[[Any], Any]) -> Any:
    """`action(auth_client)` with the admin's credentials (users, passwords, permissions)."""
    from mlflow.server import get_app_client

    with credentials(ADMIN):
        return action(get_app_client("basic-auth", tracking_uri=server.uri))


@dataclass
class Guarded:
    server: EmbeddedRegistry
    sidecar: SidecarProcess
    versions: tuple[str, str]
    logs: Path

    def admin(self, action: Callable[[Any], Any]) -> Any:
        return as_admin(self.server, action)


@pytest.fixture(scope="class")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.fail("MLflow's basic-auth app needs Flask-WTF: pip install 'mlflow[auth]'")
    root = tmp_path_factory.mktemp("auth")
    config = root / "basic_auth.ini"
    # The keys of the installed MLflow's own basic_auth.ini; READ for every known user.
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN[0]}\n"
        f"admin_password = {ADMIN[1]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server = EmbeddedRegistry(
        root=root / "registry",
        app_name="basic-auth",
        env={
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-secret-for-tests-only",
        },
    ).start()
    sidecar: SidecarProcess | None = None
    try:
        with credentials(ADMIN):
            first = register_iris_version(server.uri, "guarded", 1.0)
            second = register_iris_version(server.uri, "guarded", 0.1)
            set_alias(server.uri, "guarded", "live", first)
        as_admin(server, lambda auth: auth.create_user(*SCORER))
        # MLflow authentication the usual way: the sidecar inherits the variables, its registry
        # client and its workers (which download the artifacts) read them.
        sidecar = start_sidecar(
            "models:/guarded@live",
            server.uri,
            root / "sidecar.log",
            env={"MLFLOW_TRACKING_USERNAME": SCORER[0], "MLFLOW_TRACKING_PASSWORD": SCORER[1]},
        )
        sidecar.wait_active(first, timeout=120)
        yield Guarded(server, sidecar, (first, second), root)
    finally:
        if sidecar is not None and sidecar.stop() != 0:
            dump_log_on_failure(sidecar)
        server.stop()


def assert_no_secret(sidecar: SidecarProcess, *secrets: str) -> None:
    shown = {
        "log": sidecar.log_text(),
        "status": json.dumps(sidecar.status()),
        "metrics": sidecar.get("/metrics", admin=True)[1].decode(),
    }
    for where, text in shown.items():
        for secret in secrets:
            assert secret not in text, f"a password is in the sidecar's {where}"


class TestBasicAuth:
    def test_with_the_right_credentials_it_serves_and_follows_the_alias(
        self, guarded: Guarded
    ) -> None:
        sidecar = guarded.sidecar
        wait_state(sidecar, "ok")
        serving = str(sidecar.status()["active"]["version"])
        other = next(v for v in guarded.versions if v != serving)

        async def scenario() -> None:
            await asyncio.sleep(1)
            with credentials(ADMIN):
                await blocking(set_alias, guarded.server.uri, "guarded", "live", other)
            # A new worker downloads the new version's artifacts, authenticated the same way.
            await blocking(sidecar.wait_active, other, 120)
            await asyncio.sleep(1)

        result = asyncio.run(under_load(sidecar, scenario))
        print(
            f"\nbasic-auth alias move: {len(result.outcomes)} requests,"
            f" {len(result.failures)} failed"
        )
        assert result.failures == [], result.describe_failures()
        assert set(result.by_version()) == {serving, other}
        assert_no_secret(sidecar, SCORER[1], ADMIN[1])

    def test_wrong_password_then_revoked_permission_keep_serving_and_report_denied(
        self, guarded: Guarded
    ) -> None:
        sidecar = guarded.sidecar
        wait_state(sidecar, "ok")
        serving = str(sidecar.status()["active"]["version"])
        log = LogCursor(sidecar)
        seen: dict[str, Any] = {}

        async def scenario() -> None:
            await asyncio.sleep(1)
            # The sidecar's password stops working (rotated by an admin): 401.
            await blocking(guarded.admin, lambda a: a.update_user_password(SCORER[0], CHANGED))
            seen["401"] = await blocking(wait_state, sidecar, "denied", 30)
            await asyncio.sleep(3)
            seen["401_later"] = await blocking(sidecar.status)
            await blocking(guarded.admin, lambda a: a.update_user_password(*SCORER))
            await blocking(wait_state, sidecar, "ok", 60)
            # The password works, the permission on the model is taken away: 403.
            await blocking(
                guarded.admin,
                lambda a: a.grant_user_permission(SCORER[0], "registered_model", "guarded", "DENY"),
            )
            seen["403"] = await blocking(wait_state, sidecar, "denied", 30)
            await asyncio.sleep(3)
            seen["403_later"] = await blocking(sidecar.status)
            await blocking(
                guarded.admin,
                lambda a: a.revoke_user_permission(SCORER[0], "registered_model", "guarded"),
            )
            await blocking(wait_state, sidecar, "ok", 60)
            await asyncio.sleep(1)

        result = asyncio.run(under_load(sidecar, scenario))
        print(
            f"\n401 then 403: {len(result.outcomes)} requests, {len(result.failures)} failed;"
            f" errors {seen['403_later']['registry']['errors']}"
        )
        assert result.failures == [], result.describe_failures()
        assert set(result.by_version()) == {serving}
        assert sidecar.process.poll() is None

        for code in ("401", "403"):
            registry = seen[code]["registry"]
            assert registry["last_error"]["kind"] == "denied"
            assert registry["last_error"]["permanent"] is True
            assert code in registry["last_error"]["message"], registry
            later = seen[f"{code}_later"]
            assert later["registry"]["errors"] > registry["errors"]  # still asking, backing off
            assert later["active"]["version"] == serving
        text = log.text()
        assert text.count(f"{FAILED} (denied)") == 2, text  # one per episode
        assert text.count(RECOVERED) == 2
        assert_no_secret(sidecar, SCORER[1], CHANGED, ADMIN[1])

    def test_wrong_credentials_at_start_stop_the_sidecar_loudly_without_the_password(
        self, guarded: Guarded
    ) -> None:
        wrong = "not-the-password-5e2a9c"
        sidecar = start_sidecar(
            "models:/guarded@live",
            guarded.server.uri,
            guarded.logs / "wrong.log",
            env={"MLFLOW_TRACKING_USERNAME": SCORER[0], "MLFLOW_TRACKING_PASSWORD": wrong},
        )
        try:
            code = sidecar.process.wait(60)
        finally:
            sidecar.stop()
        text = sidecar.log_text()
        assert code == 2, text
        assert "denied" in text and "401" in text
        assert wrong not in text
