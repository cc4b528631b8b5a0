"""The public port's fast path: which requests it keeps, which it hands to aiohttp, and that both
give the same answers. The behaviours common to both paths are in test_forward.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from mlflow_bluegreen.proxy.relay.upstream import UpstreamConnection, UpstreamPool

from .proxying import Proxy, Upstream, hits

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
# The same small body, framed for the fast path, or chunked and so handed to aiohttp.
FRAMINGS = {
    "fast path": b"Content-Length: 3\r\n\r\n1,2",
    "aiohttp path": b"Transfer-Encoding: chunked\r\n\r\n3\r\n1,2\r\n0\r\n\r\n",
}


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One HTTP/1.1 answer: status line, headers (lower-cased), body by its length or chunks."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        return lines[0], headers, await reader.readexactly(int(headers[b"content-length"]))
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            body += (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                return lines[0], headers, body
    return lines[0], headers, await reader.read()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[tuple[int, list[int]]]]]:
    """A raw upstream answering as `script` says; returns its port and a list that counts the
    connections it accepted."""
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> tuple[int, list[int]]:
        accepted: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(1)
            try:
                await script(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1], accepted

    yield start
    for server in servers:
        server.close()


def answer_once(raw: bytes, then_wait: float = 0.0) -> Script:
    """An upstream that reads one request head, writes `raw`, waits, then closes."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(then_wait)

    return script


def keep_answering(body: bytes, **framing: bool) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            if framing.get("chunked"):
                half = len(body) // 2
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"%x\r\n%s\r\n" % (half, body[:half])
                )
                await writer.drain()
                await asyncio.sleep(0.01)  # two reads on our side, not one
                rest = body[half:]
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    return script


