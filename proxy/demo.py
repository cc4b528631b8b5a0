"""`mlflow-bluegreen demo`: an embedded registry, two model versions, traffic, and swaps.

`SidecarProcess` (the sidecar as a child process) is shared with the tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..worker.spec import free_port


class SidecarProcess:
    """`mlflow-bluegreen serve` started as a child process on free loopback ports."""

    def __init__(
        self,
        model_uri: str,
        *,
        tracking_uri: str | None = None,
        extra_args: tuple[str, ...] = (),
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
        admin_port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.admin_port = admin_port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="sidecar-", suffix=".log")[1])
        command = [
            sys.executable, "-m", "mlflow_bluegreen.proxy.cli", "serve",
            "--model-uri", model_uri,
            "--port", str(self.port),
            "--admin-port", str(self.admin_port),
            *extra_args,
        ]  # fmt: skip
        child_env = {**os.environ, **(env or {})}
        if tracking_uri:
            child_env["MLFLOW_TRACKING_URI"] = tracking_uri
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=child_env
            )

    def get(self, path: str, *, admin: bool = False, timeout: float = 5.0) -> tuple[int, bytes]:
        base = self.admin_url if admin else self.url
        try:
            with urllib.request.urlopen(base + path, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def post_admin(self, path: str, timeout: float = 30.0) -> tuple[int, Any]:
        request = urllib.request.Request(self.admin_url + path, method="POST", data=b"")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status", admin=True)
        if code != 200:
            raise RuntimeError(f"/status answered {code}")
        return dict(json.loads(body))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, predicate: Any, timeout: float, what: str) -> None:
        """Poll until `predicate(status)` holds; fail with the sidecar's log tail if it does not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"sidecar exited with {self.process.returncode} while waiting for {what}:\n"
                    + self.log_text()[-3000:]
                )
            try:
                if predicate(self.status()):
                    return
            except (OSError, RuntimeError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"no {what} after {timeout} s:\n{self.log_text()[-3000:]}")

    def wait_active(self, version: str, timeout: float = 120.0) -> None:
        def serving(status: dict[str, Any]) -> bool:
            active = status.get("active")
            if not active:
                return False
            return bool(active["version"] == version and not status["swap_in_progress"])

        self.wait_until(serving, timeout, f"version {version} active")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, and the exit code. Kills it if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> SidecarProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def run_demo(duration: float, concurrency: int) -> int:
    """The demo itself; returns the exit code (1 if any request failed)."""
    from ..worker.sandbox import EmbeddedRegistry, register_iris_version, set_alias
    from .loadgen import closed_loop

    name, alias = "iris-demo", "champion"
    print("• starting an embedded MLflow registry (SQLite in a temp dir) …", flush=True)
    with EmbeddedRegistry() as registry:
        print(f"  registry at {registry.uri}", flush=True)
        print("• training and registering two versions of an iris classifier …", flush=True)
        versions = [register_iris_version(registry.uri, name, s) for s in (1.0, 0.05)]
        first, second = versions
        set_alias(registry.uri, name, alias, first)
        uri = f"models:/{name}@{alias}"
        print(f"  versions {versions}; {alias} -> {first}", flush=True)
        print(f"• starting mlflow-bluegreen serve -m {uri} …", flush=True)
        with SidecarProcess(
            uri, tracking_uri=registry.uri, extra_args=("--poll-interval", "1")
        ) as sidecar:
            sidecar.wait_active(first, timeout=180)
            print(f"  serving v{first} on {sidecar.url} (admin {sidecar.admin_url})", flush=True)

            async def traffic_and_swaps() -> Any:
                stop = asyncio.Event()
                load = asyncio.create_task(
                    closed_loop(f"{sidecar.url}/invocations", stop, concurrency=concurrency)
                )
                began = time.monotonic()
                for target in (second, first):
                    await asyncio.sleep(3)
                    print(f"• moving alias {alias} -> v{target} under load …", flush=True)
                    await asyncio.to_thread(set_alias, registry.uri, name, alias, target)
                    await asyncio.to_thread(sidecar.wait_active, target, 180)
                    print(f"  v{target} is serving", flush=True)
                await asyncio.sleep(max(0.0, duration - (time.monotonic() - began)))
                stop.set()
                return await load

            result = asyncio.run(traffic_and_swaps())
            status = sidecar.status()
            code = sidecar.stop()

    print_summary(result, status, code)
    return 0 if not result.failures and code == 0 else 1


def print_summary(result: Any, status: dict[str, Any], exit_code: int) -> None:
    outcomes = result.outcomes
    print("\n=== summary ===")
    print(f"requests: {len(outcomes)}   failed: {len(result.failures)}", end="")
    print(f" ({result.describe_failures()})" if result.failures else "")
    print("served by version, in order (seconds since traffic began):")
    for version, start, end, count in version_segments(outcomes):
        print(f"  v{version}: {start:6.1f} s → {end:6.1f} s  {count:6d} requests")
    print("swaps:")
    for swap in reversed(status["history"]):
        steps = ", ".join(f"{k} {v:.2f}s" for k, v in swap["steps"].items())
        print(
            f"  {swap['from'] or '-'} → {swap['to']}: {swap['result']} in {swap['seconds']:.2f} s"
            f" ({steps})"
        )
    print(f"sidecar exit code after SIGTERM: {exit_code}")


def version_segments(outcomes: list[Any]) -> list[tuple[str, float, float, int]]:
    """Runs of consecutive answers from the same version, in the order they were sent."""
    segments: list[tuple[str, float, float, int]] = []
    for outcome in sorted((o for o in outcomes if o.ok), key=lambda o: o.sent):
        if segments and segments[-1][0] == outcome.version:
            version, start, _end, count = segments[-1]
            segments[-1] = (version, start, outcome.sent, count + 1)
        else:
            segments.append((outcome.version, outcome.sent, outcome.sent, 1))
    return segments
