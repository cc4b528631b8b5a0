"""--swap-policy: a new version beside the old one, or in its place when memory is short."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_bluegreen.worker.control import SwapPolicy
from mlflow_bluegreen.worker.control.policy import choose
from mlflow_bluegreen.worker.process.memory import memory_headroom

from .fakes import Fleet, Plan
from .test_swap import active_version, make, running, settled_on, until

MIB = 1 << 20


def test_an_explicit_policy_is_what_is_used() -> None:
    for policy in (SwapPolicy.AVAILABILITY, SwapPolicy.MEMORY):
        choice = choose(policy, headroom=1, active_rss=10 * MIB)
        assert choice.policy is policy and choice.why == f"--swap-policy {policy}"


def test_auto_stops_the_old_worker_first_only_when_a_second_copy_would_not_fit() -> None:
    assert choose(SwapPolicy.AUTO, None, 100 * MIB).policy is SwapPolicy.AVAILABILITY
    short = choose(SwapPolicy.AUTO, 129 * MIB, 100 * MIB)
    assert short.policy is SwapPolicy.MEMORY
    assert short.why == (
        "auto: 129 MiB free under the memory limit, less than 1.3 x the active worker's 100 MiB"
    )
    assert choose(SwapPolicy.AUTO, 131 * MIB, 100 * MIB).policy is SwapPolicy.AVAILABILITY


def cgroup(tmp_path: Path, **files: str) -> dict[str, str]:
    """A cgroup v2 tree with this process in /pod/sidecar, holding `files`."""
    directory = tmp_path / "pod" / "sidecar"
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name.replace("_", ".")).write_text(text)
    (tmp_path / "self-cgroup").write_text("0::/pod/sidecar\n")
    return {"cgroup_root": str(tmp_path), "proc_self_cgroup": str(tmp_path / "self-cgroup")}


def test_headroom_is_the_cgroups_limit_less_its_use(tmp_path: Path) -> None:
    paths = cgroup(tmp_path, memory_max="1000\n", memory_current="300\n")
    assert memory_headroom(None, lambda: 999, **paths) == 700
    assert memory_headroom(500, lambda: 999, **paths) == 200  # --memory-limit wins


def test_without_a_limit_there_is_no_headroom_to_speak_of(tmp_path: Path) -> None:
    paths = cgroup(tmp_path, memory_max="max\n", memory_current="300\n")
    assert memory_headroom(None, lambda: 999, **paths) is None


def test_without_a_cgroup_the_limit_is_measured_against_our_own_processes(
    tmp_path: Path,
) -> None:
    paths = {"cgroup_root": str(tmp_path), "proc_self_cgroup": str(tmp_path / "missing")}
    assert memory_headroom(None, lambda: 300, **paths) is None
    assert memory_headroom(1000, lambda: 300, **paths) == 700


async def test_with_the_memory_policy_never_two_workers_run() -> None:
    fleet = Fleet(plans={"2": Plan(ready_delay=0.3)})
    async with running(make(fleet, swap_policy=SwapPolicy.MEMORY, linger=30)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        # While the new version boots nothing is active: the proxy holds requests.
        await until(lambda: supervisor.current is not None and supervisor.active is None)
        await until(lambda: settled_on(supervisor, "2"))
        record = supervisor.history[-1]
        assert record.policy == {"policy": "memory", "why": "--swap-policy memory"}
        assert list(record.steps)[:2] == ["drain", "stop"]  # before anything of version 2
        assert supervisor.lingering is None  # nothing to keep warm: it is gone
    assert fleet.max_running == 1


async def test_with_the_memory_policy_a_failed_version_brings_the_old_one_back() -> None:
    fleet = Fleet(plans={"2": Plan(fail_at="ready")})
    async with running(make(fleet, swap_policy=SwapPolicy.MEMORY)) as supervisor:
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: fleet.started("1") == 2 and settled_on(supervisor, "1"))
        assert [r.result for r in supervisor.history] == ["succeeded", "failed", "succeeded"]
        assert supervisor.history[-1].cause == "fallback: 2 cannot serve now; 1 served before"
    assert fleet.max_running == 1


@pytest.mark.parametrize(("headroom", "policy"), [(1, "memory"), (10**12, "availability")])
async def test_auto_says_in_the_history_which_it_chose(headroom: int, policy: str) -> None:
    fleet = Fleet()
    supervisor = make(fleet, swap_policy=SwapPolicy.AUTO)
    supervisor._memory_headroom = lambda: headroom
    async with running(supervisor):
        supervisor.want("1")
        await until(lambda: active_version(supervisor) == "1")
        supervisor.want("2")
        await until(lambda: active_version(supervisor) == "2" and len(supervisor.history) == 2)
        chosen = supervisor.history[-1].policy
        assert chosen is not None and chosen["policy"] == policy
        assert chosen["why"].startswith("auto: ")
    assert fleet.max_running == (1 if policy == "memory" else 2)
