"""The swap state machine when workers die at awkward moments, or a shutdown interrupts a
stop: fake workers, milliseconds."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest
from mlflow.types import ColSpec, Schema

from mlflow_bluegreen.proxy.relay import rules
from mlflow_bluegreen.worker.control import CanaryPolicy, Supervisor, Trials

from .fakes import Fleet, Plan
from .test_swap import active_version, running, settled_on, until

IRIS = Schema([ColSpec("double", n) for n in ("a", "b", "c")])
FEWER = Schema([ColSpec("double", n) for n in ("a", "b")])


def make(fleet: Fleet, **options: Any) -> Supervisor:
    options.setdefault("drain_timeout", 1.0)
    options.setdefault("stop_grace", 0.1)
    options.setdefault("health_interval", 0.01)
    return Supervisor(fleet, **options)


def crash_active(supervisor: Supervisor) -> None:
    worker = supervisor.active
    assert worker is not None
    worker.crash()  # type: ignore[attr-defined]


async def shut_down(supervisor: Supervisor, task: asyncio.Task[None]) -> None:
    """What the sidecar does on SIGTERM: cancel the loop, then close()."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await supervisor.close()


async def test_a_crash_while_the_wanted_version_fails_brings_back_the_one_that_served() -> None:
    fleet = Fleet(plans={"2": Plan(fail_at="warm_up")})
    async with running(make(fleet, retry_base=30, retry_cap=60)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: any(r.result == "failed" for r in supervisor.history))
        crash_active(supervisor)
        # 2 backs off for 15-30 s: 1 serves meanwhile, instead of nothing.
        await until(lambda: settled_on(supervisor, "1") and fleet.started("1") == 2)
        assert fleet.started("2") == 1
        assert supervisor.history[-1].cause.startswith("fallback: 2 cannot serve now")
        assert supervisor.wanted == "2"  # the registry's choice stands, retried after its backoff
        assert "2" in supervisor.status()["failed_versions"]


async def test_a_crash_does_not_let_a_version_past_the_signature_guard() -> None:
    fleet = Fleet(plans={"1": Plan(inputs=IRIS), "2": Plan(inputs=FEWER)})
    async with running(make(fleet, retry_cap=60)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        # The registry moves while the active worker dies: nothing runs to compare with.
        crash_active(supervisor)
        supervisor.want("2")
        await until(lambda: any(r.result == "blocked" for r in supervisor.history))
        blocked = next(r for r in supervisor.history if r.result == "blocked")
        assert blocked.from_version is None
        assert "incompatible with version 1" in (blocked.error or "")
        await until(lambda: active_version(supervisor) == "1")
        assert [r.to_version for r in supervisor.history if r.result == "succeeded"] == ["1", "1"]


async def test_the_old_worker_dying_during_a_canary_ends_it_at_once() -> None:
    fleet = Fleet()
    policy = CanaryPolicy(percent=10, seconds=30)
    async with running(make(fleet, trials=Trials(canary=policy))) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: supervisor.canary is not None)
        crash_active(supervisor)
        await until(lambda: settled_on(supervisor, "2"), timeout=2)
        record = supervisor.history[-1]
        assert record.result == "succeeded"
        assert record.canary is not None
        assert record.canary["ended_early"] == "the old worker exited"
        assert fleet.started("1") == 1  # no restart of the old version: 2 took over
        assert supervisor.lingering is None


def test_with_no_active_worker_a_canary_takes_every_request() -> None:
    fleet = Fleet()
    supervisor = make(fleet)
    canary = fleet("green", "2")
    supervisor.roles.canary, supervisor.roles.canary_share = canary, 0.01
    assert all(rules.route(supervisor.roles, random.random) is canary for _ in range(100))


