"""The registry watcher with a scripted resolver (backoff, logging, recovery, pokes), and the
classification of what MLflow's real client raises against tiny local servers that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from mlflow import MlflowClient

from mlflow_bluegreen.worker.control import Supervisor
from mlflow_bluegreen.worker.model.uri import parse_model_uri
from mlflow_bluegreen.worker.tracking.registry import RegistryError, RegistryResolver, classify
from mlflow_bluegreen.worker.tracking.watcher import Watcher

from .fakes import Fleet
from .test_swap import in_background, running, until

LOG = "mlflow_bluegreen.worker.tracking.watcher"


class ScriptedResolver:
    """Answers from a script (a version, or an exception to raise); repeats the last entry.
    Records when each lookup happened, on the loop's clock."""

    def __init__(self, *script: str | Exception) -> None:
        self.script: deque[str | Exception] = deque(script)
        self.calls: list[float] = []
        self.threads: list[threading.Thread] = []

    def resolve(self) -> str:
        self.calls.append(time.monotonic())
        self.threads.append(threading.current_thread())
        step = self.script.popleft() if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return step

    def gaps(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.calls)]


def down() -> RegistryError:
    return RegistryError("unavailable", "Connection refused")


@contextlib.asynccontextmanager
async def watching(watcher: Watcher) -> AsyncIterator[Watcher]:
    async with in_background(watcher.run()):
        yield watcher


@contextlib.asynccontextmanager
async def serving(version: str) -> AsyncIterator[Supervisor]:
    """A supervisor (fake workers) with `version` active, so 'still serving' means something."""
    supervisor = Supervisor(Fleet(), drain_timeout=0.1, stop_grace=0.1)
    async with running(supervisor):
        supervisor.want(version)
        await until(lambda: supervisor.active is not None)
        yield supervisor


def failure_lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.name == LOG)


# -- backoff ------------------------------------------------------------------------------------

BASE = 0.04
CAP = 0.32
SLACK = 0.15  # scheduling delay on a busy machine; never makes a wait shorter


async def test_errors_back_off_exponentially_up_to_the_cap() -> None:
    resolver = ScriptedResolver(down())
    supervisor = Supervisor(Fleet())
    watcher = Watcher(
        resolver, supervisor, poll_interval=BASE, tracked=True, max_error_interval=CAP
    )
    async with watching(watcher):
        await until(lambda: watcher.consecutive_errors >= 8, timeout=10)
    gaps = resolver.gaps()[:7]
    # Attempt n waits base·2ⁿ (capped), jittered into [½, 1] of that.
    ceilings = [min(CAP, BASE * 2**n) for n in range(len(gaps))]
    for gap, ceiling in zip(gaps, ceilings, strict=True):
        assert ceiling / 2 * 0.95 <= gap <= ceiling + SLACK, (gaps, ceilings)
    # Grown well past the poll interval, and no further than the cap.
    assert min(gaps[4:]) >= CAP / 2 * 0.95
    assert watcher.errors == watcher.consecutive_errors
    assert watcher.status()["state"] == "unavailable"
    assert supervisor.wanted is None


async def test_recovery_resets_the_backoff() -> None:
    errors = [down() for _ in range(6)]
    resolver = ScriptedResolver(*errors, "1", down(), down())
    watcher = Watcher(
        resolver, Supervisor(Fleet()), poll_interval=BASE, tracked=True, max_error_interval=CAP
    )
    async with watching(watcher):
        await until(
            lambda: watcher.consecutive_errors >= 2 and len(resolver.calls) >= 9, timeout=10
        )
    gaps = resolver.gaps()
    assert gaps[5] >= CAP / 2 * 0.95  # the wait before the success had grown to the cap
    assert gaps[6] <= BASE + SLACK  # after the success: one poll interval
    assert gaps[7] <= BASE + SLACK  # the first error after it starts from the base again
    assert watcher.last_success is not None and watcher.consecutive_errors >= 1


# -- logging and status ------------------------------------------------------------------------


