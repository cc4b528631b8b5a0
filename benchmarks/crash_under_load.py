"""Crashes under load: SIGKILL the active worker again and again.

    .venv/bin/python benchmarks/crash_under_load.py [--kills 20] [--concurrency 4] [--linger 600]

An embedded MLflow registry holds two iris versions; `mlflow-bluegreen serve --linger 600`
follows `models:/iris@champion`, which moves once so that the first version lingers. Then, under
closed-loop load, the active worker's whole process group is SIGKILLed `--kills` times, each
time once the sidecar has restarted it and the other version is warm again. The kill lands at a
different point of a request each time (0.3-0.9 s after the sidecar is settled).

Goal: 0 failed requests. A request in flight on the killed worker is resent to the lingering
one, whether the worker died before answering it or part-way through the answer (answers up to
1 MiB reach the client only whole). The summary counts how often each happened.
With `--linger 0` there is no warm worker to fall back to: requests are held (up to the
sidecar's --queue-timeout, 30 s) until the killed one is restarted, so the slowest take a boot.
Exits 1 if a request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import Any

from common import machine, percentile, register_iris_versions, save_run

from mlflow_bluegreen.proxy.demo import SidecarProcess
from mlflow_bluegreen.proxy.loadgen import LoadResult, closed_loop
from mlflow_bluegreen.worker.sandbox import EmbeddedRegistry, set_alias

# Log lines: the public port's, when a worker's answer stopped before any of it went out; the
# supervisor's, when the active worker died and the lingering one took over (the history in
# /status keeps only the last 50 swaps).
CUT_AND_RESENT = "nothing sent yet"
FELL_BACK = "traffic back on"


async def settled(
    sidecar: SidecarProcess, timeout: float, killed: int | None, lingers: bool
) -> dict[str, Any]:
    """The sidecar's status once an active worker serves and, if it `lingers`, another one is
    warm; the worker last `killed` (a pid) is neither: its exit takes up to 0.1 s to be seen."""
    deadline = time.monotonic() + timeout
    while True:
        status = await asyncio.to_thread(sidecar.status)
        active, lingering = status["active"], status["lingering"]
        warm = [active] + ([lingering] if lingers else [])
        if (
            all(worker and worker["alive"] for worker in warm)
            and killed not in (worker["pid"] for worker in warm)
            and not status["swap_in_progress"]
        ):
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(f"not settled after {timeout} s: {status}")
        await asyncio.sleep(0.2)


async def kill_under_load(
    sidecar: SidecarProcess, args: argparse.Namespace
) -> tuple[LoadResult, list[dict[str, Any]]]:
    stop = asyncio.Event()
    began = time.monotonic()
    load = asyncio.create_task(
        closed_loop(f"{sidecar.url}/invocations", stop, concurrency=args.concurrency, began=began)
    )
    kills: list[dict[str, Any]] = []
    killed = None
    try:
        for number in range(args.kills):
            status = await settled(sidecar, args.restart_timeout, killed, args.linger > 0)
            await asyncio.sleep(0.3 + (number % 7) * 0.1)
            victim = status["active"]
            killed = victim["pid"]
            os.killpg(killed, signal.SIGKILL)
            kills.append({"t_s": round(time.monotonic() - began, 3), "version": victim["version"]})
            print(f"  kill {number + 1}/{args.kills}: v{victim['version']} (pid {victim['pid']})")
        await settled(sidecar, args.restart_timeout, killed, args.linger > 0)
    finally:
        stop.set()
    return await load, kills


def run(args: argparse.Namespace) -> dict[str, Any]:
    with EmbeddedRegistry() as registry:
        print("• registering two iris versions …", flush=True)
        first, second = register_iris_versions(registry.uri, "iris", (1.0, 0.05))
        set_alias(registry.uri, "iris", "champion", first)
        print(f"• starting mlflow-bluegreen serve --linger {args.linger:g} …", flush=True)
        with SidecarProcess(
            "models:/iris@champion",
            tracking_uri=registry.uri,
            extra_args=(
                *("--poll-interval", "0.5", "--linger", f"{args.linger:g}"),
                # Every kill lands within a minute of the restart: otherwise the second would
                # count as a crash loop, and the version would back off.
                *("--crash-window", "0"),
            ),
        ) as sidecar:
            sidecar.wait_active(first, timeout=args.restart_timeout)
            set_alias(registry.uri, "iris", "champion", second)
            sidecar.wait_active(second, timeout=args.restart_timeout)
            print(f"• {args.kills} kills under load, {args.concurrency} connections …")
            result, kills = asyncio.run(kill_under_load(sidecar, args))
            log = sidecar.log_text()
    failures = result.failures
    answered = [o.seconds for o in result.outcomes if o.ok]
    return {
        "requests": len(result.outcomes),
        "failed": len(failures),
        "failure_kinds": result.describe_failures(limit=10),
        "by_version": dict(result.by_version()),
        "latency_s": {"p50": percentile(answered, 50), "max": max(answered, default=None)},
        "kills": kills,
        "fallbacks": log.count(FELL_BACK),
        "cut_and_resent": log.count(CUT_AND_RESENT),
        "failures": [vars(o) for o in failures],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4, help="closed-loop clients")
    parser.add_argument(
        "--linger", type=float, default=600.0, help="seconds; 0: no warm worker to fall back to"
    )
    parser.add_argument("--restart-timeout", type=float, default=240.0, help="seconds")
    args = parser.parse_args()
    if args.kills < 1 or args.concurrency < 1:
        parser.error("--kills and --concurrency must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    info = machine()
    began = time.monotonic()
    summary = run(args)
    print(f"\n=== crashes under load — {info['date']}, {info['cpus']} cores (shared machine) ===")
    print(
        f"kills: {len(summary['kills'])}   fallbacks to the lingering worker:"
        f" {summary['fallbacks']}   requests: {summary['requests']}   failed:"
        f" {summary['failed']}" + (f" ({summary['failure_kinds']})" if summary["failed"] else "")
    )
    print(f"answers cut by a kill and resent whole: {summary['cut_and_resent']}")
    latency = summary["latency_s"]
    if latency["max"] is not None:
        print(f"latency of answered requests: p50 {latency['p50'] * 1000:.1f} ms, slowest"
              f" {latency['max']:.2f} s")  # fmt: skip
    save_run("crash_under_load", info, vars(args), began, summary=summary)
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
