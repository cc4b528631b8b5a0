"""What the proxy costs: the same real worker reached directly, through nginx, and through us.

    .venv/bin/python benchmarks/proxy_overhead.py [--connections 1,8,32] [--duration 5] ...

Part 1, end to end: one real `mlflow models serve` worker (the iris model `models:/iris/1` from
an embedded registry), reached three ways by wrk POSTing the iris payload:
  direct   wrk -> worker
  nginx    wrk -> nginx (keep-alive upstream, HTTP/1.1, 1 worker process) -> worker
  ours     wrk -> `mlflow-bluegreen serve -m models:/iris/1` -> worker
The worker is the one our sidecar started, so all three ways measure the very same process.

Part 2, the proxy's own ceiling: nginx answering a static `{"predictions": [0]}` stands in for an
infinitely fast model, and we compare nginx-as-proxy with our standalone proxy in front of it.

Ways run interleaved, in rotating order, `--rounds` times; ratios are per round (paired), and
the median is reported. CPU is pinned (see --layout) and every run records each core's busy
time and the CPU used by processes that are not ours, because the machine may be shared.
Results: a table on stdout and JSON in benchmarks/out/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    CpuWatch,
    Nginx,
    WrkResult,
    descendants,
    ensure_tools,
    machine,
    median,
    out_path,
    pin_tree,
    register_iris_versions,
    run_wrk,
    stop_process,
    table,
    versions,
    wait_port,
    write_json,
    write_wrk_script,
)

from mlflow_bluegreen.proxy.loadgen import IRIS_PAYLOAD

TARGETS = {
    "e2e_rps_vs_direct": 0.95,  # ours / direct, at least
    "e2e_p50_vs_direct": 1.05,  # ours / direct, at most
    "ceiling_rps_vs_nginx": 0.35,  # ours / nginx, at least
}

LAYOUTS = {
    "shared": "worker and proxy share core 0 (as in a pod); wrk alone on core 1",
    "split": "worker alone on core 0; proxy and wrk share core 1",
    "none": "no pinning: the kernel schedules everything on both cores",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Layout:
    name: str
    worker: set[int] | None
    proxy: set[int] | None
    client: set[int] | None

    @classmethod
    def build(cls, name: str) -> Layout:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2 or name == "none":
            return cls("none", None, None, None)
        server, client = {cpus[0]}, {cpus[1]}
        if name == "shared":
            return cls(name, server, server, client)
        return cls(name, server, client, client)

    def describe(self) -> str:
        return LAYOUTS[self.name]


STANDALONE = Path(__file__).with_name("standalone_proxy.py")
# Where the standalone proxy was in the package before it moved here: how older copies run it.
OLD_STANDALONE = ("mlflow_bluegreen", "proxy", "standalone.py")


def standalone_command(pythonpath: str | None) -> list[str]:
    """The standalone proxy of this tree, or of the package copy in `pythonpath`: its own
    module when that copy still has one (older commits), else this tree's script run on it."""
    if pythonpath and Path(pythonpath, *OLD_STANDALONE).is_file():
        return [sys.executable, "-m", "mlflow_bluegreen.proxy.standalone"]
    return [sys.executable, str(STANDALONE)]


