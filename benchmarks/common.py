"""Shared by the benchmarks: tools, CPU pinning and accounting, nginx, wrk, and small statistics.

Everything here runs on loopback only, and every load it starts is bounded in time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
REPO = HERE.parent
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
CLK_TCK = os.sysconf("SC_CLK_TCK")

# tool -> Debian package that provides it
TOOLS = {"wrk": "wrk", "nginx": "nginx-light"}


# -- tools ---------------------------------------------------------------------------------------


def which(tool: str) -> str | None:
    return shutil.which(tool, path=SBIN_PATH)


def ensure_tools(tools: Sequence[str] = ("wrk", "nginx")) -> dict[str, str]:
    """Paths of the tools; installs missing ones with apt-get when we are root, else exits with
    the command to run."""
    missing = [t for t in tools if which(t) is None]
    if missing:
        packages = sorted({TOOLS[t] for t in missing})
        hint = f"apt-get update && apt-get install -y {' '.join(packages)}"
        if os.geteuid() == 0 and which("apt-get"):
            print(f"• {', '.join(missing)} not found; installing: {hint}", flush=True)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for command in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
                result = subprocess.run(
                    command, env=env, capture_output=True, text=True, check=False
                )
                if result.returncode != 0:
                    sys.exit(
                        f"benchmark needs {', '.join(missing)}; `{' '.join(command)}` failed "
                        f"({result.returncode}):\n{result.stderr[-2000:]}\nInstall it by hand: "
                        f"sudo {hint}"
                    )
        still = [t for t in tools if which(t) is None]
        if still:
            sys.exit(
                f"benchmark needs {', '.join(still)}, which is not installed. Run: sudo {hint}"
            )
    return {t: str(which(t)) for t in tools}


# -- machine -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu_model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpus_usable": sorted(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {name: version(name) for name in ("aiohttp", "uvloop", "mlflow")}
    for tool, flag in (("wrk", "-v"), ("nginx", "-v")):
        path = which(tool)
        if path:
            result = subprocess.run([path, flag], capture_output=True, text=True, check=False)
            text = (result.stdout + result.stderr).strip().splitlines()
            found[tool] = text[0] if text else "?"
    return found


def out_path(stem: str, suffix: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return OUT / f"{stem}-{stamp}{suffix}"


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=str))


def save_run(
    stem: str, info: dict[str, Any], config: dict[str, Any], began: float, **parts: Any
) -> Path:
    """A run's JSON in benchmarks/out/: the machine, the packages, the config, `parts`, and the
    seconds since `began` (time.monotonic()). Prints where it went."""
    path = out_path(stem, ".json")
    seconds = round(time.monotonic() - began, 1)
    write_json(
        path,
        {"machine": info, "versions": versions(), "config": config, **parts, "seconds": seconds},
    )
    print(f"results: {path}")
    return path


def register_iris_versions(registry_uri: str, name: str, strengths: Sequence[float]) -> list[str]:
    """Train and register one iris version per strength. MLflow's chatter (run links, schema
    hints) would bury the benchmark's own output: it is shown only if registering fails."""
    from mlflow_bluegreen.worker.sandbox import register_iris_version

    chatter = io.StringIO()
    # MLflow's handlers hold the real stderr, so redirecting it does not reach them.
    mlflow_log = logging.getLogger("mlflow")
    level = mlflow_log.level
    mlflow_log.setLevel(logging.WARNING)
    try:
        with (
            contextlib.redirect_stdout(chatter),
            contextlib.redirect_stderr(chatter),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            return [register_iris_version(registry_uri, name, s) for s in strengths]
    except Exception:
        print(chatter.getvalue(), file=sys.stderr)
        raise
    finally:
        mlflow_log.setLevel(level)


# -- processes: pinning and CPU accounting -------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """pid and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def pin(pids: Iterable[int], cpus: set[int] | None) -> None:
    """Every thread of every given process onto `cpus` (None: leave as it is)."""
    if not cpus:
        return
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):  # a thread that just ended
                os.sched_setaffinity(tid, cpus)