async def test_each_state_change_is_logged_once_not_each_poll(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    resolver = ScriptedResolver(
        "1",
        # The message of one kind changes from poll to poll (object addresses, request ids).
        *(RegistryError("unavailable", f"refused <conn at 0x{n:x}>") for n in range(4)),
        RegistryError("timeout", "Read timed out"),
        RegistryError("timeout", "Read timed out"),
        "1",
        "1",
        RegistryError("denied", "403 Permission denied"),
        RegistryError("denied", "403 Permission denied"),
        "1",
    )
    async with serving("1") as supervisor:
        watcher = Watcher(resolver, supervisor, poll_interval=60, tracked=True)
        for _ in range(13):
            await watcher.resolve_now()
    assert failure_lines(caplog, "registry lookup failed (unavailable)") == 1
    assert failure_lines(caplog, "registry lookup failed (timeout)") == 1
    assert failure_lines(caplog, "registry lookup failed (denied)") == 1
    assert failure_lines(caplog, "registry lookup failed") == 3
    assert failure_lines(caplog, "registry answers again") == 2
    assert failure_lines(caplog, "still serving 1") == 3
    assert watcher.errors == 8
    assert watcher.status()["state"] == "ok"


async def test_status_tells_what_fails_since_when_and_the_last_success() -> None:
    resolver = ScriptedResolver("3", RegistryError("server_error", "too many 503 error responses"))
    watcher = Watcher(resolver, Supervisor(Fleet()), poll_interval=60, tracked=True)
    assert watcher.status()["state"] == "unknown"
    await watcher.resolve_now()
    succeeded_at = watcher.status()["last_success"]
    before_errors = time.time()
    await watcher.resolve_now()
    await watcher.resolve_now()
    status = watcher.status()
    assert status["state"] == "server_error"
    assert status["last_success"] == succeeded_at
    assert status["failing_since"] >= before_errors
    assert status["consecutive_errors"] == 2
    assert status["last_error"]["kind"] == "server_error"
    assert status["last_error"]["permanent"] is False
    assert status["resolved_version"] == "3"


# -- permanent errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        RegistryError("not_found", "Registered model alias live not found."),
        RegistryError("not_found", "Registered Model with name=iris not found"),
        RegistryError("denied", "API request failed with error code 401 != 200"),
        RegistryError("denied", "API request failed with error code 403 != 200"),
    ],
    ids=["alias-deleted", "model-deleted", "401", "403"],
)
async def test_permanent_errors_keep_the_current_version_and_recover(
    error: RegistryError, caplog: pytest.LogCaptureFixture
) -> None:
    resolver = ScriptedResolver("1", error, error, "2")
    async with serving("1") as supervisor:
        watcher = Watcher(resolver, supervisor, poll_interval=60, tracked=True)
        assert await watcher.resolve_now()
        assert not await watcher.resolve_now()
        assert not await watcher.resolve_now()
        assert supervisor.wanted == "1"
        assert supervisor.active is not None and supervisor.active.version == "1"
        status = watcher.status()
        assert status["state"] == error.kind
        assert status["last_error"]["permanent"] is True
        assert status["last_error"]["message"] == str(error)
        # Back when the registry names a version again (the alias was set, access restored).
        assert await watcher.resolve_now()
        assert supervisor.wanted == "2"
    assert failure_lines(caplog, f"registry lookup failed ({error.kind})") == 1


# -- pokes, overlapping lookups, threads -----------------------------------------------------


async def test_poke_resolves_at_once_instead_of_at_the_next_poll() -> None:
    resolver = ScriptedResolver("1", "2")
    supervisor = Supervisor(Fleet())
    watcher = Watcher(resolver, supervisor, poll_interval=600, tracked=True)
    async with watching(watcher):
        await until(lambda: len(resolver.calls) == 1)
        await asyncio.sleep(0.05)
        assert len(resolver.calls) == 1  # the next poll is ten minutes away
        watcher.poke()
        await until(lambda: supervisor.wanted == "2", timeout=1)
    assert len(resolver.calls) == 2


async def test_poke_during_backoff_asks_at_once() -> None:
    resolver = ScriptedResolver(down(), down(), "4")
    supervisor = Supervisor(Fleet())
    watcher = Watcher(resolver, supervisor, poll_interval=600, tracked=True, max_error_interval=600)
    async with watching(watcher):
        await until(lambda: len(resolver.calls) == 1)
        assert watcher.status()["retry_in"] > 100
        watcher.poke()
        await until(lambda: len(resolver.calls) == 2, timeout=1)
        watcher.poke()
        await until(lambda: supervisor.wanted == "4", timeout=1)


async def test_a_slow_old_answer_does_not_undo_a_newer_one() -> None:
    release = threading.Event()

    class Registry:
        def __init__(self) -> None:
            self.calls = 0

        def resolve(self) -> str:
            self.calls += 1
            if self.calls == 1:  # asked before the alias moved, answers after
                release.wait(5)
                return "1"
            return "2"

    supervisor = Supervisor(Fleet())
    watcher = Watcher(Registry(), supervisor, poll_interval=60, tracked=True)
    slow = asyncio.create_task(watcher.resolve_now())
    await asyncio.sleep(0.05)
    assert await watcher.resolve_now()
    assert supervisor.wanted == "2"
    release.set()
    await slow
    assert supervisor.wanted == "2"
    assert watcher.last_version == "2"


async def test_a_hung_lookup_blocks_neither_the_loop_nor_the_exit() -> None:
    release = threading.Event()

    class Hung:
        def __init__(self) -> None:
            self.thread: threading.Thread | None = None

        def resolve(self) -> str:
            self.thread = threading.current_thread()
            release.wait(10)
            return "1"

    hung = Hung()
    watcher = Watcher(hung, Supervisor(Fleet()), poll_interval=60, tracked=True)
    lookup = asyncio.create_task(watcher.resolve_now())
    ticks = 0
    began = time.monotonic()
    while time.monotonic() - began < 0.2:
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks >= 10  # the loop kept running while the registry hung
    assert hung.thread is not None and hung.thread.daemon  # the interpreter will not wait for it
    lookup.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lookup
    release.set()


