"""What operators watch, end to end: a real Prometheus scrapes a real sidecar through a swap, the
live /metrics passes `promtool check metrics`, and `--log-format json` gives one JSON object per
line, worker output included.

The tests own a model name and an alias each, so other tests moving `iris@champion` cannot
change what these sidecars serve.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlflow_bluegreen.proxy.demo import SidecarProcess
from mlflow_bluegreen.worker.sandbox import iris_frame, register_iris_version, set_alias
from mlflow_bluegreen.worker.spec import free_port

from .conftest import Registry

pytestmark = pytest.mark.integration

MODEL = "iris-observability"
# Versions are slow to start on a shared 2-core machine; a swap is two worker starts at most.
SWAP_TIMEOUT = 180.0
# Prometheus scrapes every second; allow for a few scrapes and a slow first one.
SCRAPE_INTERVAL = 1
SCRAPED_WITHIN = 20.0


@pytest.fixture(scope="module")
def versions(registry: Registry) -> tuple[str, str]:
    first = register_iris_version(registry.uri, MODEL, 1.0)
    second = register_iris_version(registry.uri, MODEL, 0.05)
    return first, second


def move(registry: Registry, alias: str, version: str) -> None:
    set_alias(registry.uri, MODEL, alias, version)


def score(sidecar: SidecarProcess, body: bytes) -> int:
    request = urllib.request.Request(
        sidecar.url + "/invocations",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def iris_request(rows: int = 5) -> bytes:
    features, _target = iris_frame()
    split = json.loads(features.iloc[:rows].to_json(orient="split", index=False))
    return json.dumps({"dataframe_split": split}).encode()


# -- Prometheus -----------------------------------------------------------------------------


class Prometheus:
    """A real `prometheus` server on loopback scraping one target, with its TSDB in a temp dir."""

    def __init__(self, binary: str, directory: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "prometheus.log"
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL}s",
                "scrape_timeout": f"{SCRAPE_INTERVAL}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL}s",
            },
            "scrape_configs": [
                {
                    "job_name": "mlflow-bluegreen",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        config_path = directory / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {self.process.returncode}:\n{self.log_text()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready after {timeout} s:\n{self.log_text()}")

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector /api/v1/query returns for `expression` now."""
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        assert body["data"]["resultType"] == "vector", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(
        self, expression: str, holds: Callable[[list[dict[str, Any]]], bool], what: str
    ) -> list[dict[str, Any]]:
        """Query until the result satisfies `holds`; fail with the last result if it never does."""
        deadline = time.monotonic() + SCRAPED_WITHIN
        result = self.query(expression)
        while not holds(result):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: {expression} is {result} after {SCRAPED_WITHIN} s\n"
                    + self.log_text()[-3000:]
                )
            time.sleep(0.5)
            result = self.query(expression)
        return result

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, and its exit code; killed (and the code reported as such) if it hangs."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip(
            "the prometheus binary is not installed "
            "(Debian package `prometheus`; .ci/run installs it)"
        )
    return found


