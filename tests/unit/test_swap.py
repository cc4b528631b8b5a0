"""The swap state machine, driven with fake workers: every transition, in milliseconds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from mlflow_bluegreen.worker.control import Supervisor

from .fakes import Fleet, Plan


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - the conditions span several objects
            await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def in_background(loop: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run a component's `run()` loop for the body of the `with`, then cancel it."""
    task = asyncio.create_task(loop)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def running(supervisor: Supervisor) -> AsyncIterator[Supervisor]:
    try:
        async with in_background(supervisor.run()):
            yield supervisor
    finally:
        await supervisor.close()


def active_version(supervisor: Supervisor) -> str | None:
    return supervisor.active.version if supervisor.active else None


def settled_on(supervisor: Supervisor, version: str) -> bool:
    """`version` serves and its swap has finished: the switch comes before the drain, and a
    swap's record lands in the history only when it is over."""
    return active_version(supervisor) == version and supervisor.current is None


def make(fleet: Fleet, **options: float) -> Supervisor:
    options.setdefault("drain_timeout", 1.0)
    options.setdefault("stop_grace", 0.1)
    return Supervisor(fleet, **options)


async def test_first_version_starts_on_blue_and_is_recorded() -> None:
    fleet = Fleet()
    async with running(make(fleet)) as supervisor:
        assert not supervisor.ready
        supervisor.want("1")
        await until(lambda: supervisor.ready)
        assert supervisor.active is not None
        assert (supervisor.active.slot, supervisor.active.version) == ("blue", "1")
        record = supervisor.history[-1]
        assert (record.from_version, record.to_version, record.result) == (None, "1", "succeeded")
        assert record.cause == "initial"
        assert set(record.steps) >= {"ready", "warm_up", "switch"}


async def test_swap_uses_the_idle_slot_then_stops_the_old_worker() -> None:
    fleet = Fleet()
    async with running(make(fleet)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: len(supervisor.history) == 2)
        assert supervisor.active is not None
        assert (supervisor.active.slot, supervisor.active.version) == ("green", "2")
        assert [w.version for w in fleet.running()] == ["2"]
        record = supervisor.history[-1]
        assert (record.from_version, record.to_version, record.result) == ("1", "2", "succeeded")
        assert record.drained is True
        supervisor.want("3")
        await until(lambda: len(supervisor.history) == 3)
        assert supervisor.active.slot == "blue"
    # The old worker stops only after the new one has started: never more than two at once.
    assert fleet.max_running == 2
    order = [(what, version) for what, _slot, version in fleet.events]
    assert order.index(("start", "2")) < order.index(("stop", "1"))


async def test_switch_happens_before_the_old_worker_finishes_its_requests() -> None:
    fleet = Fleet()
    async with running(make(fleet)) as supervisor:
        supervisor.want("1")
        await until(lambda: supervisor.ready)
        old = fleet.created[0]
        old.in_flight.enter()  # a request that will take a while on v1
        supervisor.want("2")
        await until(lambda: active_version(supervisor) == "2")
        await asyncio.sleep(0.05)
        assert old.running, "stopped while a request was still in flight"
        assert supervisor.current is not None and supervisor.current.step == "drain"
        old.in_flight.leave()
        await until(lambda: not old.running)
        assert supervisor.history[-1].drained is True


async def test_drain_timeout_stops_a_worker_that_never_finishes() -> None:
    fleet = Fleet()
    async with running(make(fleet, drain_timeout=0.05)) as supervisor:
        supervisor.want("1")
        await until(lambda: supervisor.ready)
        stuck = fleet.created[0]
        stuck.in_flight.enter()
        supervisor.want("2")
        await until(lambda: len(supervisor.history) == 2)
        assert not stuck.running
        assert supervisor.history[-1].drained is False


@pytest.mark.parametrize("step", ["start", "ready", "warm_up"])
async def test_a_version_failing_any_step_never_takes_traffic(step: str) -> None:
    fleet = Fleet(plans={"2": Plan(fail_at=step)})
    async with running(make(fleet, retry_base=60)) as supervisor:
        supervisor.want("1")
        await until(lambda: supervisor.ready)
        supervisor.want("2")
        await until(lambda: len(supervisor.history) == 2)
        assert active_version(supervisor) == "1"
        record = supervisor.history[-1]
        assert record.result == "failed"
        assert record.error
        failed = [w for w in fleet.created if w.version == "2"]
        assert failed and not any(w.running for w in failed)
        assert supervisor.failure_for("2") is not None
        if step != "start":
            assert "Traceback: boom" in record.output


