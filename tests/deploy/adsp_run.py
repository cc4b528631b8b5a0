"""Running the ADSP project's `serve` command the way anaconda-project runs it, and watching what
it leaves running. Imports nothing from mlflow_bluegreen: the command is a black box here.

anaconda-project (project_commands.py) appends each HTTP option to a `unix:` command as
`" " + shlex.quote(arg)` and executes `/bin/sh -c <that line>` in the project directory; the
platform stops a deployment by signalling that process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

PROJECT_FILE = Path(__file__).resolve().parents[2] / "deploy" / "adsp" / "anaconda-project.yml"

IRIS_PAYLOAD = json.dumps(
    {
        "dataframe_split": {
            "columns": [
                "sepal length (cm)",
                "sepal width (cm)",
                "petal length (cm)",
                "petal width (cm)",
            ],
            "data": [[5.1, 3.5, 1.4, 0.2]],
        }
    }
).encode()


def load_project(path: Path = PROJECT_FILE) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def command_line(unix: str, extra_args: Sequence[str]) -> str:
    """What anaconda-project hands to /bin/sh -c."""
    return unix + "".join(" " + shlex.quote(arg) for arg in extra_args)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_options(port: int) -> list[str]:
    """What the platform appends to a `supports_http_options` command (see test_adsp.py)."""
    return [
        "--anaconda-project-port", str(port),
        "--anaconda-project-address", "127.0.0.1",
        "--anaconda-project-host", "mlflow-abc123.adsp.example.com",
        "--anaconda-project-url-prefix", "/",
        "--anaconda-project-no-browser",
        "--anaconda-project-use-xheaders",
    ]  # fmt: skip


def save_iris_model(path: Path) -> None:
    """A small model on local disk (scenario I): no registry needed to start the command."""
    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, target = load_iris(as_frame=True, return_X_y=True)
    mlflow.sklearn.save_model(
        LogisticRegression(max_iter=500).fit(features, target),
        str(path),
        input_example=features.iloc[:2],
    )


class ProjectCommand:
    """The `serve` command started as the platform starts it, on a free port."""

    def __init__(
        self,
        unix: str,
        *,
        project_dir: Path,
        env: Mapping[str, str],
        log_path: Path,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.line = command_line(unix, http_options(self.port))
        self.log_path = log_path
        self.seen: set[tuple[int, str]] = set()
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                ["/bin/sh", "-c", self.line],
                cwd=project_dir,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own session: nothing else of ours is in it
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_scoring(self, timeout: float = 180) -> bytes:
        """Until /invocations answers 200 (a worker is up); returns the answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"exited {self.process.returncode}:\n{self.log()}"
            request = urllib.request.Request(
                f"{self.url}/invocations",
                data=IRIS_PAYLOAD,
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = bytes(response.read())
                self.seen |= descendants(self.process.pid)
                return answer
            except (urllib.error.HTTPError, OSError):
                time.sleep(0.3)
        raise AssertionError(f"no answer on {self.url} after {timeout} s:\n{self.log()}")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the process the platform started (not its group), and its exit code."""
        self.seen |= descendants(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill_leftovers(self) -> None:
        """Whatever happened in the test, nothing it started outlives it (orphans included:
        the tree is remembered from before the signal)."""
        for pid, start in self.seen | descendants(self.process.pid):
            if alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may hold spaces.
    return text.rsplit(")", 1)[1].split()


def descendants(root: int) -> set[tuple[int, str]]:
    """(pid, start time) of `root` and every process below it, whatever group or session."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is None:
            continue
        # fields[0] is the state, [1] the parent, [19] the start time (stat fields 3, 4, 22).
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        starts[int(entry.name)] = fields[19]
    found: set[tuple[int, str]] = set()
    pending = [root]
    while pending:
        pid = pending.pop()
        if pid in starts:
            found.add((pid, starts[pid]))
        pending.extend(children.get(pid, []))
    return found


def alive(pid: int, start: str) -> bool:
    """The same process (not a reused PID) still exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[19] == start and fields[0] != "Z"


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]


def project_env(
    model: Path, project_dir: Path = PROJECT_FILE.parent, path: str | None = None, **extra: str
) -> dict[str, str]:
    """The environment anaconda-project gives the command: its own (PATH with the env's bin
    first: ours, or `path`; PROJECT_DIR) plus the variables, defaults and what the deployer
    supplied."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MLFLOW_", "PYTEST_"))
    }
    for name, spec in load_project()["variables"].items():
        if spec and "default" in spec:
            env[name] = str(spec["default"])
    env.update(
        {
            "PATH": path or os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]]),
            "PROJECT_DIR": str(project_dir),
            "MLFLOW_BLUEGREEN_MODEL_URI": str(model),
            "MLFLOW_TRACKING_URI": f"file://{model.parent / 'mlruns'}",
            **extra,
        }
    )
    return env


def sigterm_leaves_nothing(command: ProjectCommand) -> None:
    """The platform's stop, and what must follow from it."""
    pid = command.process.pid
    # `exec`: the process the platform signals is the sidecar itself, not a shell above it.
    argv = cmdline(pid)
    assert any(arg.endswith("mlflow-bluegreen") for arg in argv), argv
    running = descendants(pid)
    # the sidecar and its worker's scoring server (uvicorn, started directly) at least
    assert len(running) >= 2, (running, command.log())
    began = time.monotonic()
    code = command.terminate()
    seconds = time.monotonic() - began
    assert code == 0, command.log()
    log = command.log()
    assert "finishing in-flight requests" in log, log
    assert "stopped in" in log, log
    deadline = time.monotonic() + 10
    while [p for p in running if alive(*p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [(p, cmdline(p)) for p, start in running if alive(p, start)]
    assert not left, left
    print(f"SIGTERM to exit: {seconds:.2f} s, {len(running)} processes, none left")