def pin_tree(pid: int, cpus: set[int] | None) -> list[int]:
    pids = descendants(pid)
    pin(pids, cpus)
    return pids


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of the processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def core_busy() -> dict[str, float]:
    """Busy seconds (not idle/iowait) per core and in total, from /proc/stat."""
    busy: dict[str, float] = {}
    with open("/proc/stat") as stat:
        for line in stat:
            if not line.startswith("cpu"):
                break
            name, *values = line.split()
            numbers = [int(v) for v in values]
            idle = numbers[3] + numbers[4]
            busy[name] = (sum(numbers[:8]) - idle) / CLK_TCK
    return busy


class CpuWatch:
    """CPU used by named groups of processes, by each core, and by everything else, over a span."""

    def __init__(self, roles: dict[str, list[int]]) -> None:
        self.roles = roles
        self._began = time.monotonic()
        self._start = {name: cpu_seconds(pids) for name, pids in roles.items()}
        self._cores = core_busy()

    def stop(self, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Percent of one core for each role, each core's busy %, and `others_pct`: CPU used by
        processes that are not ours (a noisy neighbour), in percent of one core."""
        seconds = max(time.monotonic() - self._began, 1e-9)
        used = {name: cpu_seconds(pids) - self._start[name] for name, pids in self.roles.items()}
        used.update(extra or {})
        cores = core_busy()
        result = {f"{name}_pct": 100 * value / seconds for name, value in used.items()}
        for name, value in cores.items():
            if name != "cpu":
                result[f"{name}_busy_pct"] = 100 * (value - self._cores[name]) / seconds
        total = cores["cpu"] - self._cores["cpu"]
        result["others_pct"] = max(0.0, 100 * (total - sum(used.values())) / seconds)
        return {k: round(v, 1) for k, v in result.items()}


def process_stats(pid: int) -> dict[str, int]:
    """Resident memory (KiB), open file descriptors and threads of one process, from /proc."""
    stats = {"rss_kib": 0, "threads": 0}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key == "VmRSS":
                stats["rss_kib"] = int(value.split()[0])
            elif key == "Threads":
                stats["threads"] = int(value)
    stats["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return stats


def client_connections(pid: int, port: int) -> int:
    """How many of the process's open fds are accepted connections on local `port`: these follow
    the clients' pools, not the process's own housekeeping."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed since listdir
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table_ in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table_) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                # state 01 = ESTABLISHED; the listening socket itself is not a client
                if local_port == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


def wait_port(
    port: int, timeout: float = 30.0, process: subprocess.Popen[Any] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def stop_process(
    process: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10
) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_model_server(
    model_uri: str, port: int, registry_uri: str, output: Any = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """A plain `mlflow models serve`, with the command and environment our sidecar gives its
    workers, in a process group of its own (kill_group stops its uvicorn with it)."""
    from mlflow_bluegreen.worker.spec import WorkerSpec

    spec = WorkerSpec(base_env={**os.environ, "MLFLOW_TRACKING_URI": registry_uri}, direct=False)
    return subprocess.Popen(
        spec.command(model_uri, port),
        env=spec.environment(),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_ping(port: int, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/ping"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited with {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"mlflow models serve not ready on {port} after {timeout} s")


# -- nginx ---------------------------------------------------------------------------------------

NGINX_MAIN = """\
worker_processes {workers};
daemon off;
master_process on;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
{body}
}}
"""

NGINX_PROXY = """\
    upstream backend {{
        server {upstream};
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""

NGINX_STATIC = """\
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{{"predictions": [0]}}';
        }}
    }}