async def test_a_fixed_uri_is_resolved_once() -> None:
    resolver = ScriptedResolver("abc")
    watcher = Watcher(resolver, Supervisor(Fleet()), poll_interval=0.01, tracked=False)
    await asyncio.wait_for(watcher.run(), 2)
    assert len(resolver.calls) == 1


# -- what MLflow's client raises, classified ---------------------------------------------------


@pytest.fixture
def quick_client(monkeypatch: pytest.MonkeyPatch) -> None:
    # Read by MLflow at request time, as in the sidecar (CLIENT_ENV_DEFAULTS, shorter here).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")


async def lookup_error(tracking_uri: str) -> RegistryError:
    def ask() -> Any:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    try:
        await asyncio.to_thread(lambda: ask().get_model_version_by_alias("iris", "champion"))
    except Exception as error:  # noqa: BLE001 - what we want to look at
        return classify(error)
    raise AssertionError("the lookup succeeded")


@contextlib.asynccontextmanager
async def answering(handler: Callable[[web.Request], Any]) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.usefixtures("quick_client")
async def test_connection_refused_is_unavailable() -> None:
    error = await lookup_error(f"http://127.0.0.1:{closed_port()}")
    assert error.kind == "unavailable", error
    assert not error.permanent


@pytest.mark.usefixtures("quick_client")
async def test_no_answer_in_time_is_timeout() -> None:
    async def stall(_request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    async with answering(stall) as uri:
        began = time.monotonic()
        error = await lookup_error(uri)
    assert error.kind == "timeout", error
    assert "read timeout=1" in str(error)  # MLFLOW_HTTP_REQUEST_TIMEOUT, read per request
    assert time.monotonic() - began < 4


@pytest.mark.usefixtures("quick_client")
@pytest.mark.parametrize("code", [500, 502, 503, 504])
async def test_5xx_is_server_error(code: int) -> None:
    async def fail(_request: web.Request) -> web.Response:
        return web.Response(status=code, text="upstream trouble")

    async with answering(fail) as uri:
        error = await lookup_error(uri)
    assert error.kind == "server_error", error
    assert not error.permanent


@pytest.mark.usefixtures("quick_client")
@pytest.mark.parametrize("code", [401, 403])
async def test_401_and_403_are_denied(code: int) -> None:
    async def refuse(_request: web.Request) -> web.Response:
        return web.Response(status=code, text="You are not authenticated.")

    async with answering(refuse) as uri:
        error = await lookup_error(uri)
    assert error.kind == "denied", error
    assert error.permanent


# What `mlflow server` answers (3.x, SQL store) for a deleted alias and a deleted model.
MISSING = {
    "alias": (400, "INVALID_PARAMETER_VALUE", "Registered model alias champion not found."),
    "model": (404, "RESOURCE_DOES_NOT_EXIST", "Registered Model with name=iris not found"),
}


@pytest.mark.usefixtures("quick_client")
@pytest.mark.parametrize("what", sorted(MISSING))
async def test_deleted_alias_or_model_is_not_found(what: str) -> None:
    status, code, message = MISSING[what]

    async def missing(_request: web.Request) -> web.Response:
        return web.json_response({"error_code": code, "message": message}, status=status)

    async with answering(missing) as uri:
        error = await lookup_error(uri)
    assert error.kind == "not_found", error
    assert error.permanent
    assert message in str(error)


@pytest.mark.usefixtures("quick_client")
async def test_other_invalid_parameters_are_bad_requests() -> None:
    async def invalid(_request: web.Request) -> web.Response:
        body = {"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid alias name: '@@'"}
        return web.json_response(body, status=400)

    async with answering(invalid) as uri:
        error = await lookup_error(uri)
    assert error.kind == "bad_request", error


@pytest.mark.usefixtures("quick_client")
async def test_urllib3_does_not_log_each_retried_attempt(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")

    async def stall(_request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    caplog.set_level(logging.DEBUG, logger="urllib3")
    async with answering(stall) as uri:
        resolver = RegistryResolver(parse_model_uri("models:/iris@champion"), uri)
        with pytest.raises(RegistryError) as raised:
            await asyncio.to_thread(resolver.resolve)
    assert raised.value.kind == "timeout"
    assert not [r for r in caplog.records if "Retrying (" in r.getMessage()]


@pytest.mark.usefixtures("quick_client")
async def test_credentials_never_reach_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-9f8e7d6c5b4a")
    port = closed_port()
    error = await lookup_error(f"http://alice:pw-0123456789@127.0.0.1:{port}")
    assert error.kind == "unavailable"
    assert "pw-0123456789" not in str(error)
    wrapped = classify(RuntimeError("header was Bearer tok-9f8e7d6c5b4a"))
    assert "tok-9f8e7d6c5b4a" not in str(wrapped)