class Standalone:
    """benchmarks/standalone_proxy.py, optionally on another copy of the package."""

    def __init__(self, upstream: str, cpus: set[int] | None, pythonpath: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # aiohttp's warnings at exit (unclosed sessions) are not ours to fix here: to a log.
        self.log_path = Path(tempfile.mkstemp(prefix="bench-standalone-", suffix=".log")[1])
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")])
        command = [
            *standalone_command(pythonpath),
            "--upstream",
            upstream,
            "--port",
            str(self.port),
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_port(self.port, 30, self.process)
        except (RuntimeError, TimeoutError) as error:
            log_text = self.log_path.read_text(errors="replace")
            raise RuntimeError(f"standalone proxy: {error}\n{log_text}") from error
        pin_tree(self.process.pid, cpus)

    def pids(self) -> list[int]:
        return [self.process.pid]

    def stop(self) -> None:
        stop_process(self.process)
        self.log_path.unlink(missing_ok=True)


def check(url: str, want_version: str | None = None) -> None:
    """One POST; fail loudly if the target does not answer like a model server."""
    request = urllib.request.Request(
        url, data=IRIS_PAYLOAD, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
        version = response.headers.get("X-Model-Version")
    if "predictions" not in body:
        raise RuntimeError(f"{url} answered {body}")
    if want_version is not None and version != want_version:
        raise RuntimeError(f"{url} answered X-Model-Version {version!r}, not {want_version!r}")


@dataclass
class Way:
    name: str
    url: str
    roles: Callable[[], dict[str, list[int]]]
    """CPU accounting groups (e.g. worker, proxy) -> pids, read at the start of each run."""


def measure(
    *,
    ways: list[Way],
    connections: list[int],
    args: argparse.Namespace,
    script: Path,
    client_cpus: set[int] | None,
    part: str,
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for conns in connections:
        for round_ in range(args.rounds):
            shift = round_ % len(ways)
            for way in ways[shift:] + ways[:shift]:
                if args.warmup > 0:
                    run_wrk(
                        way.url, script, connections=conns, duration=args.warmup, cpus=client_cpus
                    )
                watch = CpuWatch(way.roles())
                result: WrkResult = run_wrk(
                    way.url, script, connections=conns, duration=args.duration, cpus=client_cpus
                )
                cpu = watch.stop({"wrk": result.wrk_cpu_seconds})
                run = {
                    "part": part,
                    "way": way.name,
                    "connections": conns,
                    "round": round_,
                    **result.as_dict(),
                    "cpu": cpu,
                }
                runs.append(run)
                print(
                    f"  {part:8} c={conns:<3} round {round_ + 1}/{args.rounds} {way.name:14}"
                    f" {result.rps:9.1f} req/s  p50 {result.latency_ms['p50']:7.3f} ms"
                    f"  p99 {result.latency_ms['p99']:7.3f} ms  errors {result.errors}"
                    f"  cpu%: {_cpu_text(cpu)}",
                    flush=True,
                )
    return runs


def _cpu_text(cpu: dict[str, float]) -> str:
    return " ".join(f"{k.removesuffix('_pct')}={v:.0f}" for k, v in cpu.items())


def summarize(runs: list[dict[str, Any]], baseline: str, others: list[str]) -> list[dict[str, Any]]:
    """Per connection count and way: medians over rounds; per round ratios to `baseline`."""
    rows: list[dict[str, Any]] = []
    for conns in sorted({r["connections"] for r in runs}):
        at = [r for r in runs if r["connections"] == conns]
        names = list(dict.fromkeys(r["way"] for r in at))
        for name in names:
            mine = [r for r in at if r["way"] == name]
            row: dict[str, Any] = {
                "connections": conns,
                "way": name,
                "rps": median([r["rps"] for r in mine]),
                "p50_ms": median([r["latency_ms"]["p50"] for r in mine]),
                "p99_ms": median([r["latency_ms"]["p99"] for r in mine]),
                "errors": sum(r["errors"] for r in mine),
                "rounds": len(mine),
                "cpu": {k: median([r["cpu"][k] for r in mine]) for k in mine[0]["cpu"]},
            }
            # CPU per request is robust to a slow client or a noisy neighbour stealing time.
            for role in ("proxy", "worker"):
                if f"{role}_pct" in mine[0]["cpu"]:
                    row[f"{role}_us_per_req"] = median(
                        [r["cpu"][f"{role}_pct"] / 100 / r["rps"] * 1e6 for r in mine]
                    )
            for reference in [baseline, *others]:
                if reference == name:
                    continue
                ref = {r["round"]: r for r in at if r["way"] == reference}
                ratios: dict[str, list[float]] = {"rps": [], "p50": [], "p99": []}
                for r in mine:
                    other = ref.get(r["round"])
                    if other is None:
                        continue
                    ratios["rps"].append(r["rps"] / other["rps"])
                    for q in ("p50", "p99"):
                        ratios[q].append(r["latency_ms"][q] / other["latency_ms"][q])
                if ratios["rps"]:
                    row[f"vs_{reference}"] = {
                        k: {"median": median(v), "min": min(v), "max": max(v)}
                        for k, v in ratios.items()
                    }
            rows.append(row)
    return rows


def _ratio(row: dict[str, Any], reference: str, key: str) -> float | None:
    found = row.get(f"vs_{reference}")
    return found[key]["median"] if found else None


def _range(row: dict[str, Any], reference: str, key: str) -> str:
    found = row.get(f"vs_{reference}")
    if not found or len({found[key]["min"], found[key]["max"]}) == 1:
        return ""
    return f"{found[key]['min']:.2f}-{found[key]['max']:.2f}"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("meets" if ok else "MISSES")


def print_e2e(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    print("\nEnd to end (median over rounds; cpu in % of one core)")
    print(
        table(
            [
                "conns",
                "way",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "worker%",
                "proxy%",
                "wrk%",
                "others%",
                "worker µs/req",
                "proxy µs/req",
            ],
            [
                [
                    r["connections"],
                    r["way"],
                    r["rps"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["errors"],
                    r["cpu"].get("worker_pct"),
                    r["cpu"].get("proxy_pct"),
                    r["cpu"].get("wrk_pct"),
                    r["cpu"].get("others_pct"),
                    r.get("worker_us_per_req"),
                    r.get("proxy_us_per_req"),
                ]
                for r in summary
            ],
        )
    )
    checks: list[dict[str, Any]] = []
    rows = []
    for r in summary:
        if r["way"] != "ours":
            continue
        rps, p50 = _ratio(r, "direct", "rps"), _ratio(r, "direct", "p50")
        model = {way: cpu_model(summary, r["connections"], way) for way in ("ours", "nginx")}
        ok_rps = None if rps is None else rps >= TARGETS["e2e_rps_vs_direct"]
        ok_p50 = None if p50 is None else p50 <= TARGETS["e2e_p50_vs_direct"]
        checks.append(
            {"connections": r["connections"], "rps_vs_direct": rps, "rps_ok": ok_rps,
             "p50_vs_direct": p50, "p50_ok": ok_p50, "cpu_model_rps_vs_direct": model}
        )  # fmt: skip
        rows.append(
            [r["connections"], rps, _range(r, "direct", "rps"), verdict(ok_rps),
             p50, _range(r, "direct", "p50"), verdict(ok_p50),
             _ratio(r, "direct", "p99"), _ratio(r, "nginx", "rps"), _ratio(r, "nginx", "p50"),
             _ratio(r, "nginx", "p99"), model["ours"], model["nginx"]]
        )  # fmt: skip
    print(
        f"\nOurs relative to the others (median of per-round ratios, range over rounds)"
        f"\ntargets: req/s >= {TARGETS['e2e_rps_vs_direct']}x direct, "
        f"p50 <= {TARGETS['e2e_p50_vs_direct']}x direct"
    )
    print(
        table(
            [
                "conns",
                "rps/direct",
                "range",
                "target",
                "p50/direct",
                "range",
                "target",
                "p99/direct",
                "rps/nginx",
                "p50/nginx",
                "p99/nginx",
                "cpu model ours",
                "cpu model nginx",
            ],
            rows,
        )
    )
    print(
        "cpu model: direct worker µs/req ÷ (worker + proxy µs/req through the proxy), from each"
        " process's own CPU time: the req/s ratio to expect when worker and proxy saturate one"
        " core; less sensitive to a neighbour taking CPU than req/s, though not immune."
    )
    return checks


def cpu_model(summary: list[dict[str, Any]], connections: int, way: str) -> float | None:
    at = {r["way"]: r for r in summary if r["connections"] == connections}
    direct, through = at.get("direct"), at.get(way)
    if not direct or not through or "proxy_us_per_req" not in through:
        return None
    return float(
        direct["worker_us_per_req"] / (through["worker_us_per_req"] + through["proxy_us_per_req"])
    )


def print_ceiling(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    print("\nProxy ceiling: static nginx upstream (median over rounds; cpu in % of one core)")
    print(
        table(
            [
                "conns",
                "way",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "proxy%",
                "upstream%",
                "wrk%",
                "others%",
                "proxy µs/req",
                "rps/nginx",
                "range",
                "target",
                "rps/ours",
            ],
            [
                [
                    r["connections"],
                    r["way"],
                    r["rps"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["errors"],
                    r["cpu"].get("proxy_pct"),
                    r["cpu"].get("upstream_pct"),
                    r["cpu"].get("wrk_pct"),
                    r["cpu"].get("others_pct"),
                    r.get("proxy_us_per_req"),
                    _ratio(r, "nginx", "rps"),
                    _range(r, "nginx", "rps"),
                    verdict(
                        None
                        if _ratio(r, "nginx", "rps") is None
                        else _ratio(r, "nginx", "rps") >= TARGETS["ceiling_rps_vs_nginx"]
                    ),
                    _ratio(r, "ours", "rps"),
                ]
                for r in summary
            ],
        )
    )
    print(f"target: ours >= {TARGETS['ceiling_rps_vs_nginx']}x nginx req/s")
    return [
        {
            "connections": r["connections"],
            "way": r["way"],
            "rps_vs_nginx": _ratio(r, "nginx", "rps"),
            "ok": _ratio(r, "nginx", "rps") >= TARGETS["ceiling_rps_vs_nginx"],
        }
        for r in summary
        if r["way"] != "nginx" and _ratio(r, "nginx", "rps") is not None
    ]


def end_to_end(args: argparse.Namespace, layout: Layout, script: Path) -> list[dict[str, Any]]:
    from mlflow_bluegreen.proxy.demo import SidecarProcess
    from mlflow_bluegreen.worker.sandbox import EmbeddedRegistry

    with contextlib.ExitStack() as stack:
        print("• starting an embedded MLflow registry and registering the iris model …", flush=True)
        registry = stack.enter_context(EmbeddedRegistry())
        [version] = register_iris_versions(registry.uri, "iris", (1.0,))
        model_uri = f"models:/iris/{version}"
        print(f"• starting mlflow-bluegreen serve -m {model_uri} …", flush=True)
        sidecar = stack.enter_context(
            SidecarProcess(
                model_uri, tracking_uri=registry.uri, extra_args=("--log-level", "WARNING")
            )
        )
        sidecar.wait_active(version, timeout=240)
        active = sidecar.status()["active"]
        worker_pid, worker_port = active["pid"], active["port"]
        worker_url = f"http://127.0.0.1:{worker_port}"
        sidecar_pid = sidecar.process.pid
        pin_tree(sidecar_pid, layout.proxy)
        pin_tree(worker_pid, layout.worker)  # after the sidecar: the worker is its child
        nginx = stack.enter_context(
            Nginx.proxy(f"127.0.0.1:{worker_port}", free_port(), cpus=layout.proxy)
        )

        def worker_pids() -> list[int]:
            return descendants(worker_pid)

        ways = [
            Way("direct", f"{worker_url}/invocations", lambda: {"worker": worker_pids()}),
            Way(
                "nginx",
                f"{nginx.url}/invocations",
                lambda: {"worker": worker_pids(), "proxy": nginx.pids()},
            ),
            Way(
                "ours",
                f"{sidecar.url}/invocations",
                lambda: {"worker": worker_pids(), "proxy": [sidecar_pid]},
            ),
        ]
        check(ways[0].url)
        check(ways[1].url)
        check(ways[2].url, want_version=version)
        print(
            f"  worker pid {worker_pid} on {worker_url}; nginx {nginx.url}; ours {sidecar.url}",
            flush=True,
        )
        return measure(
            ways=ways,
            connections=args.connections,
            args=args,
            script=script,
            client_cpus=layout.client,
            part="e2e",
        )


def ceiling(args: argparse.Namespace, layout: Layout, script: Path) -> list[dict[str, Any]]:
    # The proxy under test gets a core of its own; wrk and the static upstream share the other.
    proxy_cpus = layout.worker
    client_cpus = layout.client
    with contextlib.ExitStack() as stack:
        static = stack.enter_context(Nginx.static(free_port(), cpus=client_cpus))
        nginx = stack.enter_context(
            Nginx.proxy(f"127.0.0.1:{static.port}", free_port(), cpus=proxy_cpus)
        )
        ours = Standalone(static.url, proxy_cpus)
        stack.callback(ours.stop)
        ways = [
            Way("nginx", f"{nginx.url}/invocations", lambda: _roles(nginx.pids(), static)),
            Way("ours", f"{ours.url}/invocations", lambda: _roles(ours.pids(), static)),
        ]
        for name, path in args.variant:
            variant = Standalone(static.url, proxy_cpus, pythonpath=path)
            stack.callback(variant.stop)
            ways.append(
                Way(
                    f"ours:{name}",
                    f"{variant.url}/invocations",
                    lambda v=variant: _roles(v.pids(), static),  # type: ignore[misc]
                )
            )
        for way in ways:
            check(way.url)
        return measure(
            ways=ways,
            connections=args.ceiling_connections,
            args=args,
            script=script,
            client_cpus=client_cpus,
            part="ceiling",
        )


def _roles(proxy: list[int], static: Nginx) -> dict[str, list[int]]:
    return {"proxy": proxy, "upstream": static.pids()}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _variant(text: str) -> tuple[str, str]:
    name, _, path = text.partition("=")
    if not name or not path or not Path(path).is_dir():
        raise argparse.ArgumentTypeError("expected NAME=DIR with DIR holding mlflow_bluegreen/")
    return name, str(Path(path).resolve())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=_ints, default=[1, 8, 32], help="end to end")
    parser.add_argument("--ceiling-connections", type=_ints, default=[1, 16])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--layout", choices=list(LAYOUTS), default="shared")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-ceiling", action="store_true")
    parser.add_argument(
        "--variant",
        type=_variant,
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also measure a standalone proxy imported from DIR (a copy of the package with "
        "changes) in the ceiling test",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    ensure_tools()
    layout = Layout.build(args.layout)
    began = time.monotonic()
    runs_total = (
        (0 if args.skip_e2e else 3 * len(args.connections))
        + (0 if args.skip_ceiling else (2 + len(args.variant)) * len(args.ceiling_connections))
    ) * args.rounds
    print(
        f"proxy_overhead: {runs_total} runs of {args.duration:g} s (+{args.warmup:g} s warm-up)"
        f" ≈ {runs_total * (args.duration + args.warmup + 0.5) / 60:.1f} min of load, plus setup"
    )
    print(f"pinning (e2e): {layout.describe()}")
    if layout.name != "none":
        print("pinning (ceiling): proxy under test alone on core 0; wrk and the static upstream"
              " share core 1")  # fmt: skip
    print("nginx: worker_processes 1, access_log off, upstream keepalive 128, HTTP/1.1")
    result: dict[str, Any] = {
        "machine": machine(),
        "versions": versions(),
        "config": {
            **{k: v for k, v in vars(args).items() if k != "variant"},
            "variant": dict(args.variant),
            "layout_e2e": layout.describe(),
            "layout_ceiling": "proxy alone on core 0; wrk + static upstream on core 1"
            if layout.name != "none"
            else "none",
            "nginx": "worker_processes 1; access_log off; upstream keepalive 128; "
            'proxy_http_version 1.1; proxy_set_header Connection ""',
            "wrk": "1 thread, Lua script POSTs IRIS_PAYLOAD as application/json",
        },
        "targets": TARGETS,
    }
    path = out_path("proxy_overhead", ".json")
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = write_wrk_script(Path(tmp), IRIS_PAYLOAD)
        if not args.skip_e2e:
            result["e2e_runs"] = end_to_end(args, layout, script)
            result["e2e"] = summarize(result["e2e_runs"], "direct", ["nginx"])
        if not args.skip_ceiling:
            print("• proxy ceiling: nginx static upstream …", flush=True)
            result["ceiling_runs"] = ceiling(args, layout, script)
            result["ceiling"] = summarize(result["ceiling_runs"], "nginx", ["ours"])
    print(f"\n=== proxy overhead — {result['machine']['date']}, {os.cpu_count()} cores ===")
    print(f"pinning (e2e): {layout.describe()}")
    if "e2e" in result:
        result["e2e_checks"] = print_e2e(result["e2e"])
    if "ceiling" in result:
        result["ceiling_checks"] = print_ceiling(result["ceiling"])
    result["seconds"] = round(time.monotonic() - began, 1)
    write_json(path, result)
    print(f"\nresults: {path} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
