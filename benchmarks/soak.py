"""Bounded soak: continuous load on the sidecar while the alias moves every few seconds.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--swap-every 30] [--rate 50]

An embedded MLflow registry holds two iris versions; `mlflow-bluegreen serve` follows
`models:/iris@champion`. Open-loop load (see openloop.py) runs for `--minutes`, and every
`--swap-every` seconds the alias moves to the other version. What it checks:

  - requests and failed requests (goal: 0 failed),
  - alias moves, and swaps succeeded/failed by the sidecar's own counter,
  - the sidecar process's RSS, open file descriptors and threads, and how many processes run
    under it, sampled just before each alias move (the same point of every cycle: one worker,
    steady load), from /proc. Goal: flat.

Output: a summary on stdout and JSON (samples, failures, per-minute latency) in benchmarks/out/.
Exits 1 if a request failed, a swap failed, or a descriptor or process leaked.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from common import (
    client_connections,
    descendants,
    machine,
    out_path,
    percentile,
    process_stats,
    register_iris_versions,
    save_run,
    table,
)
from openloop import ERROR, LATENCY, SCHEDULED, STATUS, VERSION, LoadChild, Record

# Memory may grow a little while allocator arenas and caches fill; growth over the second half
# of the run is the leak signal, so that is what the tolerance applies to.
RSS_SECOND_HALF_TOLERANCE_KIB = 4096
FD_TOLERANCE = 4  # pooled keep-alive connections come and go with load


def swap_counts(sidecar: Any) -> dict[str, float]:
    """mlflow_bluegreen_swaps_total by result, from the admin /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    code, body = sidecar.get("/metrics", admin=True)
    if code != 200:
        raise RuntimeError(f"/metrics answered {code}")
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "mlflow_bluegreen_swaps":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["result"]] = sample.value
    return counts


def sample(sidecar: Any, load: LoadChild, moves: int) -> dict[str, Any]:
    pid = sidecar.process.pid
    stats = process_stats(pid)
    clients = client_connections(pid, sidecar.port)
    return {
        "t_s": round(load.now(), 1),
        "moves": moves,
        **stats,
        # The load generator's keep-alive pool grows after a latency spike and keeps its
        # connections: those are the client's doing, so the leak check counts the other fds.
        "client_fds": clients,
        "own_fds": stats["fds"] - clients,
        # a stopped worker that was not reaped, or a uvicorn left behind, shows here
        "processes_below": len(descendants(pid)) - 1,
    }


