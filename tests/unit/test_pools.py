"""The proxy's connections to its workers: made per worker, closed when it stops."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from mlflow_bluegreen.proxy.relay.pools import Pools
from mlflow_bluegreen.proxy.relay.upstream import POOL_KEEPALIVE
from mlflow_bluegreen.worker.control.inflight import InFlight


@dataclass(eq=False)
class Worker:
    base_url: str
    in_flight: InFlight = field(default_factory=InFlight)


async def test_the_sessions_use_the_relays_read_timeout_and_the_retry_never_reuses() -> None:
    pools = Pools(12.5)
    pooled, fresh = pools.for_worker(Worker("http://127.0.0.1:9001")).sessions  # type: ignore[arg-type]
    assert pooled.timeout.sock_read == fresh.timeout.sock_read == 12.5
    assert pooled.connector is not None and fresh.connector is not None
    assert not pooled.connector.force_close and fresh.connector.force_close
    assert pooled.connector._keepalive_timeout == POOL_KEEPALIVE  # type: ignore[attr-defined]
    await pools.close()
    assert pooled.closed and fresh.closed


async def test_a_stopped_workers_pools_are_closed() -> None:
    pools = Pools(5.0)
    worker = Worker("http://127.0.0.1:9001")
    entry = pools.for_worker(worker)  # type: ignore[arg-type]
    pooled, fresh = entry.sessions
    assert pools.for_worker(worker) is entry  # type: ignore[arg-type]
    pools.worker_stopped(worker)  # type: ignore[arg-type]
    assert len(pools) == 0
    await asyncio.sleep(0.01)
    assert pooled.closed and fresh.closed
    pools.worker_stopped(worker)  # type: ignore[arg-type]  # told twice: nothing to do
    await pools.close()


async def test_pools_of_workers_the_supervisor_no_longer_runs_are_dropped_on_a_new_one() -> None:
    old, busy, live = (Worker(f"http://127.0.0.1:{port}") for port in (9001, 9002, 9003))
    running = [old, busy, live]
    pools = Pools(5.0, lambda: running)  # type: ignore[arg-type, return-value]
    sessions = {w: pools.for_worker(w).sessions for w in running}  # type: ignore[arg-type]
    busy.in_flight.enter()  # a request still being answered
    new = Worker("http://127.0.0.1:9004")
    running[:] = [live, new]  # the supervisor stopped the other two, without telling us
    pools.for_worker(new)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert len(pools) == 3  # busy, live and the new one
    assert all(session.closed for session in sessions[old])
    assert not any(session.closed for session in sessions[busy] + sessions[live])
    busy.in_flight.leave(200)
    newer = Worker("http://127.0.0.1:9005")
    running.append(newer)
    pools.for_worker(newer)  # type: ignore[arg-type]
    assert len(pools) == 3  # live, new and newer: busy's pools went once it was done
    await pools.close()
