"""A client cannot tell the sidecar from `mlflow models serve`, but for X-Model-Version."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from mlflow_bluegreen.proxy.demo import SidecarProcess
from mlflow_bluegreen.proxy.loadgen import IRIS_COLUMNS
from mlflow_bluegreen.worker.sandbox import set_alias
from mlflow_bluegreen.worker.spec import WorkerSpec, free_port

from .conftest import Registry

pytestmark = pytest.mark.integration

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]
RECORDS = [dict(zip(IRIS_COLUMNS, row, strict=True)) for row in ROWS]
JSON = "application/json"
CSV = (",".join(IRIS_COLUMNS) + "\n5.1,3.5,1.4,0.2\n").encode()
# MLflow prints a Python set in one of its 400 messages; its order depends on the hash seed.
SAME_HASH_SEED = {"PYTHONHASHSEED": "0"}


def j(document: object) -> bytes:
    return json.dumps(document).encode()


REQUESTS: list[tuple[str, str, str | None, bytes]] = [
    ("POST", "/invocations", JSON, j({"dataframe_split": {"columns": IRIS_COLUMNS, "data": ROWS}})),
    ("POST", "/invocations", JSON, j({"dataframe_records": RECORDS})),
    ("POST", "/invocations", JSON, j({"instances": RECORDS})),
    ("POST", "/invocations", JSON, j({"inputs": RECORDS})),
    ("POST", "/invocations", JSON, j({"dataframe_records": RECORDS, "params": {"x": 1}})),
    ("POST", "/invocations", "application/json; charset=utf-8", j({"inputs": RECORDS})),
    ("POST", "/invocations", "text/csv", CSV),
    ("POST", "/invocations", JSON, b'{"dataframe_split": '),
    ("POST", "/invocations", JSON, j({"inputs": RECORDS, "instances": RECORDS})),
    ("POST", "/invocations", JSON, j({"columns": IRIS_COLUMNS, "data": ROWS})),
    ("POST", "/invocations", JSON, j({"dataframe_records": [{"wrong": 1}]})),
    ("POST", "/invocations", "text/plain", b"hello"),
    ("POST", "/invocations", None, b"{}"),
    ("GET", "/ping", None, b""),
    ("GET", "/health", None, b""),
    ("GET", "/version", None, b""),
    ("GET", "/invocations", None, b""),
    ("GET", "/no-such-path", None, b""),
    ("HEAD", "/ping", None, b""),
]


Answer = tuple[int, dict[str, str], bytes]


def exchange(port: int, method: str, path: str, content_type: str | None, body: bytes) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": content_type} if content_type else {}
    connection.request(method, path, body=body or None, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    headers = {k.lower(): v for k, v in response.getheaders() if k.lower() != "date"}
    return response.status, headers, data


def assert_same_answers(direct_port: int, sidecar: SidecarProcess, version: str) -> set[int]:
    """Every request of REQUESTS answered alike, but for X-Model-Version; the statuses seen."""
    statuses = set()
    for method, path, content_type, body in REQUESTS:
        direct = exchange(direct_port, method, path, content_type, body)
        proxied = exchange(sidecar.port, method, path, content_type, body)
        what = f"{method} {path} {content_type} {body[:60]!r}"
        assert proxied[0] == direct[0], what
        assert proxied[2] == direct[2], what
        assert proxied[1].pop("x-model-version") == version, what
        assert proxied[1] == direct[1], what
        statuses.add(direct[0])
    return statuses


@pytest.fixture(scope="module")
def direct_worker(registry: Registry) -> Iterator[int]:
    """A plain `mlflow models serve` of the registry version, with our workers' environment: the
    sidecar's own workers start the scoring server directly, and must answer the same."""
    first, _ = registry.iris_versions
    spec = WorkerSpec(direct=False)
    port = free_port()
    env = {**spec.environment(), "MLFLOW_TRACKING_URI": registry.uri, **SAME_HASH_SEED}
    process = subprocess.Popen(
        spec.command(f"models:/iris/{first}", port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if exchange(port, "GET", "/ping", None, b"")[0] == 200:
                break
        except OSError:
            time.sleep(0.3)
    yield port
    process.terminate()
    process.wait(30)


def test_every_answer_is_the_same_as_direct_serving(
    registry: Registry,
    direct_worker: int,
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    first, _ = registry.iris_versions
    sidecar = start_sidecar(f"models:/iris/{first}", env=SAME_HASH_SEED)
    sidecar.wait_active(first, timeout=120)
    statuses = assert_same_answers(direct_worker, sidecar, first)
    # The list covers success and each of MLflow's error answers.
    assert statuses >= {200, 400, 404, 405, 415}


def test_a_worker_started_from_the_spare_answers_the_same_too(
    registry: Registry,
    direct_worker: int,
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    """The spare becomes the scoring server in a process that imported it beforehand: every
    answer must still be the one a plain `mlflow models serve` gives."""
    first, second = registry.iris_versions
    set_alias(registry.uri, "iris", "transparency", second)
    sidecar = start_sidecar(
        "models:/iris@transparency", "--poll-interval", "0.5", env=SAME_HASH_SEED
    )
    sidecar.wait_active(second, timeout=120)
    sidecar.wait_until(lambda s: bool((s.get("spare") or {}).get("ready")), 120, "a spare")
    set_alias(registry.uri, "iris", "transparency", first)
    sidecar.wait_active(first, timeout=120)
    assert sidecar.status()["active"]["launch"] == "spare"
    assert_same_answers(direct_worker, sidecar, first)
