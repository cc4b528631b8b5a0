"""What a swap records: its steps, by name and time, and how it ended."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

log = logging.getLogger("mlflow_bluegreen.worker.control.supervisor")


class Step(StrEnum):
    """The named phases of a swap, in the order they run (as Envoy names its restart phases).
    The values are what `/status`, the logs and the metrics show."""

    RESOLVE = "resolve"  # the registry lookup that named the version
    PREFETCHED = "prefetched"  # of download and prepare_env, what ran before the swap began
    DOWNLOAD = "download"
    PREPARE_ENV = "prepare_env"
    START = "start"  # the launch of the worker process
    INSPECT = "inspect"  # reading the version's MLmodel
    SIGNATURE = "signature"
    READY = "ready"  # the boot, up to GET /ping 200
    WARM_UP = "warm_up"
    SHADOW = "shadow"  # copies of live requests, answers compared only
    CANARY = "canary"
    SWITCH = "switch"
    LINGER = "linger"
    DRAIN = "drain"
    STOP = "stop"
    DONE = "done"
    EXIT = "exit"  # not a phase: what a crash-looping version failed at


class Result(StrEnum):
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BLOCKED = "blocked"  # its input signature would break callers: not retried soon
    ROLLED_BACK = "rolled_back"  # back to the lingering version: the new one served worse


class WorkerFailed(Exception):
    """A worker did not become fit to serve. `step` is where it failed; `output` its last lines."""

    def __init__(self, step: Step, reason: str, output: list[str] | None = None) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason
        self.output = output or []


class JudgedWorse(WorkerFailed):
    """A verdict on live traffic, not a fault of the moment: the version is not retried by
    backoff (failures.judged_worse)."""


@dataclass
class SwapRecord:
    to_version: str
    from_version: str | None
    slot: str
    cause: str
    started_at: float = field(default_factory=time.time)
    result: Result = Result.IN_PROGRESS
    step: Step = Step.START
    error: str | None = None
    output: list[str] = field(default_factory=list)
    steps: dict[Step, float] = field(default_factory=dict)
    seconds: float | None = None
    drained: bool | None = None
    canary: dict[str, Any] | None = None
    shadow: dict[str, Any] | None = None
    # The new version's first linger against the old one's last (automatic rollback), or for
    # a rollback, what it was rolled back on.
    after_switch: dict[str, Any] | None = None
    policy: dict[str, str] | None = None  # how room was made for the new version, and why
    began: float = field(default_factory=time.monotonic, repr=False)

    def step_done(self, step: Step, seconds: float) -> None:
        """Note a step's time and give it a log line of its own, with the figures as fields for
        JSON logs."""
        self.steps[step] = seconds
        log.info(
            "swap %s -> %s: %s %.3f s",
            self.from_version,
            self.to_version,
            step,
            seconds,
            extra={
                "swap_step": str(step),
                "seconds": seconds,
                "from_version": self.from_version,
                "to_version": self.to_version,
            },
        )

    def end(self, result: Result, precision: int = 3) -> None:
        self.result = result
        self.seconds = round(time.monotonic() - self.began, precision)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("began")
        data["from"] = data.pop("from_version")
        data["to"] = data.pop("to_version")
        data["result"] = str(self.result)
        data["step"] = str(self.step)
        data["steps"] = {str(name): seconds for name, seconds in self.steps.items()}
        return data


def log_succeeded(record: SwapRecord) -> None:
    steps = {str(k): v for k, v in record.steps.items()}
    log.info(
        "swap %s -> %s: succeeded in %.3f s %s",
        record.from_version,
        record.to_version,
        record.seconds,
        steps,
        extra={
            "steps": steps,
            "seconds": record.seconds,
            "from_version": record.from_version,
            "to_version": record.to_version,
        },
    )


def log_rejected(record: SwapRecord, failure: WorkerFailed, serving: str, delay: float) -> None:
    log.error(
        "swap %s -> %s %s at %s: %s; still serving %s; %s%s",
        record.from_version,
        record.to_version,
        record.result,
        failure.step,
        failure.reason,
        serving,
        f"next attempt in {delay:.1f} s"
        if math.isfinite(delay)
        else "not tried again until the registry names another version and then this one, "
        "or POST /reload",
        "".join(f"\n    | {line}" for line in failure.output[-5:]),
    )
