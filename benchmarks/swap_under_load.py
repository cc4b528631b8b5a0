"""Latency and failures while the registry alias moves, under open-loop load: ours vs a restart.

    .venv/bin/python benchmarks/swap_under_load.py [--rate 100] [--moves 5] [--pause 15] ...

An embedded MLflow registry holds two iris versions; `champion` names one of them. A fixed
arrival rate of POST /invocations (open loop, see openloop.py: latency counts from each request's
scheduled start) runs while the alias moves `--moves` times, alternating, with `--pause` seconds
after each move has taken effect.

  ours      `mlflow-bluegreen serve -m models:/iris@champion --poll-interval 1`
  restart   the mlflow-adsp way: one `mlflow models serve -m models:/iris@champion`, killed
            (SIGKILL to its process group) and started again on the SAME port on every move.

Every request is recorded (scheduled time, send lag, latency, status, X-Model-Version, error).
Output: raw records as JSON and a PNG plot in benchmarks/out/, and a summary on stdout.
All times are seconds since the load began, on the load generator's clock.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    kill_group,
    machine,
    out_path,
    percentile,
    register_iris_versions,
    start_model_server,
    table,
    versions,
    wait_ping,
    write_json,
)
from openloop import ERROR, LATENCY, SCHEDULED, SEND_LAG, STATUS, VERSION, LoadChild, Record

TARGETS = {"failed": 0, "swap_steady_p99": 1.5}
WINDOW = 5.0  # seconds either side of an alias move that count as "around the swap"
RESAMPLES = 400  # for the interval of the p99 ratio


@dataclass
class Move:
    """One alias move, in seconds since the load began."""

    target: str
    moved: float  # the registry call that set the alias returned
    done: float  # ours: new version active and swap finished; restart: /ping answers again
    marks: dict[str, float] = field(default_factory=dict)  # switched (ours), killed (restart)


def load_for(args: argparse.Namespace, url: str) -> LoadChild:
    return LoadChild(
        url,
        rate=args.rate,
        max_outstanding=args.max_outstanding,
        timeout=args.timeout,
        max_seconds=args.max_seconds,
    )


# -- the two systems under test ------------------------------------------------------------------


def worker_rss(sidecar: Any) -> int:
    """All the sidecar's workers' resident memory now, whatever their role, from /metrics."""
    code, body = sidecar.get("/metrics", admin=True)
    if code != 200:
        return 0
    prefix = "mlflow_bluegreen_worker_rss_bytes{"
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.decode().splitlines()
            if line.startswith(prefix)
        )
    )


class PeakSampler:
    """The highest sum of the workers' RSS seen, sampled every 0.5 s in a thread."""

    def __init__(self, sidecar: Any) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sidecar,), daemon=True)
        self._thread.start()

    def _run(self, sidecar: Any) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, worker_rss(sidecar))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_ours(
    args: argparse.Namespace,
    registry_uri: str,
    versions_: list[str],
    options: tuple[str, ...] = (),
) -> dict[str, Any]:
    from mlflow_bluegreen.proxy.demo import SidecarProcess
    from mlflow_bluegreen.worker.sandbox import set_alias

    log_path = out_path("swap_under_load-sidecar", ".log")
    extra = ("--poll-interval", str(args.poll_interval), "--log-level", "INFO", *options)
    with SidecarProcess(
        "models:/iris@champion", tracking_uri=registry_uri, extra_args=extra, log_path=log_path
    ) as sidecar:
        sidecar.wait_active(versions_[0], timeout=args.swap_timeout)
        load = load_for(args, f"{sidecar.url}/invocations")
        peak = PeakSampler(sidecar)
        moves: list[Move] = []
        try:
            time.sleep(args.lead)
            for k in range(args.moves):
                target = versions_[(k + 1) % 2]
                set_alias(registry_uri, "iris", "champion", target)
                moved = load.now()
                print(f"  ours: alias -> v{target} at {moved:6.1f} s", flush=True)
                sidecar.wait_active(target, timeout=args.swap_timeout)
                move = Move(target, moved, load.now())
                # `since` is the wall-clock time of the switch; carry it onto the load's timeline.
                since = sidecar.status()["active"]["since"]
                move.marks["switched"] = load.now() - (time.time() - since)
                moves.append(move)
                print(f"  ours: v{target} active, swap done at {move.done:6.1f} s", flush=True)
                time.sleep(args.pause)
        finally:
            records = load.stop()
            peak_rss = peak.stop()
        status = sidecar.status()
        exit_code = sidecar.stop()
    history = list(reversed(status["history"]))  # oldest first
    return {
        "records": records,
        "moves": moves,
        "swaps": [h for h in history if h["from"] is not None],
        "exit_code": exit_code,
        "options": list(options),
        "peak_worker_rss_bytes": peak_rss,
        "log": str(log_path),
    }


