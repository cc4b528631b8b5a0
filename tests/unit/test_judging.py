"""The loop's verdicts on a new version with fake workers: shadow runs before the switch and the
automatic rollback after it. The tests play the relay: they route requests and tally answers."""

from __future__ import annotations

import asyncio
import random

from mlflow_bluegreen.proxy.relay import rules
from mlflow_bluegreen.worker.control import Limits, ShadowPolicy, Supervisor, Trials
from mlflow_bluegreen.worker.control.shadow import Reply

from .fakes import Fleet
from .test_swap import active_version, make, running, settled_on, until

LIMITS = Limits(max_error_increase=0.01, max_latency_ratio=2.0, min_requests=20)


async def serve_requests(
    supervisor: Supervisor, n: int, status: dict[str, int], seconds: dict[str, float]
) -> None:
    """Route `n` requests as the relay would; each version answers with its status and time."""
    for _ in range(n):
        worker = rules.route(supervisor.roles, random.random)
        assert worker is not None
        worker.in_flight.enter()
        worker.in_flight.leave(status.get(worker.version, 200), seconds.get(worker.version, 0.003))
        await asyncio.sleep(0.002)


async def keep_serving(
    supervisor: Supervisor, stop: asyncio.Event, status: dict[str, int], seconds: dict[str, float]
) -> None:
    while not stop.is_set():
        await serve_requests(supervisor, 10, status, seconds)


