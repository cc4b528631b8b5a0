"""Preparation steps run before a worker boots: which URIs are fetched, how a step fails."""

from __future__ import annotations

import os
import sys

import pytest

from mlflow_bluegreen.worker.model.prepare import Step, StepFailed, is_remote


@pytest.mark.parametrize(
    ("uri", "remote"),
    [
        ("models:/iris/3", True),
        ("models:/m-0123456789abcdef", True),
        ("runs:/abc/model", True),
        ("s3://bucket/model", True),
        ("mlflow-artifacts:/1/abc/artifacts/model", True),
        ("/srv/models/iris", False),
        ("relative/model", False),
        ("file:///srv/models/iris", False),
        ("C:\\models\\iris", False),
    ],
)
def test_only_models_not_on_this_disk_are_fetched(uri: str, remote: bool) -> None:
    assert is_remote(uri) is remote


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_a_step_relays_its_output_line_by_line() -> None:
    seen: list[str] = []
    step = Step(python("print('one'); print('two', flush=True)"), os.environ, seen.append)
    assert await step.run(timeout=30) == ["one", "two"]
    assert seen == ["one", "two"]


async def test_a_failing_step_says_its_exit_code_and_keeps_its_output() -> None:
    step = Step(python("import sys; print('no such model'); sys.exit(3)"), os.environ, print)
    with pytest.raises(StepFailed, match="exited with code 3") as failure:
        await step.run(timeout=30)
    assert failure.value.output == ["no such model"]


async def test_a_step_over_its_time_is_killed() -> None:
    step = Step(python("import time; print('downloading', flush=True); time.sleep(60)"),
                os.environ, lambda _line: None)  # fmt: skip
    with pytest.raises(StepFailed, match=r"took more than 0\.5 s") as failure:
        await step.run(timeout=0.5)
    assert failure.value.output == ["downloading"]


async def test_a_niced_step_and_what_it_starts_yield_the_cpu() -> None:
    """An environment build yields to the serving worker: the step and the installer it runs
    (its child, started after the step began) run at the lower priority."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    child = "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"
    code = (
        "import os, subprocess, sys, time; time.sleep(0.2); "
        "print(os.getpriority(os.PRIO_PROCESS, 0)); "
        f"subprocess.run([sys.executable, '-c', {child!r}])"
    )
    step = Step(python(code), os.environ, lambda _line: None, nice=10)
    assert await step.run(timeout=30) == [str(min(ours + 10, 19))] * 2
    plain = Step(python(child), os.environ, lambda _line: None)
    assert await plain.run(timeout=30) == [str(ours)]