def test_prometheus_scrapes_the_new_version_after_a_swap(
    registry: Registry,
    versions: tuple[str, str],
    start_sidecar: Callable[..., SidecarProcess],
    prometheus_binary: str,
    tmp_path: Path,
) -> None:
    first, second = versions
    alias = "prometheus"
    move(registry, alias, first)
    sidecar = start_sidecar(f"models:/{MODEL}@{alias}", "--poll-interval", "0.5")
    prometheus = Prometheus(prometheus_binary, tmp_path, f"127.0.0.1:{sidecar.admin_port}")
    try:
        prometheus.wait_ready()
        sidecar.wait_active(first, timeout=SWAP_TIMEOUT)
        job = 'job="mlflow-bluegreen"'

        # Seen before the swap too, so the value after it is a change Prometheus recorded.
        prometheus.wait_for(
            f"mlflow_bluegreen_active_model_version{{{job}}}",
            lambda r: values(r) == [float(first)],
            f"version {first} scraped",
        )

        move(registry, alias, second)
        sidecar.wait_active(second, timeout=SWAP_TIMEOUT)

        prometheus.wait_for(
            f"mlflow_bluegreen_active_model_version{{{job}}}",
            lambda r: values(r) == [float(second)],
            f"version {second} scraped after the swap",
        )
        # The info series names the new version and slot; the old series went stale with the
        # scrape that no longer had it.
        info = prometheus.wait_for(
            f"mlflow_bluegreen_active_model_info{{{job}}} == 1",
            lambda r: len(r) == 1 and r[0]["metric"]["version"] == second,
            f"only version {second} in active_model_info",
        )
        assert info[0]["metric"]["slot"] == sidecar.status()["active"]["slot"]
        swaps = prometheus.wait_for(
            f'mlflow_bluegreen_swaps_total{{{job},result="succeeded"}}',
            lambda r: values(r) == [2.0],
            "both swaps counted",
        )
        assert swaps[0]["metric"]["instance"] == f"127.0.0.1:{sidecar.admin_port}"

        (up,) = prometheus.query(f"up{{{job}}}")
        assert up["metric"]["instance"] == f"127.0.0.1:{sidecar.admin_port}"
        assert float(up["value"][1]) == 1.0
    finally:
        code = prometheus.stop()
    assert code == 0, prometheus.log_text()[-3000:]


# -- JSON logs and the live /metrics --------------------------------------------------------


@dataclass
class JsonRun:
    """One sidecar with `--log-format json` that started a version, swapped to another, served
    requests and was stopped with SIGTERM."""

    versions: tuple[str, str]
    raw_lines: list[str]
    records: list[dict[str, Any]]
    status: dict[str, Any]
    metrics: str
    exit_code: int
    log_path: Path

    def tail(self) -> str:
        return f"{self.log_path}:\n" + "\n".join(self.raw_lines[-40:])