async def test_a_version_that_serves_worse_after_its_switch_is_rolled_back_and_not_retried() -> (
    None
):
    fleet = Fleet()
    trials = Trials(after_switch=LIMITS)
    async with running(make(fleet, linger=30, trials=trials)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        await serve_requests(supervisor, 100, {}, {})
        supervisor.want("2")
        await until(lambda: active_version(supervisor) == "2")
        stop = asyncio.Event()
        load = asyncio.create_task(keep_serving(supervisor, stop, {"2": 500}, {}))
        await until(lambda: active_version(supervisor) == "1", timeout=5)
        stop.set()
        await load
        record = supervisor.history[-1]
        assert (record.from_version, record.to_version, record.result) == ("2", "1", "rolled_back")
        assert record.cause.startswith("automatic rollback: ")
        assert record.after_switch is not None and record.after_switch["verdict"] == "rejected"
        assert record.after_switch["new"]["5xx"] >= 20 and record.after_switch["old"]["5xx"] == 0
        swap_to_2 = next(r for r in supervisor.history if r.to_version == "2")
        assert swap_to_2.result == "succeeded"
        assert swap_to_2.after_switch == record.after_switch  # what it was judged on
        failed = supervisor.failure_for("2")
        assert failed is not None and failed["retry_in"] is None
        assert supervisor.lingering is None  # 2 is stopped, not kept
        await until(lambda: not fleet.running() or len(fleet.running()) == 1)
        # The registry still names 2: not tried again...
        supervisor.want("2")
        await asyncio.sleep(0.3)
        assert fleet.started("2") == 1 and active_version(supervisor) == "1"
        # ...until it names another version and then 2 again.
        supervisor.want("3")
        await until(lambda: active_version(supervisor) == "3")
        supervisor.want("2")
        await until(lambda: active_version(supervisor) == "2")
        assert fleet.started("2") == 2


async def test_a_version_as_good_as_the_last_is_kept_and_its_verdict_recorded() -> None:
    fleet = Fleet()
    trials = Trials(after_switch=LIMITS)
    async with running(make(fleet, linger=1.0, trials=trials)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        await serve_requests(supervisor, 100, {}, {})
        supervisor.want("2")
        await until(lambda: settled_on(supervisor, "2"))
        stop = asyncio.Event()
        # Clients send the same share of malformed requests to both versions.
        load = asyncio.create_task(keep_serving(supervisor, stop, {}, {}))
        record = supervisor.history[-1]
        await until(lambda: record.after_switch is not None, timeout=5)
        stop.set()
        await load
        assert record.after_switch is not None
        assert record.after_switch["verdict"] == "passed"
        assert active_version(supervisor) == "2"
        assert [r.result for r in supervisor.history] == ["succeeded", "succeeded"]


async def test_too_little_traffic_after_a_switch_is_unjudged_and_kept() -> None:
    fleet = Fleet()
    async with running(make(fleet, linger=0.5, trials=Trials(after_switch=LIMITS))) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: settled_on(supervisor, "2"))
        record = supervisor.history[-1]
        await until(lambda: record.after_switch is not None, timeout=5)
        assert record.after_switch is not None and record.after_switch["verdict"] == "unjudged"
        assert active_version(supervisor) == "2"


async def test_an_operators_rollback_pins_the_version_and_no_automatic_one_overrides_it() -> None:
    fleet = Fleet()
    async with running(make(fleet, linger=30, trials=Trials(after_switch=LIMITS))) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        await serve_requests(supervisor, 100, {}, {})
        supervisor.want("2")
        await until(lambda: active_version(supervisor) == "2")
        await supervisor.rollback()  # back to 1, pinned; 2 lingers
        await serve_requests(supervisor, 100, {"1": 500}, {})
        await asyncio.sleep(1.5)
        assert active_version(supervisor) == "1"
        assert all(r.result != "rolled_back" for r in supervisor.history)


async def play_shadow(supervisor: Supervisor, shadow_status: int, stop: asyncio.Event) -> None:
    """Play the relay during a shadow run: copies answered by the new version with
    `shadow_status`, clients answered by the active one."""
    while not stop.is_set():
        run = supervisor.roles.shadow
        active = supervisor.active
        if run is not None and active is not None:
            pair = run.admit()
            if pair is not None:
                pair.shadow_answered(Reply(shadow_status, b'{"predictions": [1]}', 0.004))
                pair.primary_answered(Reply(200, b'{"predictions": [1]}', 0.003))
                run.copy_done()
        await asyncio.sleep(0.002)


async def test_a_shadow_run_below_its_agreement_rejects_the_version_before_any_traffic() -> None:
    fleet = Fleet()
    shadow = ShadowPolicy(100, 0.3, min_agreement=0.95, min_pairs=10)
    async with running(make(fleet, trials=Trials(shadow=shadow))) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        stop = asyncio.Event()
        play = asyncio.create_task(play_shadow(supervisor, 400, stop))
        supervisor.want("2")
        await until(lambda: any(r.to_version == "2" for r in supervisor.history))
        stop.set()
        await play
        record = supervisor.history[-1]
        assert record.result == "failed" and record.error is not None
        assert record.error.startswith("shadow: agreed with version 1 on 0.0% of")
        assert record.shadow is not None and record.shadow["verdict"] == "rejected"
        assert record.shadow["compared"] >= 10 and record.shadow["agreement"] == 0.0
        assert record.shadow["disagreements"][0]["why"] == (
            "status 400 where the active version said 200"
        )
        assert "switch" not in record.steps and active_version(supervisor) == "1"
        assert supervisor.roles.shadow is None


async def test_a_shadow_run_that_agrees_goes_on_to_the_canary_then_the_switch() -> None:
    from mlflow_bluegreen.worker.control import CanaryPolicy

    fleet = Fleet()
    trials = Trials(
        shadow=ShadowPolicy(100, 0.2, min_agreement=0.95, min_pairs=5),
        canary=CanaryPolicy(50, 0.2, Limits(min_requests=5)),
    )
    async with running(make(fleet, trials=trials)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        stop = asyncio.Event()
        play = asyncio.create_task(play_shadow(supervisor, 200, stop))
        load = asyncio.create_task(keep_serving(supervisor, stop, {}, {}))
        supervisor.want("2")
        await until(lambda: active_version(supervisor) == "2" and supervisor.current is None)
        stop.set()
        await asyncio.gather(play, load)
        record = supervisor.history[-1]
        assert record.shadow is not None and record.shadow["verdict"] == "passed"
        assert record.canary is not None and record.canary["verdict"] == "passed"
        assert list(record.steps).index("shadow") < list(record.steps).index("canary")


async def test_a_canary_with_too_few_answers_runs_on_then_is_promoted_unjudged() -> None:
    from mlflow_bluegreen.worker.control import CanaryPolicy

    fleet = Fleet()
    canary = CanaryPolicy(50, 0.2, Limits(min_requests=1000))
    async with running(make(fleet, trials=Trials(canary=canary))) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: active_version(supervisor) == "2" and supervisor.current is None)
        record = supervisor.history[-1]
        assert record.canary is not None and record.canary["verdict"] == "unjudged"
        assert record.canary["passed"] is True
        # It ran on, up to 3 times its seconds, waiting for answers.
        assert 0.55 <= record.steps["canary"] <= 1.5