def per_minute(records: list[Record]) -> list[dict[str, Any]]:
    minutes: dict[int, list[Record]] = {}
    for r in records:
        minutes.setdefault(int(r[SCHEDULED] // 60), []).append(r)
    rows = []
    for minute, rows_ in sorted(minutes.items()):
        ok = [r[LATENCY] * 1000 for r in rows_ if r[STATUS] == 200]
        rows.append(
            {
                "minute": minute,
                "requests": len(rows_),
                "failed": len(rows_) - len(ok),
                "p50_ms": percentile(ok, 50),
                "p99_ms": percentile(ok, 99),
                "max_ms": max(ok, default=None),
            }
        )
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mlflow_bluegreen.proxy.demo import SidecarProcess
    from mlflow_bluegreen.worker.sandbox import EmbeddedRegistry, set_alias

    duration = args.minutes * 60
    log_path = out_path("soak-sidecar", ".log")
    print("• starting an embedded MLflow registry and registering two iris versions …", flush=True)
    with EmbeddedRegistry() as registry:
        versions_ = register_iris_versions(registry.uri, "iris", (1.0, 0.05))
        set_alias(registry.uri, "iris", "champion", versions_[0])
        extra = ("--poll-interval", str(args.poll_interval), "--log-level", "INFO")
        print("• starting mlflow-bluegreen serve -m models:/iris@champion …", flush=True)
        with SidecarProcess(
            "models:/iris@champion", tracking_uri=registry.uri, extra_args=extra, log_path=log_path
        ) as sidecar:
            sidecar.wait_active(versions_[0], timeout=args.swap_timeout)
            swaps_before = swap_counts(sidecar)  # the first start counts as a swap from nothing
            load = LoadChild(
                f"{sidecar.url}/invocations",
                rate=args.rate,
                timeout=args.timeout,
                max_seconds=duration + args.swap_timeout + 60,
            )
            print(
                f"• {args.rate:g} req/s for {args.minutes:g} min, alias moved every"
                f" {args.swap_every:g} s (sidecar pid {sidecar.process.pid}, log {log_path})",
                flush=True,
            )
            samples: list[dict[str, Any]] = []
            moves: list[dict[str, Any]] = []
            try:
                # Cycle points at every multiple of --swap-every: sample, then move the alias. The
                # first cycle is the warm-up (pools, caches, first allocations) before the first
                # sample; the last sample falls at the end of the run.
                for k in range(1, int(duration // args.swap_every) + 1):
                    time.sleep(max(0.0, k * args.swap_every - load.now()))
                    samples.append(sample(sidecar, load, len(moves)))
                    _print_sample(samples[-1])
                    if (k + 1) * args.swap_every > duration:
                        break
                    target = versions_[(len(moves) + 1) % 2]
                    set_alias(registry.uri, "iris", "champion", target)
                    move: dict[str, Any] = {"to": target, "moved_s": round(load.now(), 2)}
                    try:
                        sidecar.wait_active(target, timeout=args.swap_timeout)
                        move["active_after_s"] = round(load.now() - move["moved_s"], 2)
                    except TimeoutError:
                        move["active_after_s"] = None
                    moves.append(move)
            finally:
                records = load.stop()
            swaps_after = swap_counts(sidecar)
            status = sidecar.status()
            exit_code = sidecar.stop()
    swaps = {
        result: int(swaps_after.get(result, 0) - swaps_before.get(result, 0))
        for result in sorted(set(swaps_after) | set(swaps_before))
    }
    return {
        "records": records,
        "samples": samples,
        "moves": moves,
        "swaps": swaps,
        "history": status["history"],
        "exit_code": exit_code,
        "log": str(log_path),
    }


def _print_sample(s: dict[str, Any]) -> None:
    print(
        f"  t={s['t_s']:6.0f} s  moves {s['moves']:3d}  rss {s['rss_kib'] / 1024:6.1f} MiB"
        f"  fds {s['fds']:3d} ({s['client_fds']} clients)  threads {s['threads']:2d}"
        f"  processes below {s['processes_below']}",
        flush=True,
    )


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    records: list[Record] = result["records"]
    samples = result["samples"]
    ok = [r[LATENCY] * 1000 for r in records if r[STATUS] == 200]
    kinds: dict[str, int] = {}
    for r in records:
        if r[STATUS] != 200:
            kind = (r[ERROR] or f"HTTP {r[STATUS]}").split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    first, last = samples[0], samples[-1]
    middle = samples[len(samples) // 2]
    by_version: dict[str, int] = {}
    for r in records:
        if r[STATUS] == 200:
            by_version[r[VERSION]] = by_version.get(r[VERSION], 0) + 1
    summary = {
        "requests": len(records),
        "failed": len(records) - len(ok),
        "failure_kinds": kinds,
        "by_version": by_version,
        "latency_ms": {
            "p50": percentile(ok, 50),
            "p99": percentile(ok, 99),
            "p99.9": percentile(ok, 99.9),
            "max": max(ok, default=None),
        },
        "alias_moves": len(result["moves"]),
        "moves_not_active_in_time": sum(1 for m in result["moves"] if m["active_after_s"] is None),
        "swaps": result["swaps"],
        "rss_kib": {"start": first["rss_kib"], "middle": middle["rss_kib"], "end": last["rss_kib"]},
        "rss_growth_kib": last["rss_kib"] - first["rss_kib"],
        "rss_growth_second_half_kib": last["rss_kib"] - middle["rss_kib"],
        "fds": {"start": first["fds"], "end": last["fds"], "max": max(s["fds"] for s in samples)},
        "own_fds": {"start": first["own_fds"], "end": last["own_fds"]},
        "client_fds": {"start": first["client_fds"], "end": last["client_fds"]},
        "threads": {"start": first["threads"], "end": last["threads"]},
        "processes_below": {"start": first["processes_below"], "end": last["processes_below"]},
        "per_minute": per_minute(records),
    }
    summary["checks"] = {
        "no_failed_requests": summary["failed"] == 0,
        "no_failed_swaps": result["swaps"].get("failed", 0) == 0
        and summary["moves_not_active_in_time"] == 0,
        "rss_flat": summary["rss_growth_second_half_kib"] <= RSS_SECOND_HALF_TOLERANCE_KIB,
        "fds_flat": last["own_fds"] - first["own_fds"] <= FD_TOLERANCE,
        "processes_flat": last["processes_below"] == first["processes_below"],
    }
    return summary


def print_summary(summary: dict[str, Any], result: dict[str, Any], info: dict[str, Any]) -> None:
    print(f"\n=== soak — {info['date']}, {info['cpus']} cores (shared machine) ===")
    lat = summary["latency_ms"]
    kinds = ", ".join(f"{n}× {k}" for k, n in summary["failure_kinds"].items())
    print(
        f"requests: {summary['requests']}   failed: {summary['failed']}"
        + (f" ({kinds})" if kinds else "")
    )
    print(
        f"latency from scheduled start: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms,"
        f" p99.9 {lat['p99.9']:.1f} ms, max {lat['max']:.0f} ms"
    )
    served = ", ".join(f"v{v}: {n}" for v, n in sorted(summary["by_version"].items()))
    print(f"answered by version: {served}")
    swaps = summary["swaps"]
    active_after = [m["active_after_s"] for m in result["moves"] if m["active_after_s"]]
    print(
        f"alias moves: {summary['alias_moves']}   swaps succeeded: {swaps.get('succeeded', 0)}"
        f"   failed: {swaps.get('failed', 0)}   not active within the timeout:"
        f" {summary['moves_not_active_in_time']}"
        + (
            f"   move → active: median {percentile(active_after, 50):.1f} s,"
            f" max {max(active_after):.1f} s"
            if active_after
            else ""
        )
    )
    samples = result["samples"]
    # At most ~8 rows on screen; every sample is in the JSON.
    step = max(1, (len(samples) - 1) // 7)
    shown = samples[::step]
    if shown[-1] is not samples[-1]:
        shown.append(samples[-1])
    print("\nsidecar process (sampled just before each alias move)")
    print(
        table(
            ["t (s)", "moves", "RSS MiB", "fds", "of which clients", "threads", "processes below"],
            [
                [
                    s["t_s"],
                    s["moves"],
                    f"{s['rss_kib'] / 1024:.1f}",
                    s["fds"],
                    s["client_fds"],
                    s["threads"],
                    s["processes_below"],
                ]
                for s in shown
            ],
        )
    )
    print(
        f"RSS {summary['rss_kib']['start'] / 1024:.1f} → {summary['rss_kib']['end'] / 1024:.1f} MiB"
        f" ({summary['rss_growth_kib'] / 1024:+.1f} MiB; second half"
        f" {summary['rss_growth_second_half_kib'] / 1024:+.1f} MiB);"
        f" fds {summary['fds']['start']} → {summary['fds']['end']} (max {summary['fds']['max']}),"
        f" not counting client connections {summary['own_fds']['start']} →"
        f" {summary['own_fds']['end']};"
        f" threads {summary['threads']['start']} → {summary['threads']['end']};"
        f" processes below {summary['processes_below']['start']} →"
        f" {summary['processes_below']['end']}"
    )
    print("\nper minute (latency of successful requests, ms)")
    print(
        table(
            ["minute", "requests", "failed", "p50", "p99", "max"],
            [
                [m["minute"], m["requests"], m["failed"], m["p50_ms"], m["p99_ms"], m["max_ms"]]
                for m in summary["per_minute"]
            ],
        )
    )
    print("\nchecks:")
    notes = {
        "no_failed_requests": "0 failed requests",
        "no_failed_swaps": "every alias move became active, no failed swap",
        "rss_flat": f"RSS growth over the second half <= {RSS_SECOND_HALF_TOLERANCE_KIB // 1024}"
        " MiB",
        "fds_flat": f"open fds, client connections aside: end - start <= {FD_TOLERANCE}",
        "processes_flat": "same number of processes below the sidecar at start and end",
    }
    for name, ok in summary["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'}  {notes[name]}")
    print(f"sidecar exit code after SIGTERM: {result['exit_code']}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--swap-every", type=float, default=30.0, help="seconds between moves")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="sidecar registry poll")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--swap-timeout", type=float, default=240.0)
    args = parser.parse_args()
    if args.swap_every < 10:
        parser.error("--swap-every must be at least 10 s: a swap itself takes several seconds")
    if args.minutes * 60 < 3 * args.swap_every:
        parser.error("--minutes must cover at least three --swap-every cycles")
    return args


def main() -> int:
    args = parse_args()
    info = machine()
    began = time.monotonic()
    result = run(args)
    summary = summarize(result)
    print_summary(summary, result, info)
    save_run(
        "soak",
        info,
        vars(args),
        began,
        summary=summary,
        samples=result["samples"],
        moves=result["moves"],
        history=result["history"],
        failures=[r for r in result["records"] if r[STATUS] != 200],
    )
    return 0 if all(summary["checks"].values()) and result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