def metrics_counting(sidecar: SidecarProcess, labels: str, timeout: float = 10.0) -> str:
    """/metrics once a request with `labels` is counted. The proxy counts a request when its
    handler returns, which for a streamed answer can be just after the client has it all."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = sidecar.get("/metrics", admin=True)
        assert code == 200
        text = body.decode()
        if f"mlflow_bluegreen_requests_total{{{labels}}}" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


@pytest.fixture(scope="module")
def json_run(
    registry: Registry, versions: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> JsonRun:
    first, second = versions
    alias = "json-logs"
    move(registry, alias, first)
    log_path = tmp_path_factory.mktemp("json-logs") / "sidecar.log"
    sidecar = SidecarProcess(
        f"models:/{MODEL}@{alias}",
        tracking_uri=registry.uri,
        extra_args=("--log-format", "json", "--poll-interval", "0.5"),
        log_path=log_path,
    )
    try:
        sidecar.wait_active(first, timeout=SWAP_TIMEOUT)
        move(registry, alias, second)
        sidecar.wait_active(second, timeout=SWAP_TIMEOUT)
        # Requests with more than one answer code, so /metrics has labelled children and
        # histogram samples for promtool to check.
        assert [score(sidecar, iris_request()) for _ in range(3)] == [200] * 3
        assert score(sidecar, b"{not json") == 400
        status = sidecar.status()
        metrics = metrics_counting(sidecar, 'code="400",method="POST"')
    finally:
        exit_code = sidecar.stop()
    raw_lines = [line for line in sidecar.log_text().splitlines() if line.strip()]
    records: list[Any] = []
    for line in raw_lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            records.append({"not json": line})
    return JsonRun(versions, raw_lines, records, status, metrics, exit_code, log_path)


def test_every_log_line_is_a_json_object(json_run: JsonRun) -> None:
    assert json_run.exit_code == 0, json_run.tail()
    # A sidecar that did a swap has written far more than a handful of lines.
    assert len(json_run.records) > 20
    broken = [r for r in json_run.records if not isinstance(r, dict) or "not json" in r]
    assert broken == [], json_run.log_path
    for record in json_run.records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record


def test_worker_output_lines_carry_slot_and_version(json_run: JsonRun) -> None:
    first, second = json_run.versions
    slots = {swap["to"]: swap["slot"] for swap in json_run.status["history"]}
    expected = {(slots[first], first), (slots[second], second)}
    assert len({slot for slot, _ in expected}) == 2, "the swap used the other slot"

    # Lines uvicorn printed in each `mlflow models serve`: worker output, whatever logger
    # relays it. One startup banner per worker, each labelled with that worker.
    banners = [r for r in json_run.records if "Uvicorn running on" in str(r.get("message"))]
    assert sorted((r.get("slot"), r.get("version")) for r in banners) == sorted(expected), banners

    labelled = [r for r in json_run.records if "slot" in r or "version" in r]
    assert {(r.get("slot"), r.get("version")) for r in labelled} == expected
    for slot, version in expected:
        relayed = [
            r["message"]
            for r in labelled
            if (r["slot"], r["version"]) == (slot, version) and r["message"].startswith("INFO:")
        ]
        # Started, serving, and at the end shutting down: the worker's whole life is in the log.
        assert any("Started server process" in m for m in relayed), (slot, version)
        assert any("Finished server process" in m for m in relayed), (slot, version)


def logged_seconds(message: str, step: str) -> float | None:
    """The number logged right after `step` in a message (`'ready': 1.2`, `ready=1.2`,
    `ready in 1.20 s`), if any."""
    found = re.search(rf"\b{re.escape(step)}\b['\"]?(?::|=|\s+in)?\s*(\d[\d.e+-]*)", message)
    return float(found.group(1)) if found else None


def test_swap_log_gives_every_step_its_time(json_run: JsonRun) -> None:
    first, second = json_run.versions
    (swap,) = [s for s in json_run.status["history"] if s["to"] == second]
    assert swap["result"] == "succeeded"
    # /status says which steps this swap went through and how long each took.
    steps: dict[str, float] = swap["steps"]
    assert {"ready", "switch", "drain", "stop"} <= steps.keys()
    messages = [str(r.get("message")) for r in json_run.records]

    # The new worker's readiness has a line of its own, with its time...
    (ready,) = [m for m in messages if m.startswith(f"worker {swap['slot']} v{second} ready in ")]
    assert logged_seconds(ready, "ready") == pytest.approx(steps["ready"], abs=0.01)
    # ...and the line that ends the swap gives its total and the time of every step.
    (summary,) = [m for m in messages if f"{first} -> {second}" in m and "succeeded" in m]
    assert logged_seconds(summary, "succeeded") == pytest.approx(swap["seconds"], abs=0.01)
    for step, seconds in steps.items():
        assert logged_seconds(summary, step) == pytest.approx(seconds, abs=0.01), (step, summary)


def test_each_swap_step_has_a_line_with_structured_timing(json_run: JsonRun) -> None:
    _first, second = json_run.versions
    (swap,) = [s for s in json_run.status["history"] if s["to"] == second]
    timed = [
        (r["swap_step"], r["seconds"])
        for r in json_run.records
        if "swap_step" in r and r.get("to_version") == second
    ]
    assert [step for step, _ in timed] == list(swap["steps"])
    for step, seconds in timed:
        assert seconds == pytest.approx(swap["steps"][step], abs=0.01), step


def test_promtool_accepts_the_live_metrics(json_run: JsonRun) -> None:
    # tests/deploy/test_prometheus.py checks an exposition built from the Metrics class; this
    # is what a running sidecar serves, with every collector it registers and real samples.
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
    counted = [
        line
        for line in json_run.metrics.splitlines()
        if line.startswith("mlflow_bluegreen_requests")
    ]
    assert any('code="400",method="POST"' in line for line in counted), counted
    assert "mlflow_bluegreen_request_duration_seconds_bucket" in json_run.metrics
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=json_run.metrics,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
