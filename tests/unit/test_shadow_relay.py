"""Shadow copies through the real public port, on both of its paths: the client is answered by
the active worker only, the copy's answer is compared, and copies count in no request metric."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from mlflow_bluegreen.worker.control import ShadowPolicy
from mlflow_bluegreen.worker.control.shadow import ShadowRun

from .proxying import Proxy, Upstream

BODY = b'{"inputs": [[1, 2]]}'
PATHS = {
    "fast path": b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY),
    "aiohttp path": b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY),
}


def model(predictions: list[float], status: int = 200, delay: float = 0.0) -> web.Application:
    async def invocations(request: web.Request) -> web.Response:
        body = await request.read()
        request.app[SEEN].append(body)
        await asyncio.sleep(delay)
        return web.json_response({"predictions": predictions}, status=status)

    app = web.Application()
    app[SEEN] = []
    app.router.add_post("/invocations", invocations)
    return app


SEEN = web.AppKey("seen", list)


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, TestServer]]:
    made = {
        "active": TestServer(model([0.5]), host="127.0.0.1"),
        "same": TestServer(model([0.5 * (1 + 1e-9)]), host="127.0.0.1"),
        "different": TestServer(model([0.7]), host="127.0.0.1"),
        "failing": TestServer(model([0.5], status=500), host="127.0.0.1"),
        "stuck": TestServer(model([0.5], delay=2.0), host="127.0.0.1"),
    }
    for server in made.values():
        await server.start_server()
    yield made
    for server in made.values():
        await server.close()


def upstream(server: TestServer, version: str) -> Upstream:
    return Upstream(f"http://127.0.0.1:{server.port}", version=version)


async def shadowed_proxy(
    make_proxy: Any, servers: dict[str, TestServer], shadow: str, **policy: Any
) -> tuple[Proxy, ShadowRun]:
    proxy: Proxy = await make_proxy(upstream(servers["active"], "1"))
    run = ShadowRun(upstream(servers[shadow], "2"), ShadowPolicy(100, 60, **policy), "1")
    proxy.supervisor.roles.shadow = run
    return proxy, run


async def post(proxy: Proxy, framing: bytes) -> tuple[int, dict[str, str], bytes]:
    return await proxy.raw(
        b"POST /invocations HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\n" + framing
    )


async def settled(run: ShadowRun, pairs: int) -> None:
    async with asyncio.timeout(5):
        while run.compared + run.dropped < pairs or run.in_flight:  # noqa: ASYNC110 - counters
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("framing", PATHS.values(), ids=PATHS.keys())
@pytest.mark.parametrize(
    ("shadow", "agreed"), [("same", 5), ("different", 0), ("failing", 0)], ids=str
)
async def test_copies_are_compared_and_the_client_sees_the_active_answer_only(
    make_proxy: Any, servers: dict[str, TestServer], framing: bytes, shadow: str, agreed: int
) -> None:
    proxy, run = await shadowed_proxy(make_proxy, servers, shadow)
    for _ in range(5):
        status, headers, body = await post(proxy, framing)
        assert status == 200 and headers["x-model-version"] == "1"
        assert json.loads(body.split(b"\r\n")[1] if b"\r\n" in body else body) == {
            "predictions": [0.5]
        }
    await settled(run, 5)
    assert (run.agreed, run.disagreed) == (agreed, 5 - agreed)
    assert servers[shadow].app[SEEN] == [BODY] * 5  # the same request, byte for byte
    # Copies are in no client-facing metric: five requests, five observations.
    assert len(proxy.seen) == 5 and all(seen[1] == 200 for seen in proxy.seen)
    assert run.worker.in_flight.answered == 0  # nor in the canary's tally
    # /status shows the run as it goes.
    shown = proxy.supervisor.roles.status()["shadow"]
    assert (shown["version"], shown["percent"], shown["sent"]) == ("2", 100, 5)
    assert (shown["compared"], shown["agreed"], shown["dropped"]) == (5, agreed, 0)
    if agreed == 0:
        why = run.examples[0]["why"]
        assert why in (
            "predictions[0]: 0.7 where the active version said 0.5",
            "status 500 where the active version said 200",
        )


async def test_a_busy_new_worker_gets_no_more_copies_and_the_client_never_waits_for_one(
    make_proxy: Any, servers: dict[str, TestServer]
) -> None:
    proxy, run = await shadowed_proxy(make_proxy, servers, "stuck", max_in_flight=2)
    loop = asyncio.get_running_loop()
    began = loop.time()
    answers = await asyncio.gather(*(post(proxy, PATHS["fast path"]) for _ in range(6)))
    assert [status for status, _h, _b in answers] == [200] * 6
    assert loop.time() - began < 1.5  # the copies take 2 s each
    assert run.dropped == 4 and run.sent == 2
    await settled(run, 6)
    assert run.agreed == 2


async def test_only_predictions_that_name_no_version_are_copied(
    make_proxy: Any, servers: dict[str, TestServer]
) -> None:
    proxy, run = await shadowed_proxy(make_proxy, servers, "same")
    await proxy.raw(b"GET /ping HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    await proxy.raw(
        b"POST /invocations HTTP/1.1\r\nHost: a\r\nX-Model-Version: 1\r\nConnection: close\r\n"
        + PATHS["fast path"]
    )
    await asyncio.sleep(0.1)
    assert run.sent == 0 and servers["same"].app[SEEN] == []
