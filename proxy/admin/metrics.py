"""Prometheus metrics of the sidecar, on a registry handed in (never the global one)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ...worker.control import SLOTS, SwapRecord, Worker
from ...worker.tracking.registry import RegistryError

PREFIX = "mlflow_bluegreen_"

_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SWAP_BUCKETS = (1, 2.5, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1800)


class Metrics:
    """Request metrics for the forwarder, swap metrics for the supervisor (a SwapObserver)."""

    def __init__(self, registry: CollectorRegistry, in_flight: Callable[[], int]) -> None:
        self.registry = registry
        self.requests = Counter(
            PREFIX + "requests",
            "Requests answered on the public port, by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Time from request received to response sent on the public port.",
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            PREFIX + "in_flight_requests",
            "Requests being forwarded to a worker now.",
            registry=registry,
        )
        self.in_flight.set_function(in_flight)
        self.swaps = Counter(
            PREFIX + "swaps", "Swaps finished, by result.", ["result"], registry=registry
        )
        self.swap_duration = Histogram(
            PREFIX + "swap_duration_seconds",
            "Time from the start of a swap to the old worker stopped (or the new one rejected).",
            buckets=_SWAP_BUCKETS,
            registry=registry,
        )
        self.active_version = Gauge(
            PREFIX + "active_model_version",
            "Registry version number served now (NaN when no version, or not a number).",
            registry=registry,
        )
        self.active_info = Gauge(
            PREFIX + "active_model_info",
            "1 for the version and slot serving now.",
            ["version", "slot"],
            registry=registry,
        )
        self.ready = Gauge(
            PREFIX + "ready", "1 when a worker is taking traffic, else 0.", registry=registry
        )
        self.workers_up = Gauge(
            PREFIX + "worker_up", "1 while the slot's worker runs.", ["slot"], registry=registry
        )
        self.registry_errors = Counter(
            PREFIX + "registry_errors",
            "Failed registry lookups, by kind.",
            ["kind"],
            registry=registry,
        )
        self.webhooks = Counter(
            PREFIX + "webhooks",
            "Webhook deliveries on the admin port, by result: accepted (a registry lookup "
            "was started), ignored (signed, but cannot change the served URI), rejected.",
            ["result"],
            registry=registry,
        )
        for result in ("accepted", "ignored", "rejected"):
            self.webhooks.labels(result)
        self.active_version.set(math.nan)
        for slot in SLOTS:
            self.workers_up.labels(slot).set(0)
        for result in ("succeeded", "failed", "blocked"):
            self.swaps.labels(result)
        # Label lookups cost more than the increment: keep the children we have seen.
        self._request_children: dict[tuple[str, int], Counter] = {}

    def observe_request(self, method: str, status: int, seconds: float) -> None:
        child = self._request_children.get((method, status))
        if child is None:
            child = self.requests.labels(method, str(status))
            self._request_children[(method, status)] = child
        child.inc()
        self.request_duration.observe(seconds)

    # -- SwapObserver ------------------------------------------------------------------------

    def swap_finished(self, record: SwapRecord) -> None:
        self.swaps.labels(record.result).inc()
        if record.seconds is not None:
            self.swap_duration.observe(record.seconds)

    def active_changed(self, worker: Worker | None) -> None:
        self.active_info.clear()
        if worker is None:
            self.ready.set(0)
            self.active_version.set(math.nan)
            return
        self.ready.set(1)
        self.active_info.labels(worker.version, worker.slot).set(1)
        self.active_version.set(float(worker.version) if worker.version.isdigit() else math.nan)

    def worker_up(self, slot: str, up: bool) -> None:
        self.workers_up.labels(slot).set(1 if up else 0)

    def worker_stopped(self, worker: Worker) -> None:
        pass  # its figures go with it: WorkerCollector reads only running workers

    def registry_error(self, error: RegistryError) -> None:
        self.registry_errors.labels(error.kind).inc()


class WorkerCollector(Collector):
    """Per-worker figures read at scrape time, so the request path pays nothing for them:
    memory (what lingering costs), and answers and failures (how a canary compares)."""

    def __init__(self, workers: Callable[[], list[tuple[str, Worker]]]) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        labels = ["slot", "version", "role"]
        rss = GaugeMetricFamily(
            PREFIX + "worker_rss_bytes",
            "Resident memory of each running worker's process group.",
            labels=labels,
        )
        answered = CounterMetricFamily(
            PREFIX + "worker_requests",
            "Requests each running worker answered, since it started.",
            labels=labels,
        )
        failed = CounterMetricFamily(
            PREFIX + "worker_failed_requests",
            "Requests each running worker answered with a 5xx or not in time, since it started.",
            labels=labels,
        )
        for role, worker in self._workers():
            values = [worker.slot, worker.version, role]
            rss.add_metric(values, worker.rss_bytes())
            answered.add_metric(values, worker.in_flight.answered)
            failed.add_metric(values, worker.in_flight.failed)
        yield from (rss, answered, failed)