async def test_a_crashed_worker_is_replaced_without_waiting_for_its_stop() -> None:
    fleet = Fleet(plans={"1": Plan(stop_delay=2.0)})  # its process group takes long to go
    async with running(make(fleet)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        crash_active(supervisor)
        await until(lambda: fleet.started("1") == 2, timeout=1.0)
        assert [role for role, _w in supervisor.workers()].count("retiring") == 1


async def test_a_version_that_keeps_crashing_backs_off_and_the_previous_one_serves() -> None:
    fleet = Fleet()
    async with running(make(fleet, retry_base=30, retry_cap=60)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: active_version(supervisor) == "2")
        crash_active(supervisor)  # the first early crash: restarted at once
        await until(lambda: active_version(supervisor) == "2" and fleet.started("2") == 2)
        crash_active(supervisor)  # the second in a row: 2 is failing
        await until(lambda: settled_on(supervisor, "1") and fleet.started("1") == 2)
        failure = supervisor.status()["failed_versions"]["2"]
        assert "after taking traffic, 2 times in a row" in failure["error"]
        assert failure["retry_in"] > 10
        assert fleet.started("2") == 2


async def test_with_linger_a_crash_loop_stays_on_the_lingering_version() -> None:
    fleet = Fleet()
    async with running(make(fleet, linger=30, retry_base=30, retry_cap=60)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: active_version(supervisor) == "2")
        crash_active(supervisor)
        await until(lambda: active_version(supervisor) == "2" and fleet.started("2") == 2)
        crash_active(supervisor)
        await until(lambda: active_version(supervisor) == "1")
        await asyncio.sleep(0.1)
        assert fleet.started("2") == 2  # not started a third time: it backs off
        assert fleet.started("1") == 1  # served by the worker that lingered: no cold start


async def test_a_crash_long_after_the_switch_is_not_a_crash_loop() -> None:
    fleet = Fleet()
    async with running(make(fleet, crash_window=0.05)) as supervisor:
        supervisor.want("1")
        for starts in (2, 3, 4):
            await until(lambda: active_version(supervisor) == "1")
            await asyncio.sleep(0.1)
            crash_active(supervisor)
            await until(lambda s=starts: fleet.started("1") == s)  # type: ignore[misc]
        assert supervisor.status()["failed_versions"] == {}


async def test_while_pinned_a_crash_restarts_the_pinned_version_not_the_other() -> None:
    fleet = Fleet()
    async with running(make(fleet, linger=30)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: active_version(supervisor) == "2")
        await supervisor.rollback()
        assert active_version(supervisor) == "1"
        crash_active(supervisor)
        await until(lambda: fleet.started("1") == 2 and active_version(supervisor) == "1")
        assert not any(r.cause.startswith("fallback") for r in supervisor.history)
        assert supervisor.pinned is not None


async def test_a_health_fallback_waits_for_the_failed_worker_before_restarting_it() -> None:
    fleet = Fleet(plans={"2": Plan(healthy=False, stop_delay=0.3)})
    async with running(make(fleet, linger=30, health_failures=3)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: any(r.cause.startswith("fallback") for r in supervisor.history))
        supervisor.want("2")  # the next registry poll, while the failed 2 is still stopping
        await until(lambda: fleet.started("2") == 2)
        assert fleet.max_running == 2


@pytest.mark.parametrize("moment", ["rejecting a failed version", "stopping the old worker"])
async def test_a_shutdown_during_a_stop_still_stops_that_worker(moment: str) -> None:
    if moment == "rejecting a failed version":
        fleet = Fleet(plans={"2": Plan(fail_at="warm_up", stop_delay=0.3)})
    else:
        fleet = Fleet(plans={"1": Plan(stop_delay=0.3)})
    supervisor = make(fleet)
    task = asyncio.create_task(supervisor.run())
    supervisor.want("1")
    await until(lambda: active_version(supervisor) == "1")
    supervisor.want("2")
    await until(lambda: fleet.started("2") == 1)
    await asyncio.sleep(0.1)  # inside that worker's stop
    await shut_down(supervisor, task)
    assert fleet.running() == []


async def test_a_shutdown_during_a_drain_still_stops_the_old_worker() -> None:
    fleet = Fleet()
    supervisor = make(fleet, drain_timeout=5.0)
    task = asyncio.create_task(supervisor.run())
    supervisor.want("1")
    await until(lambda: active_version(supervisor) == "1")
    assert supervisor.active is not None
    supervisor.active.in_flight.enter()  # a slow request keeps it draining
    supervisor.want("2")
    await until(lambda: active_version(supervisor) == "2")
    await asyncio.sleep(0.05)
    await shut_down(supervisor, task)
    assert fleet.running() == []


async def test_a_retry_after_a_failed_fallback_is_not_called_a_fallback() -> None:
    fleet = Fleet()
    async with running(make(fleet, retry_base=0.2, retry_cap=0.4)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: active_version(supervisor) == "2")
        # The registry is down: neither version can be fetched again for now.
        fleet.plans.update({"1": Plan(fail_at="start"), "2": Plan(fail_at="start")})
        crash_active(supervisor)
        await until(lambda: sum(r.result == "failed" for r in supervisor.history) >= 2)
        fleet.plans.clear()  # back
        await until(lambda: active_version(supervisor) == "2")
        causes = [(r.to_version, r.result, r.cause) for r in list(supervisor.history)[2:]]
        assert causes[:2] == [
            ("2", "failed", "restart after exit"),
            ("1", "failed", "fallback: 2 cannot serve now; 1 served before"),
        ]
        # The wanted version, tried again: a restart, whatever was tried in between.
        assert causes[-1] == ("2", "succeeded", "restart after exit")
