"""The judging benchmark's arithmetic: what counts as failed in the mix, the windows read from
/status samples, and the shadow run's p99 against the steady window before the alias move."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import judging

        yield judging
    finally:
        sys.path.remove(str(BENCHMARKS))


def record(i, scheduled, *, latency_ms=5.0, status=200, version="1", kind="ordinary", error=None):
    return [i, scheduled, 0.0, latency_ms / 1000, status, version, error, kind]


def test_a_malformed_request_fails_only_when_not_answered_400(bench) -> None:
    assert bench.as_expected(record(0, 0, status=400, kind="malformed"))
    assert not bench.as_expected(record(0, 0, status=200, kind="malformed"))
    assert not bench.as_expected(record(0, 0, status=502, kind="malformed"))
    assert bench.as_expected(record(0, 0, status=204, kind="edge"))
    assert not bench.as_expected(record(0, 0, status=400, kind="edge"))
    assert not bench.as_expected(record(0, 0, status=None, kind="ordinary", error="Timeout"))


def test_the_mix_is_the_same_on_every_run_and_close_to_its_shares(bench) -> None:
    kinds = bench.kinds_for(10_000)
    assert kinds == bench.kinds_for(10_000)
    assert kinds.count("ordinary") == pytest.approx(6000, abs=200)
    assert kinds.count("edge") == pytest.approx(3000, abs=200)
    assert kinds.count("malformed") == pytest.approx(1000, abs=100)


def test_a_window_runs_from_the_first_sample_naming_the_version_to_the_first_without(
    bench,
) -> None:
    samples = [
        {"t": 0.0, "canary": None},
        {"t": 1.0, "canary": "2"},
        {"t": 6.0, "canary": None},
        {"t": 9.0, "canary": "2"},  # tried again later: not this window
    ]
    assert bench.window(samples, "canary", "2") == (1.0, 6.0)
    assert bench.window(samples, "canary", "3") is None
    assert bench.window(samples[:2], "canary", "2") == (1.0, 1.0)


def test_shadow_cost_compares_the_shadow_run_with_as_long_a_window_before_the_move(
    bench,
) -> None:
    # 100 req/s; steady before the move at 10 s, twice as slow during the shadow run (12-17 s)
    rows = [
        record(n, n / 100, latency_ms=(10.0 if 1200 <= n < 1700 else 5.0) + (n % 100) / 100)
        for n in range(2000)
    ]
    move = bench.Move("raises", "2", moved=10.0, verdict_at=17.0, record={})
    move.marks.update(shadow_from=12.0, shadow_to=17.0)
    cost = bench.shadow_cost(move, rows)
    assert cost["steady_n"] == cost["shadow_n"] == 500
    assert cost["steady_p99_ms"] == pytest.approx(5.98, abs=0.01)
    assert cost["shadow_p99_ms"] == pytest.approx(10.98, abs=0.01)
    assert cost["ratio"] == pytest.approx(1.84, abs=0.01)
    assert bench.shadow_cost(bench.Move("good", "4", 1.0, 2.0, {}), rows) is None


async def test_the_mixed_load_sends_each_request_the_body_of_its_kind(bench) -> None:
    """The load child against a server that answers each body by what it is: every record's
    kind must match the answer its body got, at the fixed rate."""
    import asyncio
    import time

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    kind_of = {body: kind for kind, body in bench.PAYLOADS.items()}
    status_of = {"ordinary": 200, "edge": 201, "malformed": 400}

    async def invocations(request: web.Request) -> web.Response:
        kind = kind_of[await request.read()]
        return web.Response(status=status_of[kind], text=kind)

    app = web.Application()
    app.router.add_post("/invocations", invocations)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        load = await asyncio.to_thread(
            bench.MixedLoad, f"http://127.0.0.1:{server.port}/invocations", rate=100, max_seconds=1
        )
        await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - load.t0)))
        records = await asyncio.to_thread(load.stop)
    finally:
        await server.close()
    assert [r[0] for r in records] == list(range(100))
    kinds = bench.kinds_for(101)
    assert [r[bench.KIND] for r in records] == kinds[:100]
    assert [r[bench.STATUS] for r in records] == [status_of[kind] for kind in kinds[:100]]
