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
        for result in ("succeeded", "failed", "blocked", "rolled_back"):
            self.swaps.labels(result)
        self.shadow = Counter(
            PREFIX + "shadow_requests",
            "Shadow copies of live predictions sent to a new version before its switch, by "
            "outcome: agreed or disagreed with the active version's answer, or dropped (the new "
            "worker had as many copies as it may). Not in the client-facing request metrics.",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("agreed", "disagreed", "dropped"):
            self.shadow.labels(outcome)
        self.verdict_agreement = Gauge(
            PREFIX + "last_shadow_agreement_ratio",
            "Share of shadowed requests the last shadowed version answered as the active "
            "version did (NaN before any shadow run).",
            registry=registry,
        )
        self.verdict_latency = Gauge(
            PREFIX + "last_verdict_latency_ratio",
            "The last new version's p99 latency over the old version's, by what judged it: "
            "shadow, canary or after_switch (the automatic rollback's comparison).",
            ["judged_by"],
            registry=registry,
        )
        self.verdict_agreement.set(math.nan)
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
        if record.shadow is not None and record.shadow.get("agreement") is not None:
            self.verdict_agreement.set(record.shadow["agreement"])
        for judged_by, figures in (
            ("shadow", record.shadow),
            ("canary", record.canary),
            ("after_switch", record.after_switch),
        ):
            if figures and figures.get("latency_ratio") is not None:
                self.verdict_latency.labels(judged_by).set(figures["latency_ratio"])

    def shadow_outcome(self, outcome: str) -> None:
        self.shadow.labels(outcome).inc()

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
        by_class = CounterMetricFamily(
            PREFIX + "worker_answers",
            "Requests each running worker answered, since it started, by status class (2xx, "
            "4xx, 5xx with the sidecar's 502 and 504, other): what a canary compares.",
            labels=[*labels, "class"],
        )
        latency = GaugeMetricFamily(
            PREFIX + "worker_latency_seconds",
            "Each running worker's answer time since it started, at percentiles 50 and 99 "
            "(upper bound of a 20 % wide bucket): what a canary compares. Not a summary: its "
            "label is `percentile`, not `quantile`.",
            labels=[*labels, "percentile"],
        )
        for role, worker in self._workers():
            values = [worker.slot, worker.version, role]
            tally = worker.in_flight
            rss.add_metric(values, worker.rss_bytes())
            answered.add_metric(values, tally.answered)
            failed.add_metric(values, tally.failed)
            counts = tally.counts()
            for name, count in (
                ("2xx", counts.ok),
                ("4xx", counts.client_errors),
                ("5xx", counts.server_errors),
                ("other", counts.other),
            ):
                by_class.add_metric([*values, name], count)
            for q, percentile in ((0.5, "50"), (0.99, "99")):
                seconds = counts.quantile(q)
                latency.add_metric([*values, percentile], math.nan if seconds is None else seconds)
        yield from (rss, answered, failed, by_class, latency)