async def test_small_requests_stay_on_the_fast_path_and_share_one_upstream_connection(
    proxy: Proxy,
) -> None:
    async with aiohttp.ClientSession() as client:
        for index in range(20):
            async with client.post(proxy.url + "/invocations", data=b"[%d]" % index) as response:
                assert response.status == 200
                seen = await response.json()
                assert seen["sha256"] == hashlib.sha256(b"[%d]" % index).hexdigest()
    assert len(proxy.public.handover.connections) == 0  # aiohttp never saw one
    assert [status for _m, status, _t in proxy.seen] == [200] * 20
    pools = [each.raw for each in proxy.public.pools]
    assert len(pools) == 1 and pools[0].open == 1


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /invocations HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\n1,2\r\n0\r\n\r\n",
        # An expectation we do not know: aiohttp's answer, whatever it is.
        b"POST /invocations HTTP/1.1\r\nHost: a\r\nExpect: something\r\n"
        b"Content-Length: 3\r\n\r\n1,2",
    ],
)
async def test_unusual_requests_are_handed_to_aiohttp_and_answered(
    proxy: Proxy, request_bytes: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(request_bytes)
    status, headers, body = await read_answer(reader)
    assert status.startswith(b"HTTP/1.1 200")
    assert headers[b"x-model-version"] == b"7"
    assert json.loads(body)["sha256"] == hashlib.sha256(b"1,2").hexdigest()
    assert len(proxy.public.handover.connections) == 1
    writer.close()


async def test_head_is_answered_without_a_body(proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"HEAD /ping HTTP/1.1\r\nHost: a\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"X-Model-Version: 7" in head
    writer.write(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")  # nothing left over before it
    assert json.loads((await read_answer(reader))[2])["path_qs"] == "/after"
    writer.close()


# A small body stays on the fast path; one over the replay limit is handed to aiohttp, whose
# low-level server leaves Expect to its handler.
@pytest.mark.parametrize("size", [3, (1 << 20) + 1], ids=["fast path", "aiohttp path"])
async def test_expect_100_continue_is_answered_before_the_body_is_sent(
    proxy: Proxy, size: int
) -> None:
    body = b"1" * size
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(
        b"POST /invocations HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    status, _headers, answer = await read_answer(reader)
    assert status.startswith(b"HTTP/1.1 200")
    seen = json.loads(answer)
    assert seen["sha256"] == hashlib.sha256(body).hexdigest()
    assert "expect" not in {name.lower() for name, _v in seen["headers"]}
    writer.close()


async def test_an_http10_clients_expectation_is_ignored(proxy: Proxy) -> None:
    # RFC 9110 §10.1.1: an HTTP/1.0 client sends its body without waiting; no interim answer.
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /invocations HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    await asyncio.sleep(0.2)  # the head alone has been read
    writer.write(b"1,2")
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.startswith(b"HTTP/1.1 200"), data[:80]
    assert b"100 Continue" not in data


@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
async def test_an_absolute_form_target_reaches_the_worker_as_its_path(
    proxy: Proxy, framing: bytes
) -> None:
    # What a client configured with the sidecar as its HTTP proxy sends (RFC 9112 §3.2.2).
    status, headers, body = await proxy.raw(
        b"POST http://models.example/invocations?x=%2F HTTP/1.1\r\nHost: models.example\r\n"
        b"Connection: close\r\n" + framing
    )
    assert status == 200
    assert headers["x-model-version"] == "7"
    seen = json.loads(body)
    assert seen["path_qs"] == "/invocations?x=%2F"
    assert seen["sha256"] == hashlib.sha256(b"1,2").hexdigest()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"CONNECT models.example:443 HTTP/1.1\r\nHost: models.example:443\r\n\r\n",
    ],
    ids=["asterisk", "CONNECT"],
)
async def test_a_target_that_names_no_path_is_400_and_never_forwarded(
    echo_upstream: TestServer, proxy: Proxy, request_bytes: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(request_bytes)
    status, _headers, body = await asyncio.wait_for(read_answer(reader), 5)
    writer.close()
    assert status.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error_code"] == "BAD_REQUEST"
    assert hits(echo_upstream) == []


async def test_an_upgrade_request_is_answered_as_plain_http(
    echo_upstream: TestServer, proxy: Proxy
) -> None:
    # The scoring protocol has no upgrade: the worker sees a plain request, without Upgrade.
    status, headers, body = await asyncio.wait_for(
        proxy.raw(
            b"GET /ping HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, close\r\n"
            b"Upgrade: websocket\r\n\r\n"
        ),
        5,
    )
    assert status == 200
    assert headers["x-model-version"] == "7"
    forwarded = {name.lower() for name, _value in json.loads(body)["headers"]}
    assert "upgrade" not in forwarded
    assert hits(echo_upstream) == ["/ping"]


async def send_in_pieces(
    port: int, data: bytes, pieces: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    step = -(-len(data) // pieces)
    with contextlib.suppress(ConnectionError):  # a 400 may come, and a close, before the end
        for start in range(0, len(data), step):
            writer.write(data[start : start + step])
            await writer.drain()
            await asyncio.sleep(0.001)
    return reader, writer


@pytest.mark.parametrize("pieces", [1, 40], ids=["one read", "many reads"])
async def test_a_header_line_over_the_limit_is_400_and_never_forwarded(
    make_proxy: Any, scripted: Any, pieces: int
) -> None:
    port, accepted = await scripted(keep_answering(b"ok"))
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{port}"))
    head = b"GET /ping HTTP/1.1\r\nHost: a\r\nX-Huge: %s\r\n\r\n" % (b"h" * 10_000)
    reader, writer = await send_in_pieces(proxy.port, head, pieces)
    try:
        status, _headers, _body = await asyncio.wait_for(read_answer(reader), 5)
        assert status.split()[1] == b"400"  # aiohttp's answer to its parser's error
    except ConnectionError:
        pass  # closed on what was still coming, the 400 lost to the reset: also fine
    writer.close()
    assert accepted == []


async def test_a_long_head_of_short_lines_is_handed_to_aiohttp_and_forwarded_whole(
    proxy: Proxy,
) -> None:
    # The fast path parses at most 8 KiB of head; past that, aiohttp's limits (per line) apply.
    filler = [(b"X-Filler-%d" % index, b"f" * 1000) for index in range(20)]
    head = b"GET /ping HTTP/1.1\r\nHost: a\r\n"
    head += b"".join(b"%s: %s\r\n" % pair for pair in filler) + b"\r\n"
    reader, writer = await send_in_pieces(proxy.port, head, 40)
    status, _headers, body = await asyncio.wait_for(read_answer(reader), 5)
    writer.close()
    assert status.startswith(b"HTTP/1.1 200")
    forwarded = {name.encode(): value.encode() for name, value in json.loads(body)["headers"]}
    assert all(forwarded[name] == value for name, value in filler)
    assert len(proxy.public.handover.connections) == 1


async def test_pipelined_requests_are_answered_in_order(proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(
        b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n1"
        b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n2"
    )
    paths = [json.loads((await read_answer(reader))[2])["path_qs"] for _ in range(2)]
    assert paths == ["/one", "/two"]
    # The next request, sent while nothing is pending, is answered too.
    writer.write(b"GET /three HTTP/1.1\r\nHost: a\r\n\r\n")
    assert json.loads((await read_answer(reader))[2])["path_qs"] == "/three"
    writer.close()


async def test_a_request_sent_while_the_previous_is_answered_waits_its_turn(
    make_proxy: Any, echo_upstream: TestServer
) -> None:
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{echo_upstream.port}"))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /slow?s=0.2 HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.05)  # the first is at the worker now
    writer.write(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
    first = json.loads((await read_answer(reader))[2])
    second = json.loads((await read_answer(reader))[2])
    assert (first["path_qs"], second["path_qs"]) == ("/slow?s=0.2", "/after")
    assert len(proxy.public.handover.connections) == 0
    writer.close()


async def test_a_request_that_arrives_in_pieces_stays_on_the_fast_path(proxy: Proxy) -> None:
    request = b"POST /invocations HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    for index in range(0, len(request), 7):
        writer.write(request[index : index + 7])
        await writer.drain()
        await asyncio.sleep(0.005)
    status, _headers, body = await read_answer(reader)
    assert status.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["sha256"] == hashlib.sha256(b"hello world").hexdigest()
    assert len(proxy.public.handover.connections) == 0
    writer.close()


async def test_a_chunked_answer_is_rechunked_for_http11_and_read_to_close_for_http10(
    make_proxy: Any, scripted: Any
) -> None:
    body = bytes(range(256)) * 300
    port, _accepted = await scripted(keep_answering(body, chunked=True))
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{port}"))

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    _status, headers, received = await read_answer(reader)
    assert headers[b"transfer-encoding"] == b"chunked"
    assert headers[b"x-model-version"] == b"7"
    assert received == body
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /x HTTP/1.0\r\n\r\n")
    _status, headers, received = await read_answer(reader)  # no length: read to the end
    assert b"transfer-encoding" not in headers
    assert headers[b"connection"] == b"close"
    assert received == body
    writer.close()


async def test_a_large_answer_streams_to_a_slow_reader_intact(
    make_proxy: Any, scripted: Any
) -> None:
    body = bytes(i % 253 for i in range(4 * 1024 * 1024))
    port, accepted = await scripted(keep_answering(body))
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{port}"))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=1 << 16)
    writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(body) in head
    received = bytearray()
    while len(received) < len(body):
        received += await reader.read(1 << 16)
        if len(received) < 1 << 20:
            await asyncio.sleep(0.001)  # slow at first: the proxy must hold back, not buffer
    assert bytes(received) == body
    # The worker's connection went back to the pool readable: the next answer comes through it.
    writer.write(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
    _status, _headers, again = await asyncio.wait_for(read_answer(reader), 5)
    assert again == body
    assert len(accepted) == 1
    writer.close()


async def test_connection_close_from_the_client_is_honoured(proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    _status, headers, _body = await read_answer(reader)
    assert headers[b"connection"] == b"close"
    assert await reader.read() == b""
    writer.close()


@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
async def test_a_large_answer_cut_after_its_headers_closes_the_client_connection(
    make_proxy: Any, scripted: Any, framing: bytes
) -> None:
    # Too large to hold until complete (small ones are: test_forward.py), so its head is out.
    port, _accepted = await scripted(
        answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nonly part" % (2 << 20))
    )
    upstream = Upstream(f"http://127.0.0.1:{port}")
    proxy = await make_proxy(upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\n" + framing)
    data = await asyncio.wait_for(reader.read(), 5)  # the proxy closes: no hang
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"only part")
    writer.close()
    # A worker that cut its answer short failed it: that counts against a canary.
    assert (upstream.in_flight.count, upstream.in_flight.failed) == (0, 1)


async def test_a_malformed_answer_is_502(make_proxy: Any, scripted: Any) -> None:
    port, _accepted = await scripted(answer_once(b"NOT HTTP AT ALL\r\n\r\n", then_wait=1))
    upstream = Upstream(f"http://127.0.0.1:{port}")
    proxy = await make_proxy(upstream)
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.url + "/x") as response,
    ):
        assert response.status == 502
        assert (await response.json())["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert (upstream.in_flight.count, upstream.in_flight.failed) == (0, 1)


async def test_an_idle_upstream_connection_the_worker_closed_is_not_reused(
    make_proxy: Any, scripted: Any
) -> None:
    # One answer, then a close, as uvicorn does after its keep-alive timeout.
    port, accepted = await scripted(answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{port}"))
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.get(proxy.url + "/x") as response:
                assert (response.status, await response.read()) == (200, b"ok")
            await asyncio.sleep(0.05)
    assert len(accepted) == 3


async def test_shutdown_finishes_the_answer_in_progress_and_closes_idle_connections(
    make_proxy: Any, echo_upstream: TestServer
) -> None:
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{echo_upstream.port}"))
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    busy_writer.write(b"GET /slow?s=0.3 HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.1)
    closing = asyncio.create_task(proxy.public.close(5))
    assert await asyncio.wait_for(idle_reader.read(), 1) == b""  # closed at once
    _status, headers, body = await read_answer(busy_reader)
    assert json.loads(body)["path_qs"] == "/slow?s=0.3"
    assert headers[b"connection"] == b"close"
    await asyncio.wait_for(closing, 2)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", proxy.port)
    idle_writer.close()
    busy_writer.close()


async def test_the_access_log_is_written_when_asked_for(
    make_proxy: Any, echo_upstream: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{echo_upstream.port}"))
    proxy.public.access_log = True
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        async with (
            aiohttp.ClientSession() as client,
            client.post(proxy.url + "/invocations?a=1", data=b"{}") as response,
        ):
            await response.read()
    ours = [r for r in caplog.records if r.pathname.endswith("exchange.py")]  # not echo's
    lines = [r.getMessage() for r in ours if r.name == "aiohttp.access"]
    assert len(lines) == 1
    assert '"POST /invocations?a=1 HTTP/1.1" 200' in lines[0]


async def test_answers_on_both_paths_carry_the_same_headers(
    make_proxy: Any, echo_upstream: TestServer
) -> None:
    """The fast path and aiohttp's path must not be told apart by a client."""
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{echo_upstream.port}"))

    async def names(request: bytes) -> set[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(request)
        _status, headers, _body = await read_answer(reader)
        writer.close()
        return set(headers) - {b"content-length", b"transfer-encoding"}

    fast = await names(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n1,2")
    handed = await names(
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n1,2\r\n0\r\n\r\n"
    )
    assert fast == handed
    assert b"x-model-version" in fast


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


async def test_a_connection_paused_for_a_slow_client_is_pooled_readable() -> None:
    """The whole answer can arrive in the read that fills the client's buffer: the connection
    is paused and released in the same step, and must not go to the pool deaf."""
    pool = UpstreamPool("127.0.0.1", 1)
    connection = UpstreamConnection(pool)
    transport = RecordingTransport()
    connection.connection_made(transport)
    connection.keep_alive = True
    connection.pause_reading()
    assert not transport.reading
    pool.release(connection)
    assert transport.reading
    assert pool.idle() is connection


@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
async def test_a_workers_own_x_model_version_is_replaced_not_repeated(
    make_proxy: Any, scripted: Any, framing: bytes
) -> None:
    port, _accepted = await scripted(
        answer_once(b"HTTP/1.1 200 OK\r\nX-Model-Version: 99\r\nContent-Length: 2\r\n\r\nok")
    )
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{port}"))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /invocations HTTP/1.1\r\nHost: a\r\n" + framing)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    versions = [line for line in head.lower().split(b"\r\n") if line.startswith(b"x-model-version")]
    assert versions == [b"x-model-version: 7"]  # the version the sidecar routed to


async def test_a_client_that_sends_but_does_not_read_is_not_answered_into_memory(
    make_proxy: Any, scripted: Any
) -> None:
    # Each answer is held whole (under the replay limit); a client that keeps asking without
    # reading must stop being read, not have answer after answer buffered for it.
    answer = bytes(i % 251 for i in range(512 * 1024))
    port, _accepted = await scripted(keep_answering(answer))
    proxy = await make_proxy(Upstream(f"http://127.0.0.1:{port}"))
    requests = 40  # 20 MiB of answers
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=1 << 16)
    for _ in range(requests):
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.sleep(0.01)  # one read each, after the last answer: not pipelined
    await asyncio.sleep(0.3)
    answered = len(proxy.seen)
    (connection,) = proxy.public.connections  # on the fast path, not handed over
    buffered = connection.transport.get_write_buffer_size()
    assert answered < requests / 2, f"{answered} answers produced for a client that reads none"
    assert buffered <= 2 * len(answer)
    # Once it reads, every answer comes, whole and in order.
    for _ in range(requests):
        _status, _headers, body = await asyncio.wait_for(read_answer(reader), 5)
        assert body == answer
    assert len(proxy.seen) == requests
    writer.close()


@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
async def test_a_client_slower_than_the_read_timeout_is_not_the_workers_timeout(
    make_proxy: Any, scripted: Any, framing: bytes
) -> None:
    # The worker answered at once; the client takes longer to read it than the worker is
    # allowed to take to answer. Only the worker's silence is timed.
    body = bytes(i % 253 for i in range(8 * 1024 * 1024))  # over the replay limit: streamed
    port, _accepted = await scripted(keep_answering(body))
    upstream = Upstream(f"http://127.0.0.1:{port}", read_timeout=0.3)
    proxy = await make_proxy(upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=1 << 16)
    writer.write(b"POST /big HTTP/1.1\r\nHost: a\r\n" + framing)
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(1.0)  # buffers full, the proxy has stopped reading the worker
    received = bytearray()
    while len(received) < len(body):
        piece = await asyncio.wait_for(reader.read(1 << 16), 5)
        assert piece, f"cut after {len(received)} of {len(body)} bytes"
        received += piece
    assert bytes(received) == body
    assert (upstream.in_flight.count, upstream.in_flight.failed) == (0, 0)
    writer.close()


@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
async def test_a_worker_that_stalls_part_way_through_a_small_answer_is_504(
    make_proxy: Any, scripted: Any, framing: bytes
) -> None:
    port, _accepted = await scripted(
        answer_once(b'HTTP/1.1 200 OK\r\nContent-Length: 23\r\n\r\n{"predic', then_wait=3)
    )
    upstream = Upstream(f"http://127.0.0.1:{port}", read_timeout=0.3)
    proxy = await make_proxy(upstream)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /invocations HTTP/1.1\r\nHost: a\r\n" + framing)
    status, _headers, body = await asyncio.wait_for(read_answer(reader), 5)
    writer.close()
    # Held whole, so nothing of it went out: the same timeout answer as a silent worker's.
    assert status.startswith(b"HTTP/1.1 504")
    assert json.loads(body)["error_code"] == "DEADLINE_EXCEEDED"
    assert (upstream.in_flight.count, upstream.in_flight.failed) == (0, 1)


async def test_a_worker_that_answers_with_an_upgrade_is_502(
    make_proxy: Any, scripted: Any, caplog: pytest.LogCaptureFixture
) -> None:
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    port, _accepted = await scripted(answer_once(switch, then_wait=1))
    upstream = Upstream(f"http://127.0.0.1:{port}")
    proxy = await make_proxy(upstream)
    status, _headers, body = await asyncio.wait_for(
        proxy.raw(b"GET /ping HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), 5
    )
    assert status == 502  # nobody asked to switch protocols
    assert json.loads(body)["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert (upstream.in_flight.count, upstream.in_flight.failed) == (0, 1)
    # Handled as a bad answer, not as an exception escaping our protocol into the event loop.
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


@pytest.mark.parametrize("framing", FRAMINGS.values(), ids=FRAMINGS.keys())
async def test_a_client_that_stops_reading_its_answer_is_cut_off_after_the_timeout(
    make_proxy: Any, scripted: Any, framing: bytes
) -> None:
    body = bytes(i % 253 for i in range(16 * 1024 * 1024))  # more than loopback buffers hold
    port, _accepted = await scripted(keep_answering(body))
    upstream = Upstream(f"http://127.0.0.1:{port}", read_timeout=0.2)
    proxy = await make_proxy(upstream, body_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=1 << 16)
    writer.write(b"POST /big HTTP/1.1\r\nHost: a\r\n" + framing)
    await reader.readuntil(b"\r\n\r\n")
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.sleep(1.5)  # reads nothing: its buffers fill, then the sidecar's
    received = 0
    with contextlib.suppress(ConnectionError):
        while piece := await asyncio.wait_for(reader.read(1 << 20), 5):
            received += len(piece)
    assert received < len(body), "a client that stalled past the timeout got it all"
    assert loop.time() - began < 5
    await asyncio.sleep(0.1)
    # The client's doing, not the worker's: nothing in flight, nothing held against it.
    assert (upstream.in_flight.count, upstream.in_flight.failed) == (0, 0)
    assert proxy.public.connections == set()
    writer.close()
