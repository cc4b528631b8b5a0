"""The public port against a real HTTP upstream: what is forwarded, what is not, what fails how."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from .proxying import BIG, Proxy, Upstream, hits


async def test_before_any_worker_is_ready_everything_is_503_in_mlflow_shape(
    make_proxy: Any,
) -> None:
    proxy = await make_proxy(None)
    async with aiohttp.ClientSession() as client:
        for method, path in (("GET", "/ping"), ("GET", "/health"), ("POST", "/invocations")):
            async with client.request(method, proxy.url + path, data=b"{}") as response:
                assert response.status == 503
                assert response.headers["Retry-After"]
                assert response.content_type == "application/json"
                body = await response.json()
                assert body["error_code"] == "TEMPORARILY_UNAVAILABLE"
                assert body["message"]
    assert [status for _m, status, _t in proxy.seen] == [503, 503, 503]


async def test_forwards_method_path_query_and_body_and_adds_the_version(proxy: Proxy) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            proxy.url + "/invocations?x=1",
            data=b'{"inputs": [1]}',
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 200
        assert response.headers["X-Model-Version"] == "7"
        assert response.headers["X-Upstream"] == "echo"
        seen = await response.json()
    assert seen["method"] == "POST"
    assert seen["sha256"] == hashlib.sha256(b'{"inputs": [1]}').hexdigest()
    assert dict(seen["headers"])["Content-Type"] == "application/json"
    assert proxy.seen[0][:2] == ("POST", 200)


async def test_path_and_query_are_forwarded_byte_for_byte(proxy: Proxy) -> None:
    status, _headers, body = await proxy.raw(
        b"GET /a%2Fb/../c?y=%2F&z=%20+1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    assert status == 200
    assert json.loads(body)["path_qs"] == "/a%2Fb/../c?y=%2F&z=%20+1"


async def test_hop_by_hop_request_headers_are_dropped_and_host_rewritten(proxy: Proxy) -> None:
    status, _headers, body = await proxy.raw(
        b"POST /invocations HTTP/1.1\r\n"
        b"Host: public.example\r\n"
        b"Connection: close, x-drop-me\r\n"  # names are case-insensitive
        b"X-Drop-Me: secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"X-Keep-Me: yes\r\n"
        b"Content-Type: text/csv\r\n"
        b"Content-Length: 3\r\n\r\n"
        b"1,2"
    )
    assert status == 200
    seen = json.loads(body)
    names = {k.lower(): v for k, v in seen["headers"]}
    for dropped in ("x-drop-me", "keep-alive", "te", "upgrade", "proxy-connection"):
        assert dropped not in names, dropped
    assert names["x-keep-me"] == "yes"
    assert names["content-type"] == "text/csv"
    assert names["content-length"] == "3"
    assert names["host"] != "public.example"
    # Nothing the client did not send: no library User-Agent, Accept or Accept-Encoding.
    assert not {"user-agent", "accept", "accept-encoding"} & set(names)


async def test_hop_by_hop_response_headers_are_dropped(make_proxy: Any) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-SECRET\r\nX-Secret: 1\r\n"
            b"Keep-Alive: timeout=5\r\nX-Fine: 1\r\nServer: uvicorn\r\n\r\nok"
        )
        await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{port}"))
    status, headers, body = await proxy.raw(
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    server.close()
    assert (status, body) == (200, b"ok")
    assert headers["x-fine"] == "1"
    assert headers["server"] == "uvicorn"
    assert "x-secret" not in headers
    assert "keep-alive" not in headers


async def test_large_bodies_stream_both_ways(proxy: Proxy) -> None:
    payload = bytes(i % 251 for i in range(BIG))
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.url + "/invocations", data=payload) as response:
            seen = await response.json()
        assert (seen["length"], seen["sha256"]) == (BIG, hashlib.sha256(payload).hexdigest())

        async with client.get(proxy.url + "/big") as response:
            assert response.headers["Content-Length"] == str(BIG)
            received = await response.read()
        block = bytes(range(256)) * 4096
        assert received == (block * (BIG // len(block) + 1))[:BIG]


async def test_chunked_request_body_is_forwarded_whole(proxy: Proxy) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"row{i},".encode()

    async with (
        aiohttp.ClientSession() as client,
        client.post(proxy.url + "/invocations", data=chunks()) as response,
    ):
        seen = await response.json()
    assert seen["sha256"] == hashlib.sha256(b"row0,row1,row2,row3,row4,").hexdigest()


async def test_compressed_bodies_pass_through_untouched(proxy: Proxy) -> None:
    packed = gzip.compress(b'{"inputs": [[1, 2]]}')
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        async with client.post(
            proxy.url + "/invocations", data=packed, headers={"Content-Encoding": "gzip"}
        ) as response:
            seen = await response.json()
        assert seen["sha256"] == hashlib.sha256(packed).hexdigest()
        assert dict(seen["headers"])["Content-Encoding"] == "gzip"

        async with client.get(proxy.url + "/gzipped") as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(await response.read()) == b'{"predictions": [1]}'


async def test_a_connection_closed_before_any_response_byte_is_retried_once(
    make_proxy: Any,
) -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        if connections == 1:  # as a worker closing an idle keep-alive connection would
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{port}"))
    async with (
        aiohttp.ClientSession() as client,
        client.post(proxy.url + "/invocations", data=b"{}") as response,
    ):
        assert (response.status, await response.read()) == (200, b"ok")
    server.close()
    assert connections == 2


async def _upstream_closing(answer_begun: bytes) -> tuple[asyncio.Server, Upstream, list[int]]:
    """A worker that reads each request, writes `answer_begun` (perhaps nothing) and closes the
    connection: what a SIGKILL does to the requests in flight."""
    closed: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if answer_begun:
            writer.write(answer_begun)
            await writer.drain()
        writer.close()
        closed.append(1)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, Upstream(f"http://127.0.0.1:{port}"), closed


async def _chunked(body: bytes) -> AsyncIterator[bytes]:
    yield body


# A small body goes the fast path; a chunked one is handed to aiohttp: both must behave alike.
BODIES = {"fast path": lambda: b"{}", "aiohttp path": lambda: _chunked(b"{}")}
# Where a worker can stop: before any byte of an answer (the request is then tried once more on
# a fresh connection: two closes), or between uvicorn's writes of an answer's head and its body.
CLOSES = {
    "before answering": (b"", 2),
    "part-way through a small answer": (
        b'HTTP/1.1 200 OK\r\nContent-Length: 23\r\nX-From: dying\r\n\r\n{"predic',
        1,
    ),
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
@pytest.mark.parametrize(("answer_begun", "closes"), CLOSES.values(), ids=CLOSES.keys())
async def test_a_worker_that_dies_with_a_request_has_it_resent_to_its_replacement(
    echo_upstream: TestServer, make_proxy: Any, body: Any, answer_begun: bytes, closes: int
) -> None:
    # What a SIGKILLed worker does: its connections close a moment before its exit is noticed
    # and traffic moves to the replacement.
    server, dying, closed = await _upstream_closing(answer_begun)
    proxy = await make_proxy(dying, queue_timeout=5)
    live = Upstream(f"http://127.0.0.1:{echo_upstream.port}", version="8")

    def exit_noticed() -> None:
        dying.exited.set()
        proxy.supervisor._set_active(live)

    asyncio.get_running_loop().call_later(0.2, exit_noticed)
    async with (
        aiohttp.ClientSession() as client,
        client.post(proxy.url + "/invocations", data=body()) as response,
    ):
        # Nothing of a cut answer reached the client: only the replacement's.
        assert response.status == 200
        assert response.headers["X-Model-Version"] == "8"
        assert "X-From" not in response.headers
        assert (await response.json())["sha256"] == hashlib.sha256(b"{}").hexdigest()
    assert len(closed) == closes
    assert hits(echo_upstream) == ["/invocations"]
    assert dying.in_flight.count == live.in_flight.count == 0
    assert (dying.in_flight.failed, live.in_flight.failed) == (1, 0)
    server.close()
    await live.close()


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
@pytest.mark.parametrize(("answer_begun", "closes"), CLOSES.values(), ids=CLOSES.keys())
async def test_a_live_worker_that_closes_with_a_request_is_502_at_once(
    make_proxy: Any, body: Any, answer_begun: bytes, closes: int
) -> None:
    server, sick, closed = await _upstream_closing(answer_begun)
    proxy = await make_proxy(sick, queue_timeout=30)
    started = asyncio.get_running_loop().time()
    async with (
        aiohttp.ClientSession() as client,
        client.post(proxy.url + "/invocations", data=body()) as response,
    ):
        # A clean 502, not the head of an answer that never ends.
        assert response.status == 502
        assert (await response.json())["error_code"] == "TEMPORARILY_UNAVAILABLE"
    # Not held for the queue timeout: a worker still alive is not being replaced.
    assert asyncio.get_running_loop().time() - started < 5
    assert len(closed) == closes  # not resent: the worker is still there
    assert (sick.in_flight.count, sick.in_flight.failed) == (0, 1)
    server.close()


async def test_upstream_down_is_502_in_mlflow_shape(make_proxy: Any) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    # After the queue timeout: nothing replaced the dead worker.
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{port}"), queue_timeout=0.2)
    async with (
        aiohttp.ClientSession() as client,
        client.post(proxy.url + "/invocations", data=b"{}") as response,
    ):
        assert response.status == 502
        body = await response.json()
    assert body["error_code"] == "TEMPORARILY_UNAVAILABLE"


async def test_upstream_timeout_is_504_in_mlflow_shape(
    echo_upstream: TestServer, make_proxy: Any
) -> None:
    upstream = Upstream(f"http://127.0.0.1:{echo_upstream.port}", read_timeout=0.2)
    proxy = await make_proxy(upstream)
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.url + "/slow?s=2") as response,
    ):
        assert response.status == 504
        body = await response.json()
    assert body["error_code"] == "DEADLINE_EXCEEDED"
    assert upstream.in_flight.count == 0


async def test_in_flight_is_counted_while_forwarding(
    echo_upstream: TestServer, make_proxy: Any
) -> None:
    upstream = Upstream(f"http://127.0.0.1:{echo_upstream.port}")
    proxy = await make_proxy(upstream)
    async with aiohttp.ClientSession() as client:
        request = asyncio.create_task(client.get(proxy.url + "/slow?s=0.3"))
        await asyncio.sleep(0.15)
        assert upstream.in_flight.count == 1
        response = await request
        await response.read()
        response.release()
    assert upstream.in_flight.count == 0


async def test_client_that_disconnects_mid_request_leaves_nothing_in_flight(
    echo_upstream: TestServer, make_proxy: Any
) -> None:
    upstream = Upstream(f"http://127.0.0.1:{echo_upstream.port}")
    proxy = await make_proxy(upstream)
    _reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /slow?s=0.3 HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await asyncio.sleep(0.1)  # well before the upstream would answer (0.3 s)
    assert upstream.in_flight.count == 0


async def test_client_that_disconnects_mid_response_cancels_the_upstream_request(
    make_proxy: Any,
) -> None:
    stopped = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(200):  # 10 s of answer if nobody stops it
                await response.write(b"x" * 1024)
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            stopped.set()
            raise
        return response

    app = web.Application()
    app.router.add_get("/stream", endless)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        upstream = Upstream(f"http://127.0.0.1:{server.port}")
        proxy = await make_proxy(upstream)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")  # headers are out, the body is flowing
        await reader.read(1024)
        writer.close()
        async with asyncio.timeout(2):
            await stopped.wait()  # the worker stops computing an answer nobody reads
        await asyncio.sleep(0.05)
        assert upstream.in_flight.count == 0
        assert upstream.in_flight.failed == 0  # the client left: not held against the worker
    finally:
        await server.close()


async def test_oversized_body_is_413_and_never_forwarded(
    echo_upstream: TestServer, make_proxy: Any
) -> None:
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{echo_upstream.port}"), max_body_size=1000)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 600

    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.url + "/invocations", data=b"x" * 1001) as response:
            assert response.status == 413
            assert (await response.json())["error_code"] == "RESOURCE_LIMIT_EXCEEDED"
        async with client.post(proxy.url + "/invocations", data=chunks()) as response:
            assert response.status == 413
        async with client.post(proxy.url + "/invocations", data=b"x" * 1000) as response:
            assert response.status == 200
    assert hits(echo_upstream) == ["/invocations"]  # only the one within the limit


async def test_a_body_that_does_not_arrive_is_408_and_never_reaches_a_worker(
    echo_upstream: TestServer, make_proxy: Any
) -> None:
    upstream = Upstream(f"http://127.0.0.1:{echo_upstream.port}")
    proxy = await make_proxy(upstream, body_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /invocations HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n123")
    await writer.drain()
    await asyncio.sleep(0.05)
    assert upstream.in_flight.count == 0  # a slow client does not count on the worker
    answer = await asyncio.wait_for(reader.read(200), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert hits(echo_upstream) == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        # Content-Length and Transfer-Encoding together: a request smuggling vector.
        b"POST /invocations HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        # Obsolete line folding.
        b"GET /ping HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n  two\r\n\r\n",
        # Two different Content-Lengths.
        b"POST /invocations HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
        b"Content-Length: 2\r\n\r\nab",
        b"GARBAGE\r\n\r\n",
    ],
)
async def test_malformed_http_is_rejected_by_the_parser_and_never_forwarded(
    echo_upstream: TestServer, make_proxy: Any, request_bytes: bytes
) -> None:
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{echo_upstream.port}"))
    status, _headers, _body = await proxy.raw(request_bytes)
    assert status == 400
    assert hits(echo_upstream) == []


async def test_a_client_that_trickles_its_headers_is_cut_off_and_never_forwarded(
    echo_upstream: TestServer, make_proxy: Any
) -> None:
    upstream = Upstream(f"http://127.0.0.1:{echo_upstream.port}")
    proxy = await make_proxy(upstream, keepalive_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /invocations HTTP/1.1\r\nHost: a\r\n")
    loop = asyncio.get_running_loop()
    began = loop.time()
    closed_after = None
    for index in range(40):  # a header byte every 0.1 s: 4 s if nobody stops it
        writer.write(b"X-Slow-%d: 1\r\n" % index)
        await asyncio.sleep(0.1)
        if reader.at_eof() or writer.is_closing():
            closed_after = loop.time() - began
            break
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.001):
                if await reader.read(1) == b"":
                    closed_after = loop.time() - began
                    break
    writer.close()
    assert closed_after is not None, "the server kept a trickling client for 4 s"
    assert closed_after < 2.0
    assert hits(echo_upstream) == []
    assert upstream.in_flight.count == 0


async def test_while_closing_health_says_503_and_responses_close_their_connection(
    proxy: Proxy,
) -> None:
    proxy.forwarder.closing = True
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.url + "/ping") as response:
            assert response.status == 503
        async with client.post(proxy.url + "/invocations", data=b"{}") as response:
            assert response.status == 200
            assert response.headers["Connection"] == "close"


async def test_requests_are_held_while_the_worker_restarts(
    echo_upstream: TestServer, make_proxy: Any
) -> None:
    upstream = Upstream(f"http://127.0.0.1:{echo_upstream.port}")
    proxy = await make_proxy(upstream, queue_timeout=5)
    proxy.supervisor._set_active(None)  # the active worker died; its replacement is starting
    async with aiohttp.ClientSession() as client:
        request = asyncio.create_task(client.post(proxy.url + "/invocations", data=b"{}"))
        await asyncio.sleep(0.2)
        assert not request.done()
        async with client.get(proxy.url + "/ping") as ping:
            assert ping.status == 503  # health checks say the truth at once
        proxy.supervisor._set_active(upstream)  # type: ignore[arg-type]
        response = await request
        assert response.status == 200
        response.release()


async def test_held_requests_give_up_after_the_queue_timeout(
    echo_upstream: TestServer, make_proxy: Any
) -> None:
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{echo_upstream.port}"), queue_timeout=0.2)
    proxy.supervisor._set_active(None)
    async with (
        aiohttp.ClientSession() as client,
        client.post(proxy.url + "/invocations", data=b"{}") as response,
    ):
        assert response.status == 503
        assert response.headers["Retry-After"]


async def test_a_request_to_a_dead_worker_waits_for_its_replacement(
    echo_upstream: TestServer, make_proxy: Any
) -> None:
    dead_port = socket_port_nobody_listens_on()
    dead = Upstream(f"http://127.0.0.1:{dead_port}")
    proxy = await make_proxy(dead, queue_timeout=5)
    live = Upstream(f"http://127.0.0.1:{echo_upstream.port}", version="8")

    async def replace_soon() -> None:
        await asyncio.sleep(0.2)
        proxy.supervisor._set_active(live)  # type: ignore[arg-type]

    replacing = asyncio.create_task(replace_soon())
    async with (
        aiohttp.ClientSession() as client,
        client.post(proxy.url + "/invocations", data=b"{}") as response,
    ):
        assert response.status == 200
        assert response.headers["X-Model-Version"] == "8"
    await replacing
    await live.close()


def socket_port_nobody_listens_on() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_x_model_version_routes_to_that_version_or_is_404(
    echo_upstream: TestServer, make_proxy: Any
) -> None:
    upstream = Upstream(f"http://127.0.0.1:{echo_upstream.port}", version="7")
    proxy = await make_proxy(upstream)
    async with aiohttp.ClientSession() as client:
        async with client.post(
            proxy.url + "/invocations", data=b"{}", headers={"X-Model-Version": "7"}
        ) as response:
            assert response.status == 200
            assert response.headers["X-Model-Version"] == "7"
            sent = {k.lower() for k, _v in (await response.json())["headers"]}
            assert "x-model-version" not in sent  # a routing instruction to us, not the model
        async with client.post(
            proxy.url + "/invocations", data=b"{}", headers={"X-Model-Version": "6"}
        ) as response:
            assert response.status == 404
            body = await response.json()
            assert body["error_code"] == "RESOURCE_DOES_NOT_EXIST"
            assert "'6'" in body["message"] and "serving 7" in body["message"]
    assert hits(echo_upstream) == ["/invocations"]


async def test_answers_and_failures_are_counted_per_worker(make_proxy: Any) -> None:
    async def flaky(request: web.Request) -> web.Response:
        return web.Response(status=500 if request.path == "/bad" else 200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", flaky)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        upstream = Upstream(f"http://127.0.0.1:{server.port}")
        proxy = await make_proxy(upstream)
        async with aiohttp.ClientSession() as client:
            for path in ("/good", "/bad", "/good", "/bad", "/bad"):
                async with client.get(proxy.url + path) as response:
                    await response.read()
        assert (upstream.in_flight.answered, upstream.in_flight.failed) == (5, 3)
    finally:
        await server.close()
