"""What a second worker booting beside a serving one costs its clients, with no swap at all.

    .venv/bin/python benchmarks/neighbor_boot.py [--rate 100] [--boots 3] [--quiet 8]

The floor under swap_under_load.py's "p99 around swaps": a swap boots the new version's
`mlflow models serve` on the same machine as the serving one, and on a small machine that boot
competes for the CPU whatever sits in front of the worker. Here an unrelated
`mlflow models serve` (not the sidecar's, not routed to) boots `--boots` times, each time
killed once it answers /ping, while open-loop load (openloop.py) goes to the serving worker
two ways, one after the other:

  direct   straight to the worker the sidecar started
  ours     through the sidecar (`mlflow-bluegreen serve -m models:/iris/1`), which swaps nothing

Reported per way: p50/p99 in quiet periods (more than 3 s from any boot) and while a neighbour
boots, and their p99 ratio. If `direct` shows the ratio too, it is the machine's, not ours.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from common import (
    kill_group,
    machine,
    out_path,
    percentile,
    register_iris_versions,
    start_model_server,
    table,
    wait_ping,
    write_json,
)
from openloop import LATENCY, SCHEDULED, STATUS, LoadChild, Record

SETTLE = 3.0  # seconds either side of a boot that count neither as quiet nor as the boot


def boot_neighbour(model_uri: str, registry_uri: str, timeout: float) -> None:
    """Start a `mlflow models serve` of our own, wait for its first /ping 200, kill it."""
    from mlflow_bluegreen.worker.spec import free_port

    port = free_port()
    process = start_model_server(model_uri, port, registry_uri)
    try:
        wait_ping(port, timeout, process)
    finally:
        kill_group(process)


def measure(url: str, args: argparse.Namespace, model_uri: str, registry_uri: str) -> dict:
    load = LoadChild(url, rate=args.rate)
    boots: list[tuple[float, float]] = []
    try:
        time.sleep(args.quiet)
        for _ in range(args.boots):
            began = load.now()
            boot_neighbour(model_uri, registry_uri, args.boot_timeout)
            boots.append((began, load.now()))
            time.sleep(args.quiet)
    finally:
        records = load.stop()
    return {"boots": boots, "records": records, "summary": summarise(records, boots)}


def summarise(records: list[Record], boots: list[tuple[float, float]]) -> dict[str, Any]:
    ok = [r for r in records if r[STATUS] == 200]

    def within(r: Record, margin: float) -> bool:
        return any(lo - margin <= r[SCHEDULED] <= hi + margin for lo, hi in boots)

    quiet = [r[LATENCY] * 1000 for r in ok if not within(r, SETTLE)]
    booting = [r[LATENCY] * 1000 for r in ok if within(r, 0.0)]
    quiet_p99, boot_p99 = percentile(quiet, 99), percentile(booting, 99)
    return {
        "requests": len(records),
        "failed": len(records) - len(ok),
        "quiet_p50": percentile(quiet, 50),
        "quiet_p99": quiet_p99,
        "boot_p50": percentile(booting, 50),
        "boot_p99": boot_p99,
        "p99_ratio": boot_p99 / quiet_p99 if quiet_p99 and boot_p99 else None,
        "boot_seconds": [round(hi - lo, 1) for lo, hi in boots],
    }


def main() -> int:
    args = parse_args()
    from mlflow_bluegreen.proxy.demo import SidecarProcess
    from mlflow_bluegreen.worker.sandbox import EmbeddedRegistry

    began = time.monotonic()
    info = machine()
    ways: dict[str, dict[str, Any]] = {}
    print("• starting an embedded MLflow registry and registering the iris model …", flush=True)
    with EmbeddedRegistry() as registry:
        [version] = register_iris_versions(registry.uri, "iris", (1.0,))
        model_uri = f"models:/iris/{version}"
        extra = ("--log-level", "WARNING")
        with SidecarProcess(model_uri, tracking_uri=registry.uri, extra_args=extra) as sidecar:
            sidecar.wait_active(version, timeout=240)
            worker_port = sidecar.status()["active"]["port"]
            for way, url in (
                ("direct", f"http://127.0.0.1:{worker_port}/invocations"),
                ("ours", f"{sidecar.url}/invocations"),
            ):
                print(f"• {way}: {args.rate:g} req/s, {args.boots} neighbour boots …", flush=True)
                ways[way] = measure(url, args, model_uri, registry.uri)
    print(f"\n=== a neighbour booting — {info['date']}, {info['cpus']} cores (shared machine) ===")
    print(f"Open loop {args.rate:g} req/s; latency (ms) from each request's scheduled start")
    rows = [
        (
            way,
            s["requests"],
            s["failed"],
            s["quiet_p50"],
            s["quiet_p99"],
            s["boot_p50"],
            s["boot_p99"],
            s["p99_ratio"],
            " ".join(f"{b:g}" for b in s["boot_seconds"]),
        )
        for way, s in ((way, run["summary"]) for way, run in ways.items())
    ]
    headers = ("way", "requests", "failed", "quiet p50", "quiet p99", "boot p50", "boot p99")
    print(table((*headers, "boot/quiet p99", "boots (s)"), rows))
    path = out_path("neighbor_boot", ".json")
    seconds = round(time.monotonic() - began, 1)
    write_json(path, {"machine": info, "config": vars(args), "ways": ways, "seconds": seconds})
    print(f"\nrecords: {path}\n({seconds:.0f} s)")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--boots", type=int, default=3, help="neighbour boots per way")
    parser.add_argument("--quiet", type=float, default=8.0, help="seconds before and after each")
    parser.add_argument("--boot-timeout", type=float, default=180.0)
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(main())