def run_restart(
    args: argparse.Namespace, registry_uri: str, versions_: list[str]
) -> dict[str, Any]:
    from mlflow_bluegreen.worker.sandbox import set_alias
    from mlflow_bluegreen.worker.spec import free_port

    port = free_port()
    log_path = out_path("swap_under_load-restart", ".log")
    processes: list[subprocess.Popen[bytes]] = []

    with open(log_path, "ab") as log:

        def start() -> subprocess.Popen[bytes]:
            # The same command and environment our sidecar gives its workers, so the only
            # difference between the two runs is how a new version replaces the old one.
            process = start_model_server("models:/iris@champion", port, registry_uri, log)
            processes.append(process)
            return process

        try:
            current = start()
            wait_ping(port, args.swap_timeout, current)
            load = load_for(args, f"http://127.0.0.1:{port}/invocations")
            moves: list[Move] = []
            try:
                time.sleep(args.lead)
                for k in range(args.moves):
                    target = versions_[(k + 1) % 2]
                    set_alias(registry_uri, "iris", "champion", target)
                    moved = load.now()
                    kill_group(current)  # as mlflow-adsp does: the old process goes first
                    killed = load.now()
                    current = start()
                    wait_ping(port, args.swap_timeout, current)
                    moves.append(Move(target, moved, load.now(), {"killed": killed}))
                    print(
                        f"  restart: alias -> v{target} at {moved:6.1f} s, serving again at"
                        f" {moves[-1].done:6.1f} s",
                        flush=True,
                    )
                    time.sleep(args.pause)
            finally:
                records = load.stop()
        finally:
            for process in processes:
                kill_group(process)
    # A plain `mlflow models serve` names no version: infer it from which process was running
    # when the request was sent. A request sent to a killed process fails, so a success is never
    # credited to the wrong version.
    kills = [(m.marks["killed"], m.target) for m in moves]
    for record in records:
        if record[STATUS] == 200:
            sent = record[SCHEDULED] + record[SEND_LAG]
            record[VERSION] = versions_[0]
            for killed, target in kills:
                if sent >= killed:
                    record[VERSION] = target
    return {"records": records, "moves": moves, "log": str(log_path)}


# -- analysis ------------------------------------------------------------------------------------