"""


@dataclass
class Nginx:
    """An nginx of our own on loopback: generated config in a temp dir, foreground master."""

    body: str
    port: int
    workers: int = 1
    cpus: set[int] | None = None
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-nginx-")))
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def proxy(cls, upstream: str, port: int, **kwargs: Any) -> Nginx:
        return cls(NGINX_PROXY.format(upstream=upstream, port=port), port, **kwargs)

    @classmethod
    def static(cls, port: int, **kwargs: Any) -> Nginx:
        return cls(NGINX_STATIC.format(port=port), port, **kwargs)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> str:
        return NGINX_MAIN.format(workers=self.workers, root=self.root, body=self.body)

    def start(self) -> Nginx:
        self.root.chmod(0o755)  # nginx's workers drop to `nobody` when the master runs as root
        conf = self.root / "nginx.conf"
        conf.write_text(self.config)
        binary = str(which("nginx"))
        command = [
            binary,
            "-p",
            str(self.root),
            "-c",
            str(conf),
            "-e",
            str(self.root / "error.log"),
        ]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"nginx config rejected:\n{check.stderr}\n{self.config}")
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        wait_port(self.port, 10, self.process)
        time.sleep(0.1)  # let the master fork its workers
        pin_tree(self.process.pid, self.cpus)
        return self

    def pids(self) -> list[int]:
        assert self.process is not None
        return descendants(self.process.pid)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGQUIT)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# -- wrk -----------------------------------------------------------------------------------------

WRK_SCRIPT = """\
-- POST the same JSON body on every request; print a JSON summary at the end.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK-JSON {{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {{"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}, ' ..
    '"latency_us": {{"min": %.1f, "mean": %.1f, "stdev": %.1f, "max": %.1f, ' ..
    '"p50": %.1f, "p75": %.1f, "p90": %.1f, "p99": %.1f, "p99.9": %.1f}}}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


def write_wrk_script(directory: Path, body: bytes) -> Path:
    text = body.decode()
    if "]==]" in text:
        raise ValueError("payload cannot be embedded in a Lua long string")
    path = directory / "post.lua"
    path.write_text(WRK_SCRIPT.format(body=text))
    return path


@dataclass
class WrkResult:
    rps: float
    requests: int
    errors: int
    latency_ms: dict[str, float]
    error_kinds: dict[str, int]
    wrk_cpu_seconds: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "rps": round(self.rps, 1),
            "requests": self.requests,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "latency_ms": self.latency_ms,
            "wrk_cpu_seconds": round(self.wrk_cpu_seconds, 2),
            "seconds": round(self.seconds, 2),
        }


def run_wrk(
    url: str,
    script: Path,
    *,
    connections: int,
    duration: float,
    cpus: set[int] | None = None,
    threads: int = 1,
    timeout_s: int = 10,
) -> WrkResult:
    """One wrk run, bounded by `duration` (wrk's own -d plus a hard kill after duration + 30 s)."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"benchmarks only target loopback, not {url}")
    command = [
        str(which("wrk")),
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(script),
        url,
    ]
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,  # noqa: PLW1509
        )
        deadline = time.monotonic() + duration + 30
        rusage = None
        while rusage is None:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                rusage = usage
            elif time.monotonic() > deadline:
                process.kill()
                _pid, status, rusage = os.wait4(process.pid, 0)
                process.returncode = os.waitstatus_to_exitcode(status)
            else:
                time.sleep(0.05)
        output.seek(0)
        text = output.read().decode(errors="replace")
    marker = [line for line in text.splitlines() if line.startswith("WRK-JSON ")]
    if process.returncode != 0 or not marker:
        raise RuntimeError(f"wrk failed ({process.returncode}): {' '.join(command)}\n{text}")
    data = json.loads(marker[-1].removeprefix("WRK-JSON "))
    seconds = data["duration_us"] / 1e6
    kinds = {k: v for k, v in data["errors"].items() if v}
    return WrkResult(
        rps=data["requests"] / seconds,
        requests=data["requests"],
        errors=sum(kinds.values()),
        latency_ms={k: round(v / 1000, 3) for k, v in data["latency_us"].items()},
        error_kinds=kinds,
        wrk_cpu_seconds=rusage.ru_utime + rusage.ru_stime,
        seconds=seconds,
    )


# -- statistics ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    value = percentile(values, 50)
    assert value is not None
    return value


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table, right-aligned numbers."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(c.rjust(w) if n else c.ljust(w) for c, w in zip(row, widths, strict=True))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)
