"""Where the proxy spends its CPU: py-spy on the standalone proxy under wrk load.

    .venv/bin/python benchmarks/profile_proxy.py [--duration 20] [--connections 16]
                                                 [--pythonpath DIR]

The same set-up as the ceiling part of proxy_overhead.py: nginx answering a static
`{"predictions": [0]}` stands in for an infinitely fast model, so every sample is the proxy's own
work. The proxy runs alone on core 0; wrk and the static upstream share core 1. `--pythonpath`
profiles a copy of the package (DIR holding mlflow_bluegreen/proxy and .../worker) instead of the
installed one, to try a change without touching the source tree.

Prints the top functions by self and by inclusive time, and writes py-spy's raw collapsed
stacks (load them into speedscope.app or flamegraph.pl) to benchmarks/out/.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import (
    CpuWatch,
    Nginx,
    ensure_tools,
    machine,
    out_path,
    run_wrk,
    table,
    write_wrk_script,
)
from proxy_overhead import Layout, Standalone, check

from mlflow_bluegreen.proxy.loadgen import IRIS_PAYLOAD
from mlflow_bluegreen.worker.spec import free_port

_LINE = re.compile(r":\d+\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def frame_name(frame: str) -> str:
    """`handler (aiohttp/web_protocol.py:512)` -> `handler (aiohttp/web_protocol.py)`: one row
    per function, whatever line it was on."""
    name = _LINE.sub(")", frame.strip())
    return re.sub(r"\(/.*?/(site-packages|lib/python3\.\d+|pvar/[^/]+|main)/", "(", name)


def aggregate(collapsed: Path) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for name in set(frames):  # a recursive function counts once per sample
            inclusive[name] += count
    return total, own, inclusive


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--pythonpath", help="profile the package copy in this directory")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    ensure_tools()
    spy = py_spy()
    layout = Layout.build("shared")
    proxy_cpus, client_cpus = layout.worker, layout.client
    raw = out_path("profile_proxy", ".txt")
    with (
        tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp,
        Nginx.static(free_port(), cpus=client_cpus) as static,
    ):
        script = write_wrk_script(Path(tmp), IRIS_PAYLOAD)
        proxy = Standalone(static.url, proxy_cpus, pythonpath=args.pythonpath)
        try:
            url = f"{proxy.url}/invocations"
            check(url)
            run_wrk(url, script, connections=args.connections, duration=2, cpus=client_cpus)
            # py-spy samples without pausing the proxy (--nonblocking): the profile costs the
            # proxy almost nothing, at the price of the odd torn stack.
            command = [
                spy, "record", "--pid", str(proxy.process.pid),
                "--rate", str(args.rate), "--duration", str(round(args.duration) - 2),
                "--format", "raw", "--nonblocking", "--output", str(raw),
            ]  # fmt: skip
            recorder = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            watch = CpuWatch({"proxy": proxy.pids()})
            time.sleep(0.5)  # py-spy attaches
            result = run_wrk(
                url,
                script,
                connections=args.connections,
                duration=args.duration - 1,
                cpus=client_cpus,
            )
            cpu = watch.stop()
            _, errors = recorder.communicate(timeout=60)
            if recorder.returncode != 0 or not raw.exists():
                sys.exit(f"py-spy failed ({recorder.returncode}):\n{errors}")
        finally:
            proxy.stop()
    total, own, inclusive = aggregate(raw)
    info = machine()
    print(f"\n=== proxy profile — {info['date']}, {info['cpus']} cores (shared machine) ===")
    print(
        f"standalone proxy{' from ' + args.pythonpath if args.pythonpath else ''} -> static nginx;"
        f" wrk c={args.connections}: {result.rps:,.0f} req/s (py-spy attached),"
        f" p50 {result.latency_ms['p50']:.2f} ms; proxy CPU {cpu['proxy_pct']:.0f}% of a core,"
        f" {cpu['proxy_pct'] / 100 / result.rps * 1e6:.0f} µs/request; {total} samples"
    )
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"\ntop {args.top} by {title} time (% of samples)")
        print(
            table(
                ["%", "function (file)"],
                [[100 * n / total, name] for name, n in counter.most_common(args.top)],
            )
        )
    print(f"\ncollapsed stacks: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
