"""Bringing a new version up, step by step, up to the point where it could take traffic: start,
signature guard, ready, warm-up. It changes no roles: the supervisor's loop does that after."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..model.signature import breaking_changes
from .record import Step, SwapRecord, WorkerFailed
from .worker import Worker

log = logging.getLogger("mlflow_bluegreen.worker.control.supervisor")


async def bring_up(
    worker: Worker,
    record: SwapRecord,
    *,
    startup_timeout: float,
    guard: tuple[str, Any] | None,
) -> Any | None:
    """Start `worker` and wait until it is fit to serve; WorkerFailed where it is not. `guard`:
    (version, input schema) of what callers rely on now, or None to let any signature through.
    Returns the worker's input schema, for the next version's guard."""
    step = time.monotonic()
    try:
        await worker.start()
    except OSError as error:
        raise WorkerFailed(Step.START, f"could not launch: {error}") from error
    prepared = dict(worker.timings)  # download, prepare_env: before the boot
    for name, seconds in prepared.items():
        record.step_done(Step(name), seconds)
    # What of them ran during this swap: some may have begun as the registry named it.
    ahead = prepared.pop(Step.PREFETCHED, 0.0)
    preparing = max(sum(prepared.values()) - ahead, 0.0)
    launched = time.monotonic() - step - preparing
    record.step_done(Step.START, round(max(launched, 0.0), 3))
    step = time.monotonic()  # the health clock measures the boot alone
    if guard is not None and guard[0] != worker.version:
        record.step = Step.SIGNATURE
        await check_signature(guard, worker, record)
    record.step = Step.READY
    # --startup-timeout bounds download, environment build and boot together.
    await worker.wait_ready(max(startup_timeout - preparing, 1.0))
    record.step_done(Step.READY, round(time.monotonic() - step, 3))
    log.info("worker %s v%s ready in %.2f s", worker.slot, worker.version, record.steps[Step.READY])
    step = time.monotonic()
    record.step = Step.WARM_UP
    warmed = await worker.warm_up()
    record.step_done(Step.WARM_UP, round(time.monotonic() - step, 3))
    if not warmed:
        log.warning("version %s has no input example: warm-up skipped", worker.version)
    # Read once while the MLmodel is at hand (the worker read it for the warm-up): the next
    # version's guard compares with it even if this worker is gone by then.
    return await worker.input_schema()


async def check_signature(served: tuple[str, Any], new: Worker, record: SwapRecord) -> None:
    """Block a version whose inputs would break the callers of the version that served last
    (active, or dead and being restarted). Runs while the new worker boots, so a blocked
    version costs no wait for its cold start."""
    step = time.monotonic()
    version, before = served
    after = await new.input_schema()
    record.step_done(Step.SIGNATURE, round(time.monotonic() - step, 3))
    problems = breaking_changes(before, after)
    if problems:
        raise WorkerFailed(
            Step.SIGNATURE,
            f"inputs incompatible with version {version}: {'; '.join(problems)} "
            "(--allow-signature-change lets it through)",
        )