def latency(rows: list[Record]) -> dict[str, float | None]:
    values = [r[LATENCY] * 1000 for r in rows]
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def failure_kinds(rows: list[Record]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for r in rows:
        if r[STATUS] != 200:
            kind = (r[ERROR] or f"HTTP {r[STATUS]}").split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def analyse(records: list[Record], moves: list[Move], late_ms: float) -> dict[str, Any]:
    """Summary of one run; times in seconds since the load began, latencies in ms."""
    ok = [r for r in records if r[STATUS] == 200]

    def near(r: Record, spans: list[tuple[float, float]]) -> bool:
        return any(lo <= r[SCHEDULED] <= hi for lo, hi in spans)

    around_moves = [(m.moved - WINDOW, m.moved + WINDOW) for m in moves]
    whole_swaps = [(m.moved - WINDOW, m.done + WINDOW) for m in moves]

    per_move = []
    for n, move in enumerate(moves):
        # A request belongs to the move during which it completed: one sent just before a kill
        # fails after it, and is that move's failure, not the previous one's.
        end = moves[n + 1].moved if n + 1 < len(moves) else float("inf")
        span = [r for r in records if move.moved <= r[SCHEDULED] + r[LATENCY] < end]
        done_at = [(r[SCHEDULED] + r[LATENCY], r) for r in span]
        new = [t for t, r in done_at if r[STATUS] == 200 and r[VERSION] == move.target]
        other = [t for t, r in done_at if not (r[STATUS] == 200 and r[VERSION] == move.target)]
        bad = [t for t, r in done_at if r[STATUS] != 200]
        first_new = min(new, default=None)
        entry = {
            "to": move.target,
            "moved_s": move.moved,
            "done_s": move.done,
            **{f"{k}_s": v for k, v in move.marks.items()},
            "first_new_after_s": None if first_new is None else first_new - move.moved,
            # from then on every response came from the new version, and succeeded
            "all_new_after_s": None
            if first_new is None
            else (max(other) if other else first_new) - move.moved,
            "failed": len(bad),
            "failures_span_s": (max(bad) - min(bad)) if bad else 0.0,
            "longest_gap_without_success_s": longest_gap(
                sorted(t for t, r in done_at if r[STATUS] == 200), move.moved
            ),
        }
        per_move.append(entry)

    steady = [r for r in ok if not near(r, whole_swaps)]
    swapping = [r for r in ok if near(r, whole_swaps)]
    return {
        "total": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "failure_kinds": failure_kinds(records),
        "late": sum(1 for r in records if r[SEND_LAG] * 1000 > late_ms),
        "max_send_lag_ms": max((r[SEND_LAG] * 1000 for r in records), default=0.0),
        "steady": latency(steady),
        "near_move": latency([r for r in ok if near(r, around_moves)]),
        "swap_span": latency(swapping),
        "swap_steady_p99_interval": p99_ratio_interval(swapping, steady),
        "moves": per_move,
    }


def p99_ratio_interval(
    swapping: list[Record], steady: list[Record], seed: int = 0
) -> tuple[float, float] | None:
    """90 % interval of swap p99 / steady p99. A run's steady p99 rests on about a thousand
    requests (its tenth slowest), so one run's ratio moves by ±0.2 from chance alone. Whole
    seconds are resampled, not single requests: slow requests come in clusters."""
    swap_seconds, steady_seconds = _by_second(swapping), _by_second(steady)
    if not swap_seconds or not steady_seconds:
        return None
    rng = random.Random(seed)
    ratios = []
    for _ in range(RESAMPLES):
        swap_p99 = percentile(_resampled(rng, swap_seconds), 99)
        steady_p99 = percentile(_resampled(rng, steady_seconds), 99)
        if swap_p99 is not None and steady_p99:
            ratios.append(swap_p99 / steady_p99)
    low, high = percentile(ratios, 5), percentile(ratios, 95)
    return None if low is None or high is None else (low, high)


def _by_second(rows: list[Record]) -> list[list[float]]:
    seconds: dict[int, list[float]] = {}
    for r in rows:
        seconds.setdefault(int(r[SCHEDULED]), []).append(r[LATENCY] * 1000)
    return list(seconds.values())


def _resampled(rng: random.Random, seconds: list[list[float]]) -> list[float]:
    return [value for second in rng.choices(seconds, k=len(seconds)) for value in second]


def longest_gap(completions: list[float], since: float) -> float:
    """Longest time without a successful response, from `since` through the completions."""
    gap, last = 0.0, since
    for t in completions:
        gap = max(gap, t - last)
        last = t
    return gap


# -- output --------------------------------------------------------------------------------------


def plot(runs: dict[str, dict[str, Any]], path: Path, title: str) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (.venv/bin/pip install matplotlib)")
        return False
    matplotlib.use("Agg")  # no display here
    import matplotlib.pyplot as plt

    palette = ["tab:blue", "tab:green", "tab:purple", "tab:orange"]
    figure, axes = plt.subplots(
        len(runs), 1, figsize=(13, 4.2 * len(runs)), sharex=True, sharey=True, squeeze=False
    )
    all_versions = sorted(
        {r[VERSION] for run in runs.values() for r in run["records"] if r[VERSION]}
    )
    colors = {v: palette[i % len(palette)] for i, v in enumerate(all_versions)}
    for axis, (name, run) in zip(axes[:, 0], runs.items(), strict=True):
        records, summary = run["records"], run["summary"]
        for version in all_versions:
            rows = [r for r in records if r[STATUS] == 200 and r[VERSION] == version]
            axis.scatter(
                [r[SCHEDULED] for r in rows],
                [r[LATENCY] * 1000 for r in rows],
                s=3,
                color=colors[version],
                label=f"v{version} ({len(rows)})",
                rasterized=True,
            )
        bad = [r for r in records if r[STATUS] != 200]
        if bad:
            axis.scatter(
                [r[SCHEDULED] for r in bad],
                [max(r[LATENCY] * 1000, 0.1) for r in bad],  # log axis: no zero
                s=12,
                marker="x",
                color="red",
                label=f"failed ({len(bad)})",
            )
        for n, move in enumerate(run["moves"]):
            first = n == 0
            axis.axvline(
                move.moved, color="black", linewidth=1, label="alias moved" if first else None
            )
            if "switched" in move.marks:
                axis.axvline(
                    move.marks["switched"],
                    color="gray",
                    linestyle="--",
                    linewidth=1,
                    label="traffic switched" if first else None,
                )
            else:
                axis.axvline(
                    move.done,
                    color="gray",
                    linestyle="--",
                    linewidth=1,
                    label="serving again" if first else None,
                )
        axis.set_title(
            f"{name}: {summary['failed']} failed of {summary['total']}; steady p99 "
            f"{_ms(summary['steady']['p99'])}, p99 around swaps {_ms(summary['swap_span']['p99'])}"
        )
        axis.set_yscale("log")
        axis.set_ylabel("latency from scheduled start (ms)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(loc="upper right", fontsize=8, markerscale=3)
    axes[-1, 0].set_xlabel("scheduled time, seconds since load began")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _interval(interval: tuple[float, float] | list[float] | None) -> str:
    return "-" if interval is None else f"{interval[0]:.2f}-{interval[1]:.2f}"


def _verdict(interval: tuple[float, float] | list[float] | None) -> str:
    """On the interval, not the point: one run cannot tell 1.4 from 1.6."""
    limit = TARGETS["swap_steady_p99"]
    if interval is None:
        return "no figure"
    if interval[1] <= limit:
        return "meets"
    if interval[0] > limit:
        return "MISSES"
    return "cannot tell from this run (the interval spans the target)"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def print_summary(runs: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nOpen loop {args.rate:g} req/s, {args.moves} alias moves. Latency (ms) of successful"
        f" requests from their scheduled start; late = sent > {args.late_ms:g} ms after schedule"
    )
    rows = []
    for name, run in runs.items():
        s = run["summary"]
        rows.append(
            [
                name,
                s["total"],
                s["failed"],
                s["late"],
                s["steady"]["p50"],
                s["steady"]["p99"],
                s["near_move"]["p50"],
                s["near_move"]["p99"],
                s["swap_span"]["p50"],
                s["swap_span"]["p99"],
                s["swap_span"]["max"],
                _ratio(s["swap_span"]["p99"], s["steady"]["p99"]),
                _interval(s.get("swap_steady_p99_interval")),
            ]
        )
    print(
        table(
            [
                "system",
                "requests",
                "failed",
                "late",
                "steady p50",
                "steady p99",
                "±5s move p50",
                "±5s move p99",
                "swap p50",
                "swap p99",
                "swap max",
                "swap/steady p99",
                "90% interval",
            ],
            rows,
        )
    )
    print(
        "  ±5s move: scheduled within 5 s of an alias move; swap: from 5 s before a move to 5 s"
        " after it took effect; steady: everything else"
    )
    for name, run in runs.items():
        s = run["summary"]
        if s["failure_kinds"]:
            kinds = ", ".join(f"{n}× {k}" for k, n in s["failure_kinds"].items())
            print(f"  {name} failures: {kinds}")
    for name, run in runs.items():
        s = run["summary"]
        took = "switched" if name.startswith("ours") else "serving again"
        print(f"\n{name}: per alias move (seconds after the move)")
        print(
            table(
                [
                    "to",
                    "moved at",
                    took,
                    "first new",
                    "100% new",
                    "failed",
                    "failures span",
                    "longest no-success",
                ],
                [
                    [
                        f"v{m['to']}",
                        m["moved_s"],
                        m.get("switched_s", m["done_s"]) - m["moved_s"],
                        m["first_new_after_s"],
                        m["all_new_after_s"],
                        m["failed"],
                        m["failures_span_s"],
                        m["longest_gap_without_success_s"],
                    ]
                    for m in s["moves"]
                ],
            )
        )
    for name, run in runs.items():
        if not name.startswith("ours") or not run.get("swaps"):
            continue
        options = " ".join(run.get("options", [])) or "defaults"
        peak = run.get("peak_worker_rss_bytes", 0) / 2**20
        print(f"\n{name} ({options}; workers' peak RSS {peak:.0f} MiB): swap steps (seconds)")
        swaps = run["swaps"]
        names = list(dict.fromkeys(k for h in swaps for k in h["steps"]))
        print(
            table(
                ["from", "to", "result", "total", *names],
                [
                    [h["from"], h["to"], h["result"], h["seconds"]]
                    + [h["steps"].get(k) for k in names]
                    for h in swaps
                ],
            )
        )
    print("\ntarget: 0 failed requests")
    for name, run in runs.items():
        failed = run["summary"]["failed"]
        verdict = "meets" if failed <= TARGETS["failed"] else "MISSES"
        print(f"  {name:8} failed {failed} of {run['summary']['total']}: {verdict}")
    ours = [name for name in runs if name.startswith("ours")]
    if ours:
        print(f"target: ours p99 around swaps <= {TARGETS['swap_steady_p99']:g}x steady p99")
    for name in ours:
        s = runs[name]["summary"]
        ratio = _ratio(s["swap_span"]["p99"], s["steady"]["p99"])
        interval = s.get("swap_steady_p99_interval")
        shown = "-" if ratio is None else f"{ratio:.2f}x"
        print(f"  {name:12} {shown}, 90% interval {_interval(interval)}: {_verdict(interval)}")


def serialisable(run: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in run.items() if k not in ("records", "moves")}
    data["moves"] = [
        {"to": m.target, "moved_s": m.moved, "done_s": m.done, **m.marks} for m in run["moves"]
    ]
    data["records"] = [
        {
            "i": r[0],
            "scheduled_s": round(r[SCHEDULED], 6),
            "send_lag_ms": round(r[SEND_LAG] * 1000, 3),
            "latency_ms": round(r[LATENCY] * 1000, 3),
            "status": r[STATUS],
            "version": r[VERSION],
            "error": r[ERROR],
        }
        for r in run["records"]
    ]
    return data


# -- main ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--moves", type=int, default=5, help="alias moves, alternating")
    parser.add_argument("--lead", type=float, default=10.0, help="steady seconds before 1st move")
    parser.add_argument("--pause", type=float, default=15.0, help="seconds after each swap")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="sidecar registry poll")
    parser.add_argument("--max-outstanding", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--late-ms", type=float, default=10.0)
    parser.add_argument("--swap-timeout", type=float, default=240.0)
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="hard cap on the load")
    parser.add_argument("--only", choices=["ours", "restart"], default=None)
    parser.add_argument(
        "--ours-variant",
        action="append",
        default=[],
        metavar="NAME=OPTIONS",
        help="also run the sidecar with these extra options, as ours-NAME (e.g. "
        "before='--no-direct-start --no-spare', memory='--swap-policy memory')",
    )
    parser.add_argument(
        "--summarise",
        metavar="JSON",
        help="print the summary of a saved run (benchmarks/out/swap_under_load-*.json) again",
    )
    return parser.parse_args()


def loaded(path: str) -> tuple[dict[str, dict[str, Any]], argparse.Namespace]:
    """A saved run, as `main` had it before printing: records, moves and a fresh analysis."""
    data = json.loads(Path(path).read_text())
    config = argparse.Namespace(**data["config"])
    runs: dict[str, dict[str, Any]] = {}
    for name, saved in data["runs"].items():
        records = [
            [
                r["i"],
                r["scheduled_s"],
                r["send_lag_ms"] / 1000,
                r["latency_ms"] / 1000,
                r["status"],
                r["version"],
                r["error"],
            ]
            for r in saved["records"]
        ]
        moves = [
            Move(
                m["to"],
                m["moved_s"],
                m["done_s"],
                {k: v for k, v in m.items() if k not in ("to", "moved_s", "done_s")},
            )
            for m in saved["moves"]
        ]
        runs[name] = {
            **saved,
            "records": records,
            "moves": moves,
            "summary": analyse(records, moves, config.late_ms),
        }
    return runs, config


def main() -> int:
    args = parse_args()
    if args.summarise:
        runs, config = loaded(args.summarise)
        print_summary(runs, config)
        return 0
    from mlflow_bluegreen.worker.sandbox import EmbeddedRegistry, set_alias

    began = time.monotonic()
    info = machine()
    variants = dict(v.partition("=")[::2] for v in args.ours_variant)
    systems = [args.only] if args.only else ["ours", *(f"ours-{n}" for n in variants), "restart"]
    runs: dict[str, dict[str, Any]] = {}
    print("• starting an embedded MLflow registry and registering two iris versions …", flush=True)
    with EmbeddedRegistry() as registry:
        versions_ = register_iris_versions(registry.uri, "iris", (1.0, 0.05))
        for system in systems:
            set_alias(registry.uri, "iris", "champion", versions_[0])
            print(f"• {system}: {args.rate:g} req/s, {args.moves} alias moves …", flush=True)
            if system.startswith("ours"):
                options = tuple(shlex.split(variants.get(system.removeprefix("ours-"), "")))
                run = run_ours(args, registry.uri, versions_, options)
            else:
                run = run_restart(args, registry.uri, versions_)
            run["summary"] = analyse(run["records"], run["moves"], args.late_ms)
            runs[system] = run
    stem = out_path("swap_under_load", "")
    png = stem.with_suffix(".png")
    title = (
        f"open loop {args.rate:g} req/s, alias moved {args.moves}× — {info['date']}, "
        f"{info['cpus']} cores"
    )
    plotted = plot(runs, png, title)
    print(f"\n=== swap under load — {info['date']}, {info['cpus']} cores (shared machine) ===")
    print_summary(runs, args)
    data = {
        "machine": info,
        "versions": versions(),
        "config": vars(args),
        "targets": TARGETS,
        "model_versions": versions_,
        "runs": {name: serialisable(run) for name, run in runs.items()},
        "seconds": round(time.monotonic() - began, 1),
    }
    json_path = stem.with_suffix(".json")
    write_json(json_path, data)
    print(f"\nrecords: {json_path}")
    if plotted:
        print(f"plot:    {png}")
    print(f"({data['seconds']:.0f} s)")
    # Exits 1 only when our sidecar failed a request: the restart baseline is expected to fail.
    ours = runs.get("ours")
    return 1 if ours and ours["summary"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
