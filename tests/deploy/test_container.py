"""The image built from deploy/docker/Dockerfile, run for real with podman the way the Helm chart
runs it: read-only root, every capability dropped, no new privileges, writable tmpfs only where
the chart mounts emptyDirs (/tmp and $HOME). It serves a registry model tracked by alias, takes
an alias move under load with no failed request (scenario III: `local`; IV: `uv`, building each
version's environment from PyPI), passes its own HEALTHCHECK, stops within the grace period
with exit code 0 and leaves no process behind.

`make container-test` prepares podman and builds the image (tests/deploy/container/prepare.sh),
then runs this module with MLFLOW_BLUEGREEN_CONTAINER_TEST=1; `make test` skips it. Host
networking lets the container reach the registry on the machine's loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("MLFLOW_BLUEGREEN_CONTAINER_TEST") != "1",
    reason="builds and runs the image with podman: `make container-test` runs it",
)

HERE = Path(__file__).parent / "container"
IMAGE = os.environ.get("MLFLOW_BLUEGREEN_IMAGE", "localhost/mlflow-bluegreen:ci")
MODEL = "iris"
# Version 2 also needs this package: its environment differs from version 1's, so with `uv`
# the swap builds a new one while version 1 serves.
EXTRA_REQUIREMENT = "prometheus-client"
# What the Helm chart gives the pod by default: shutdownDelay 0 here (no Service to leave),
# drainTimeout 30, plus 10 s.
GRACE_SECONDS = 40
# Cold start with `uv`: mlflow, scikit-learn, pandas, scipy... downloaded from PyPI.
STARTUP_SECONDS = 600
IRIS_PAYLOAD = json.dumps(
    {
        "dataframe_split": {
            "columns": [
                "sepal length (cm)",
                "sepal width (cm)",
                "petal length (cm)",
                "petal width (cm)",
            ],
            "data": [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]],
        }
    }
).encode()


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: `make container-test` installs it")
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.fail(f"{IMAGE} is not built: `make container-test` builds it")
    return IMAGE


@dataclass
class Registry:
    uri: str
    versions: list[str]

    def move_alias(self, version: str) -> None:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=self.uri).set_registered_model_alias(MODEL, "champion", version)


@pytest.fixture(scope="module")
def registry(image: str) -> Iterator[Registry]:
    """`mlflow server` on the host's loopback (SQLite, artifacts served by the server), with
    two iris versions logged from inside the image."""
    root = Path(tempfile.mkdtemp(prefix="mlflow-bluegreen-container-"))
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while http_get_quietly(f"{uri}/health") != 200:
            assert server.poll() is None, (root / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server not ready in 120 s"
            time.sleep(0.3)
        registered = podman(
            "run", "--rm", "--network", "host",
            "-e", f"MLFLOW_TRACKING_URI={uri}",
            "-v", f"{HERE / 'register_iris.py'}:/register_iris.py:ro",
            "--entrypoint", "python",
            image, "/register_iris.py", MODEL, EXTRA_REQUIREMENT,
            timeout=300, check=False,
        )  # fmt: skip
        assert registered.returncode == 0, registered.stderr[-3000:]
        versions = json.loads(registered.stdout.strip().splitlines()[-1])
        assert len(versions) == 2
        yield Registry(uri, versions)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def http_get_quietly(url: str) -> int | None:
    try:
        return http_get(url, timeout=2)[0]
    except OSError:
        return None


@dataclass
class Container:
    """One `podman run -d` of the image, as the chart's pod spec runs it."""

    image: str
    env: dict[str, str]
    name: str = field(default_factory=lambda: f"mlflow-bluegreen-test-{time.time_ns()}")
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)

    def start(self) -> None:
        env = {
            "MLFLOW_BLUEGREEN_PORT": str(self.port),
            "MLFLOW_BLUEGREEN_ADMIN_PORT": str(self.admin_port),
            "MLFLOW_BLUEGREEN_POLL_INTERVAL": "1",
            **self.env,
        }
        config = json.loads(podman("image", "inspect", self.image).stdout)[0]["Config"]
        home = dict(e.split("=", 1) for e in config["Env"])["HOME"]
        podman(
            "run", "--detach", "--name", self.name, "--network", "host",
            # securityContext: readOnlyRootFilesystem, capabilities drop ALL,
            # allowPrivilegeEscalation false; no tmpfs podman would add by itself.
            "--read-only", "--read-only-tmpfs=false",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            # The chart's emptyDirs, writable by the container's user as an emptyDir is
            # (podman 4.3 ignores mode= on a tmpfs over an existing directory: U chowns it).
            "--tmpfs", "/tmp:rw,exec,nosuid,nodev,size=4g,mode=1777",
            "--tmpfs", f"{home}:rw,exec,nosuid,nodev,size=8g,U",
            *(arg for name, value in env.items() for arg in ("-e", f"{name}={value}")),
            self.image,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def inspect(self) -> dict[str, Any]:
        return dict(json.loads(podman("inspect", self.name).stdout)[0])

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-6000:]

    def status(self) -> dict[str, Any]:
        code, body = http_get(f"{self.admin_url}/status")
        assert code == 200, code
        return dict(json.loads(body))

    def wait_active(self, version: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.inspect()["State"]
            assert state["Running"], f"container exited {state['ExitCode']}:\n{self.logs()}"
            try:
                status = self.status()
            except (OSError, AssertionError, ValueError):
                status = {}
            active = status.get("active")
            if active and active["version"] == version and not status["swap_in_progress"]:
                return status
            # A failed version backs off for minutes: say why now rather than time out.
            failed = status.get("failed_versions") or {}
            assert version not in failed, f"{failed[version]}\n{self.logs()}"
            time.sleep(0.5)
        raise AssertionError(f"version {version} not active after {timeout} s:\n{self.logs()}")

    def processes(self) -> set[int]:
        """Host PIDs of every process in the container's PID namespace, and its conmon."""
        state = self.inspect()["State"]
        namespace = os.readlink(f"/proc/{state['Pid']}/ns/pid")
        return {state["ConmonPid"], *in_namespace(namespace)}

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def in_namespace(namespace: str) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "pid") == namespace:
                    pids.add(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def load_while_alias_moves(
    container: Container, registry: Registry, to_version: str, timeout: float
) -> tuple[Counter[str | None], list[str], dict[str, Any]]:
    """Four clients over keep-alive connections; the alias moves once they are running; the
    load stops a second after `to_version` took over. Returns answers by version, failures,
    and the final /status."""
    stop = asyncio.Event()
    answered: Counter[str | None] = Counter()
    failures: list[str] = []

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with session.post(
                    f"{container.url}/invocations",
                    data=IRIS_PAYLOAD,
                    headers={"Content-Type": "application/json"},
                ) as response:
                    await response.read()
                    if response.status == 200:
                        answered[response.headers.get("X-Model-Version")] += 1
                    else:
                        failures.append(f"HTTP {response.status}")
            except (aiohttp.ClientError, TimeoutError) as error:
                failures.append(repr(error))
                await asyncio.sleep(0.01)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        clients = [asyncio.create_task(client(session)) for _ in range(4)]
        await asyncio.sleep(2)
        await asyncio.to_thread(registry.move_alias, to_version)
        status = await asyncio.to_thread(container.wait_active, to_version, timeout)
        await asyncio.sleep(1)
        stop.set()
        await asyncio.gather(*clients)
    return answered, failures, status


@pytest.mark.timeout(STARTUP_SECONDS * 2)
@pytest.mark.parametrize("env_manager", ["local", "uv"])
def test_image_swaps_under_load_and_stops_clean(
    image: str, registry: Registry, env_manager: str
) -> None:
    first, second = registry.versions
    registry.move_alias(first)
    container = Container(
        image,
        {
            "MLFLOW_BLUEGREEN_MODEL_URI": f"models:/{MODEL}@champion",
            "MLFLOW_TRACKING_URI": registry.uri,
            "MLFLOW_BLUEGREEN_ENV_MANAGER": env_manager,
        },
    )
    container.start()
    try:
        began = time.monotonic()
        container.wait_active(first, STARTUP_SECONDS)
        ready_seconds = time.monotonic() - began
        assert container.inspect()["Config"]["User"] == "10001:10001"

        answered, failures, status = asyncio.run(
            load_while_alias_moves(container, registry, second, STARTUP_SECONDS)
        )
        swap = status["history"][0]
        print(
            f"\n{env_manager}: ready in {ready_seconds:.1f} s; "
            f"answers {dict(answered)}, failed {len(failures)}; "
            f"swap {swap['from']} -> {swap['to']} {swap['result']} in {swap['seconds']:.1f} s "
            f"{ {k: round(v, 2) for k, v in swap['steps'].items()} }"
        )
        assert not failures, Counter(failures).most_common(5)
        assert answered[first] > 0 and answered[second] > 0, answered
        assert set(answered) == {first, second}, answered
        assert (swap["from"], swap["to"], swap["result"]) == (first, second, "succeeded")
        if env_manager == "uv":
            assert "prepare_env" in swap["steps"], swap["steps"]

        # The image's own HEALTHCHECK command, run by podman inside the container.
        assert container.inspect()["Config"]["Healthcheck"]["Test"][0] == "CMD"
        health = podman("healthcheck", "run", container.name, check=False)
        assert health.returncode == 0, (health.stdout, health.stderr)

        processes = container.processes()
        # conmon, the sidecar and the worker's uvicorn, started directly (in the prepared
        # environment with uv), and maybe the spare: whatever is alive now must be gone after stop.
        assert len(processes) >= 3, processes
        if env_manager == "uv":
            commands = [command_line(p) for p in processes]
            assert any("/.mlflow/envs/" in c and "uvicorn" in c for c in commands), commands
        began = time.monotonic()
        stopped = podman(
            "stop", "--time", str(GRACE_SECONDS), container.name, timeout=GRACE_SECONDS + 30
        )
        stop_seconds = time.monotonic() - began
        print(f"{env_manager}: podman stop took {stop_seconds:.2f} s")
        assert stopped.returncode == 0
        assert stop_seconds < GRACE_SECONDS, "SIGTERM did not end it: podman had to SIGKILL"
        state = container.inspect()["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 0), container.logs()
        # Conmon may take a moment to go after the container's processes are gone.
        deadline = time.monotonic() + 10
        while [p for p in processes if alive(p)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in processes if alive(p)]
    except BaseException:
        print(container.logs())
        raise
    finally:
        container.remove()