async def test_failed_version_is_retried_with_backoff_not_in_a_tight_loop() -> None:
    fleet = Fleet(plans={"2": Plan(fail_at="ready")})
    async with running(make(fleet, retry_base=0.05, retry_cap=0.2)) as supervisor:
        supervisor.want("1")
        await until(lambda: supervisor.ready)
        supervisor.want("2")
        await asyncio.sleep(0.6)
        attempts = fleet.started("2")
        # Delays of at least 0.025, 0.05, 0.1, 0.1, ... seconds: a handful of tries, not hundreds.
        assert 2 <= attempts <= 10, attempts
        assert active_version(supervisor) == "1"


async def test_a_new_version_after_a_failure_is_tried_at_once() -> None:
    fleet = Fleet(plans={"2": Plan(fail_at="warm_up")})
    async with running(make(fleet, retry_base=60)) as supervisor:
        supervisor.want("1")
        await until(lambda: supervisor.ready)
        supervisor.want("2")
        await until(lambda: supervisor.failure_for("2") is not None)
        supervisor.want("3")
        await until(lambda: active_version(supervisor) == "3", timeout=1.0)
        assert fleet.started("2") == 1


async def test_retry_now_forgets_the_backoff() -> None:
    fleet = Fleet(plans={"2": Plan(fail_at="ready")})
    async with running(make(fleet, retry_base=60)) as supervisor:
        supervisor.want("2")
        await until(lambda: fleet.started("2") == 1)
        await until(lambda: supervisor.failure_for("2") is not None)
        fleet.plans["2"] = Plan()
        supervisor.retry_now()
        await until(lambda: active_version(supervisor) == "2")


async def test_changes_during_a_swap_wait_for_it_and_the_latest_wins() -> None:
    fleet = Fleet(plans={"2": Plan(ready_delay=0.2)})
    async with running(make(fleet)) as supervisor:
        supervisor.want("1")
        await until(lambda: supervisor.ready)
        supervisor.want("2")
        await until(lambda: fleet.started("2") == 1)
        supervisor.want("3")
        supervisor.want("4")
        assert active_version(supervisor) == "1"
        await until(lambda: settled_on(supervisor, "4"))
        assert fleet.started("3") == 0
        assert [r.to_version for r in supervisor.history] == ["1", "2", "4"]
        assert fleet.max_running == 2


async def test_active_worker_that_dies_is_restarted_on_the_same_version() -> None:
    fleet = Fleet()
    async with running(make(fleet)) as supervisor:
        supervisor.want("5")
        await until(lambda: supervisor.ready)
        first = fleet.created[0]
        first.crash()
        await until(lambda: supervisor.active is not None and supervisor.active is not first)
        assert active_version(supervisor) == "5"
        assert supervisor.history[-1].cause == "restart after exit"


async def test_close_stops_every_worker_including_one_starting() -> None:
    fleet = Fleet(plans={"2": Plan(ready_delay=10)})
    supervisor = make(fleet)
    task = asyncio.create_task(supervisor.run())
    supervisor.want("1")
    await until(lambda: supervisor.ready)
    supervisor.want("2")
    await until(lambda: fleet.started("2") == 1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await supervisor.close()
    assert fleet.running() == []
    assert supervisor.active is None


async def test_in_flight_counts_every_worker_that_still_serves() -> None:
    fleet = Fleet()
    async with running(make(fleet)) as supervisor:
        supervisor.want("1")
        await until(lambda: supervisor.ready)
        old = fleet.created[0]
        old.in_flight.enter()
        supervisor.want("2")
        await until(lambda: active_version(supervisor) == "2")
        assert supervisor.active is not None
        supervisor.active.in_flight.enter()
        assert supervisor.in_flight() == 2
        old.in_flight.leave()
        supervisor.active.in_flight.leave()
        assert supervisor.in_flight() == 0


async def test_the_registry_lookup_time_opens_the_swap_history() -> None:
    fleet = Fleet()
    async with running(make(fleet)) as supervisor:
        supervisor.want("1", 0.25)
        await until(lambda: supervisor.ready and supervisor.current is None)
        record = supervisor.history[-1]
        assert next(iter(record.steps)) == "resolve"
        assert record.steps["resolve"] == 0.25
