"""Linger, rollback, fallback, signature guard and canary in the swap state machine, with fake
workers."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from mlflow.types import ColSpec, Schema

from mlflow_bluegreen.proxy.relay import rules
from mlflow_bluegreen.worker.control import CanaryPolicy, Limits, NoRollback, Supervisor, Trials

from .fakes import Fleet, Plan
from .test_swap import active_version, running, until

IRIS = Schema([ColSpec("double", n) for n in ("a", "b", "c")])
FEWER = Schema([ColSpec("double", n) for n in ("a", "b")])


def make(fleet: Fleet, **options: Any) -> Supervisor:
    options.setdefault("drain_timeout", 1.0)
    options.setdefault("stop_grace", 0.1)
    options.setdefault("health_interval", 0.01)
    return Supervisor(fleet, **options)


async def serve_two(supervisor: Supervisor) -> None:
    supervisor.want("1")
    await until(lambda: active_version(supervisor) == "1")
    supervisor.want("2")
    await until(lambda: active_version(supervisor) == "2" and supervisor.current is None)


async def test_without_linger_the_old_worker_stops() -> None:
    fleet = Fleet()
    async with running(make(fleet)) as supervisor:
        await serve_two(supervisor)
        assert supervisor.lingering is None
        assert [w.version for w in fleet.running()] == ["2"]


async def test_linger_keeps_the_old_worker_warm_then_stops_it() -> None:
    fleet = Fleet()
    async with running(make(fleet, linger=0.3)) as supervisor:
        await serve_two(supervisor)
        assert supervisor.lingering is not None
        assert supervisor.lingering.version == "1"
        assert sorted(w.version for w in fleet.running()) == ["1", "2"]
        status = supervisor.status()
        assert status["lingering"]["version"] == "1"
        assert status["lingering"]["until"] is not None
        await until(lambda: [w.version for w in fleet.running()] == ["2"], timeout=2)
        assert supervisor.lingering is None


async def test_alias_moving_back_within_the_window_switches_without_a_start() -> None:
    fleet = Fleet()
    async with running(make(fleet, linger=30)) as supervisor:
        await serve_two(supervisor)
        starts = fleet.started("1")
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        assert fleet.started("1") == starts  # no cold start
        record = supervisor.history[-1]
        assert record.cause.endswith("(to the lingering worker)")
        assert record.seconds is not None and record.seconds < 0.1
        # And the other way again: 2 is the one lingering now.
        assert supervisor.lingering is not None and supervisor.lingering.version == "2"
        assert fleet.max_running == 2


async def test_a_third_version_stops_the_lingering_worker_first() -> None:
    fleet = Fleet()
    async with running(make(fleet, linger=30)) as supervisor:
        await serve_two(supervisor)
        supervisor.want("3")
        await until(lambda: active_version(supervisor) == "3" and supervisor.current is None)
        assert sorted(w.version for w in fleet.running()) == ["2", "3"]
        assert fleet.max_running == 2


async def test_active_crash_in_the_window_falls_back_at_once_and_restarts_it() -> None:
    fleet = Fleet()
    async with running(make(fleet, linger=30)) as supervisor:
        await serve_two(supervisor)
        crashed = supervisor.active
        assert crashed is not None
        crashed.crash()  # type: ignore[attr-defined]
        # Fake workers start at once, so the restarted 2 may already be back: read the history.
        await until(lambda: any(r.cause.startswith("fallback") for r in supervisor.history))
        fallback = next(r for r in supervisor.history if r.cause.startswith("fallback"))
        assert (fallback.from_version, fallback.to_version) == ("2", "1")
        # The crashed version is started again and takes over; 1 lingers once more.
        await until(lambda: fleet.started("2") == 2 and supervisor.current is None)
        assert active_version(supervisor) == "2"
        assert supervisor.lingering is not None and supervisor.lingering.version == "1"


async def test_failed_health_checks_in_the_window_fall_back() -> None:
    fleet = Fleet(plans={"2": Plan(healthy=False)})
    async with running(make(fleet, linger=30, health_failures=3)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: any(r.cause.startswith("fallback") for r in supervisor.history))
        fallback = next(r for r in supervisor.history if r.cause.startswith("fallback"))
        assert "3 failed health checks" in fallback.cause


async def test_rollback_pins_the_lingering_version_until_resume() -> None:
    fleet = Fleet()
    async with running(make(fleet, linger=30)) as supervisor:
        await serve_two(supervisor)
        worker = await supervisor.rollback()
        assert worker.version == "1"
        assert supervisor.pinned is not None and supervisor.pinned["version"] == "1"
        supervisor.want("2")  # the registry still names 2: noted, not followed
        await asyncio.sleep(0.05)
        assert active_version(supervisor) == "1"
        assert supervisor.pinned["registry_version"] == "2"
        assert supervisor.resume() == "2"
        await until(lambda: active_version(supervisor) == "2")
        assert supervisor.pinned is None


async def test_rollback_without_a_lingering_worker_says_why() -> None:
    fleet = Fleet()
    async with running(make(fleet)) as supervisor:
        await serve_two(supervisor)
        with pytest.raises(NoRollback, match="--linger"):
            await supervisor.rollback()
        assert supervisor.pinned is None


async def test_a_breaking_signature_blocks_the_swap() -> None:
    fleet = Fleet(plans={"1": Plan(inputs=IRIS), "2": Plan(inputs=FEWER)})
    async with running(make(fleet)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: bool(supervisor.history) and supervisor.history[-1].to_version == "2")
        record = supervisor.history[-1]
        assert record.result == "blocked"
        assert "required input 'c' was removed" in (record.error or "")
        assert active_version(supervisor) == "1"
        assert sum(r.result == "blocked" for r in supervisor.history) == 1
        assert [w.version for w in fleet.running()] == ["1"]


async def test_allow_signature_change_lets_it_through() -> None:
    fleet = Fleet(plans={"1": Plan(inputs=IRIS), "2": Plan(inputs=FEWER)})
    async with running(make(fleet, allow_signature_change=True)) as supervisor:
        await serve_two(supervisor)
        assert supervisor.history[-1].result == "succeeded"


async def test_an_additive_signature_change_passes() -> None:
    more = Schema([*IRIS.inputs, ColSpec("string", "note", required=False)])
    fleet = Fleet(plans={"1": Plan(inputs=IRIS), "2": Plan(inputs=more)})
    async with running(make(fleet)) as supervisor:
        await serve_two(supervisor)
        assert supervisor.history[-1].result == "succeeded"


async def answer(supervisor: Supervisor, requests: int, fail_version: str | None) -> None:
    """Play the forwarder: route each request and count its outcome."""
    for _ in range(requests):
        worker = rules.route(supervisor.roles, random.random)
        assert worker is not None
        worker.in_flight.enter()
        worker.in_flight.leave(500 if worker.version == fail_version else 200, 0.003)
        await asyncio.sleep(0)


async def test_a_canary_that_fails_more_is_rejected() -> None:
    fleet = Fleet()
    policy = CanaryPolicy(percent=50, seconds=0.2, limits=Limits(max_error_increase=0.05))
    async with running(make(fleet, trials=Trials(canary=policy))) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: supervisor.canary is not None)
        await answer(supervisor, 400, fail_version="2")
        await until(lambda: bool(supervisor.history) and supervisor.history[-1].to_version == "2")
        record = supervisor.history[-1]
        assert record.result == "failed"
        assert record.canary is not None and record.canary["passed"] is False
        assert 100 < record.canary["new"]["answered"] < 300  # about half of 400
        assert record.canary["new"]["error_rate"] == 1.0
        assert active_version(supervisor) == "1"
        # A verdict, not a fault of the moment: while the registry names it, never again.
        failure = supervisor.failure_for("2")
        assert failure is not None and failure["retry_in"] is None
        await asyncio.sleep(0.5)
        assert fleet.started("2") == 1
        supervisor.retry_now()  # POST /reload
        await until(lambda: fleet.started("2") == 2)


async def test_a_healthy_canary_is_promoted() -> None:
    fleet = Fleet()
    policy = CanaryPolicy(percent=20, seconds=0.2)
    async with running(make(fleet, trials=Trials(canary=policy))) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: supervisor.canary is not None)
        await answer(supervisor, 200, fail_version=None)
        await until(lambda: active_version(supervisor) == "2" and supervisor.current is None)
        record = supervisor.history[-1]
        assert record.canary is not None and record.canary["passed"] is True
        assert 10 < record.canary["new"]["answered"] < 80  # about a fifth of 200


async def test_version_routing_finds_active_and_lingering() -> None:
    fleet = Fleet()
    async with running(make(fleet, linger=30)) as supervisor:
        await serve_two(supervisor)
        assert rules.pinned(supervisor.roles, "2") is supervisor.active
        assert rules.pinned(supervisor.roles, "1") is supervisor.lingering
        assert rules.pinned(supervisor.roles, "3") is None
