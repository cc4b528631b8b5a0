"""The state machine's parts on their own: its decisions as plain functions, and its loop as the
one place that acts on what the watchers report."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mlflow_bluegreen.worker.control import (
    CanaryPolicy,
    NoObserver,
    Role,
    Roles,
    Step,
    Supervisor,
    SwapRecord,
    Worker,
    WorkerFailed,
)
from mlflow_bluegreen.worker.control.canary import judge
from mlflow_bluegreen.worker.control.compare import Limits, Verdict
from mlflow_bluegreen.worker.control.events import Exited, Inbox, Stopped, Wake
from mlflow_bluegreen.worker.control.failures import Failures
from mlflow_bluegreen.worker.control.intent import Intent
from mlflow_bluegreen.worker.control.record import JudgedWorse
from mlflow_bluegreen.worker.control.tally import BUCKETS, Counts, bucket_of
from mlflow_bluegreen.worker.control.targets import idle_slot, next_target

from .fakes import Fleet, Plan
from .test_swap import active_version, make, running, until


def _fleet_worker(slot: str, version: str) -> Worker:
    return Fleet()(slot, version)


def _roles(active: tuple[str, str] | None = None) -> Roles:
    roles = Roles()
    if active is not None:
        roles.make_active(_fleet_worker(*active))
    return roles


# -- decisions --------------------------------------------------------------------------------


def no_backoff(_version: str) -> float:
    return 0.0


def test_nothing_to_do_when_nothing_is_wanted_or_the_wanted_version_serves() -> None:
    assert next_target(None, _roles(), no_backoff, [], pinned=False) is None
    assert next_target("2", _roles(("blue", "2")), no_backoff, ["2"], pinned=False) is None
    assert next_target("3", _roles(("blue", "2")), no_backoff, ["2"], pinned=False) == "3"


def test_with_nothing_serving_and_the_wanted_version_backing_off_a_served_one_fills_in() -> None:
    def delay(version: str) -> float:
        return {"3": 30.0, "2": 5.0}.get(version, 0.0)

    # "2" backs off too: the latest one that may be tried now is "1".
    assert next_target("3", _roles(), delay, ["1", "2", "3"], pinned=False) == "1"
    # Pinned by a rollback: only the pinned version, whatever it costs to wait.
    assert next_target("3", _roles(), delay, ["1", "2", "3"], pinned=True) == "3"
    # Nothing else ever served: wait for the wanted one.
    assert next_target("3", _roles(), delay, ["3"], pinned=False) == "3"


def test_a_new_worker_goes_in_the_slot_the_active_or_last_one_is_not_in() -> None:
    assert idle_slot(_roles(("blue", "1")), last_slot="blue") == "green"
    assert idle_slot(_roles(("green", "1")), last_slot="green") == "blue"
    assert idle_slot(_roles(), last_slot="blue") == "green"
    assert idle_slot(_roles(), last_slot=None) == "blue"


POLICY = CanaryPolicy(percent=10, seconds=5, limits=Limits(max_error_increase=0.05))


def arm(answered: int, failed: int, seconds: float = 0.003) -> Counts:
    """`answered` answers, `failed` of them 5xx, all in `seconds`."""
    latency = [0] * BUCKETS
    latency[bucket_of(seconds)] = answered
    return Counts(ok=answered - failed, server_errors=failed, latency=tuple(latency))


def verdict(old_arm: Counts, new_arm: Counts, **exits: bool) -> Any:
    return judge(
        POLICY,
        old_arm,
        new_arm,
        old_version="1",
        new_version="2",
        new_exited=exits.get("new", False),
        old_exited=exits.get("old", False),
    )


def test_the_canary_passes_within_the_allowed_increase_and_fails_beyond_it() -> None:
    passed = verdict(arm(100, 1), arm(100, 5))
    assert passed.verdict is Verdict.PASSED and passed.reason is None
    assert passed.figures["passed"] is True
    assert passed.figures["new"] == {
        "version": "2",
        "answered": 100,
        "2xx": 95,
        "4xx": 0,
        "5xx": 5,
        "error_rate": 0.05,
        "p50_ms": passed.figures["new"]["p50_ms"],
        "p99_ms": passed.figures["new"]["p99_ms"],
    }
    failed = verdict(arm(100, 1), arm(100, 12))
    assert failed.verdict is Verdict.REJECTED and failed.figures["passed"] is False
    assert failed.reason == (
        "12.0% of 100 answers were not 2xx (0 4xx, 12 5xx) against 1.0% on version 1 "
        "(allowed: +5.0%)"
    )


def test_a_canary_that_exits_fails_and_an_old_worker_that_exits_ends_it_early() -> None:
    exited = verdict(arm(30, 0), arm(0, 0), new=True)
    assert exited.verdict is Verdict.REJECTED
    assert exited.reason == "the new worker exited during the canary"
    early = verdict(arm(30, 0), arm(25, 0), old=True)
    assert (
        early.verdict is Verdict.PASSED and early.figures["ended_early"] == "the old worker exited"
    )


def test_counts_since_a_moment_and_an_unanswered_arm_has_no_error_rate() -> None:
    assert arm(12, 3).since(arm(2, 1)) == arm(10, 2)
    assert Counts().error_rate == 0.0


def test_two_early_exits_in_a_row_make_a_crash_loop_a_long_run_between_does_not() -> None:
    failures = Failures(retry_base=10, retry_cap=60, crash_window=30)
    failures.exited("1", -9, served=1.0)
    failures.served_its_time("1", served=31.0)  # it then served long enough: no loop
    failures.exited("1", -9, served=1.0)
    assert failures.retry_in("1") <= 0
    failures.exited("2", -9, served=1.0)
    assert failures.retry_in("2") <= 0  # the first is restarted at once
    failures.exited("2", -9, served=1.0)
    assert failures.retry_in("2") > 0
    assert failures.describe("2")["error"].startswith("exit: code -9")  # type: ignore[index]
    failures.exited("3", -9, served=45.0)  # an exit long after the switch: no loop
    failures.exited("3", -9, served=1.0)
    assert failures.retry_in("3") <= 0


def test_a_blocked_signature_waits_the_longest_backoff_at_once() -> None:
    failures = Failures(retry_base=1, retry_cap=300, crash_window=30)
    assert failures.swap_failed("2", WorkerFailed(Step.SIGNATURE, "inputs incompatible")) == 300
    assert failures.swap_failed("3", WorkerFailed(Step.READY, "not ready")) < 2
    # A verdict on live traffic: not retried by backoff at all.
    assert failures.swap_failed("4", JudgedWorse(Step.CANARY, "slower")) == float("inf")


def test_a_pinned_intent_only_notes_what_the_registry_names_until_resumed() -> None:
    intent = Intent()
    assert intent.registry_names("1", lookup_seconds=0.1)
    intent.registry_names("2", lookup_seconds=None)
    intent.pin("1")
    assert intent.wanted == "1" and intent.next_cause == "rollback"
    assert not intent.registry_names("3", lookup_seconds=None)
    assert intent.wanted == "1" and intent.pinned == {**intent.pinned, "registry_version": "3"}
    assert intent.resume()
    assert intent.wanted == "3" and intent.pinned is None
    assert intent.next_cause == "resume after rollback"


def test_a_record_lists_its_steps_by_name_for_status() -> None:
    record = SwapRecord(to_version="2", from_version="1", slot="green", cause="registry moved")
    record.step_done(Step.WARM_UP, 0.5)
    data = record.as_dict()
    assert data["steps"] == {"warm_up": 0.5}
    assert (data["from"], data["to"], data["result"], data["step"]) == (
        "1",
        "2",
        "in_progress",
        "start",
    )


def test_roles_list_each_running_worker_once() -> None:
    roles = _roles(("blue", "1"))
    canary = _fleet_worker("green", "2")
    roles.starting = roles.canary = canary  # a canary is also the swap's starting worker
    retiring = _fleet_worker("green", "0")
    roles.retiring.add(retiring)
    assert [(role, w.version) for role, w in roles.all()] == [
        (Role.ACTIVE, "1"),
        (Role.CANARY, "2"),
        (Role.RETIRING, "0"),
    ]


async def test_the_inbox_keeps_events_in_order_until_taken() -> None:
    inbox = Inbox()
    worker = _fleet_worker("blue", "1")
    inbox.post(Exited(worker, -9))
    inbox.post(Wake())
    await asyncio.wait_for(inbox.wait(), 1)
    assert inbox.take() == [Exited(worker, -9), Wake()]
    assert inbox.take() == []


# -- the loop ---------------------------------------------------------------------------------


async def test_an_exit_during_a_boot_is_acted_on_at_once_by_the_loop() -> None:
    fleet = Fleet(plans={"2": Plan(ready_delay=1.0)})
    async with running(make(fleet)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: supervisor.current is not None and supervisor.current.step == "ready")
        old = supervisor.active
        assert old is not None
        old.crash()  # type: ignore[attr-defined]
        # Handled while the swap still waits for version 2's boot, not after it.
        await until(lambda: supervisor.active is None, timeout=0.5)
        assert supervisor.current is not None and supervisor.current.step == "ready"
        assert any(w is old for role, w in supervisor.workers() if role == "retiring") or (
            not old.alive
        )
        await until(lambda: active_version(supervisor) == "2")
        assert fleet.started("1") == 1  # the swap to the wanted version replaces it: no restart


async def test_news_of_a_worker_that_has_moved_on_changes_nothing() -> None:
    fleet = Fleet()
    async with running(make(fleet)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        stranger = fleet("green", "9")
        supervisor._inbox.post(Exited(stranger, -9))
        supervisor._inbox.post(Stopped(stranger))
        await asyncio.sleep(0.05)
        assert active_version(supervisor) == "1"
        assert [w.version for _role, w in supervisor.workers()] == ["1"]


class Recorder(NoObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def active_changed(self, worker: Worker | None) -> None:
        self.events.append(("active", worker.version if worker else None))

    def worker_up(self, slot: str, up: bool) -> None:
        self.events.append(("up" if up else "down", slot))

    def worker_stopped(self, worker: Worker) -> None:
        self.events.append(("stopped", worker.version))

    def swap_finished(self, record: SwapRecord) -> None:
        self.events.append(("swap", f"{record.from_version}->{record.to_version} {record.result}"))


async def test_the_observer_is_told_each_change_once_in_the_order_made() -> None:
    recorder = Recorder()
    supervisor = make(Fleet())
    supervisor.observer = recorder
    async with running(supervisor):
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: len(supervisor.history) == 2)
    assert recorder.events[:8] == [
        ("active", "1"),
        ("up", "blue"),
        ("swap", "None->1 succeeded"),
        ("active", "2"),
        ("up", "green"),
        ("down", "blue"),
        ("stopped", "1"),
        ("swap", "1->2 succeeded"),
    ]
    # Then the shutdown: no one active, the last worker down and stopped.
    assert recorder.events[8:] == [("active", None), ("down", "green"), ("stopped", "2")]


@pytest.mark.parametrize("pinned", [False, True])
async def test_a_lingering_worker_takes_over_from_an_unhealthy_one_unless_pinned(
    pinned: bool,
) -> None:
    fleet = Fleet()
    supervisor: Supervisor = make(fleet, linger=30, health_interval=0.01, health_failures=2)
    async with running(supervisor):
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: active_version(supervisor) == "2" and supervisor.lingering is not None)
        if pinned:
            await supervisor.rollback()
            await until(lambda: supervisor.lingering is not None)
        sick = supervisor.active
        assert sick is not None
        sick.plan.healthy = False  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)
        fallbacks = [r for r in supervisor.history if r.cause.startswith("fallback")]
        if pinned:
            assert supervisor.active is sick  # the operator chose it
            assert fallbacks == []
        else:
            assert [(r.to_version, r.cause) for r in fallbacks] == [
                ("1", "fallback: active worker 2 failed health checks")
            ]
            assert fleet.started("2") == 2  # and the unhealthy version is started again
