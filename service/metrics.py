"""Prometheus metrics of one app, in its own CollectorRegistry (never the global one).

With several worker processes every value lives in prometheus-client's multiprocess files and ``/metrics``
reads them all; each gauge names how its processes' values combine (``multiprocess_mode``).

Label values are bounded: model and version come from loaded bundles only
(requests for unknown models count under ``model="unknown"``), region is a
configured region or ``other``, outcome is one of five words.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

UNKNOWN_MODEL = "unknown"
OUTCOMES = ("ok", "client_error", "server_error", "rejected", "timeout")
LOAD_FAILURE_REASONS = ("manifest", "checksum", "onnx", "warmup")

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))  # prometheus-client reads it at import too
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServingMetrics:
    """Every serving metric of the contract, plus model load failures."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "serving_requests", "Prediction requests by outcome.", ["model", "version", "region", "outcome"], registry=r
        )
        self.request_duration = Histogram(
            "serving_request_duration_seconds",
            "Whole prediction request, body read to response.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "serving_queue_wait_seconds",
            "Time a request waited in the batcher queue before its first item ran.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "serving_inference_duration_seconds",
            "One ONNX Runtime run of a batch.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "serving_batch_size",
            "Items per ONNX Runtime run.",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "serving_queue_depth",
            "Items waiting in the batcher queue.",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.model_info = Gauge(
            "serving_model_info",
            "1 for every loaded model version.",
            ["model", "version", "task", "provider", "sha256"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.load_failures = Counter(
            "serving_model_load_failures",
            "Bundles refused at load (reason: manifest, checksum, onnx, warmup, unreadable, error).",
            ["model", "reason"],
            registry=r,
        )

    def for_version(self, model: str, version: int) -> VersionMetrics:
        return VersionMetrics(self, model, str(version))

    def count_unrouted(self, model: str, region: str, outcome: str) -> None:
        """A request that never reached a version (unknown model or version): counted with version ""."""
        self.requests.labels(model, "", region, outcome).inc()

    def load_failed(self, model: str, reason: str) -> None:
        self.load_failures.labels(model, reason).inc()

    def render(self) -> tuple[bytes, str]:
        """This app's metrics; with several worker processes (prometheus-client's multiprocess mode, see
        ``service.parallel``) those of every process of the group, each gauge aggregated by its mode."""
        if MULTIPROCESS:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class VersionMetrics:
    """The metric children of one loaded version; also the batcher's observer."""

    def __init__(self, metrics: ServingMetrics, model: str, version: str) -> None:
        self.metrics = metrics
        self.model = model
        self.version = version
        self._info_labels: tuple[str, ...] | None = None
        self._request_duration = metrics.request_duration.labels(model, version)
        self._queue_wait = metrics.queue_wait.labels(model, version)
        self._inference = metrics.inference_duration.labels(model, version)
        self._batch_size = metrics.batch_size.labels(model, version)
        # The batcher reports its depth on every submit and take; storing an int is all that costs,
        # the gauge reads it when scraped. With several processes a scrape reads the shared files: set it there.
        self._depth = 0
        self._shared_depth = metrics.queue_depth.labels(model, version) if MULTIPROCESS else None
        if self._shared_depth is None:
            metrics.queue_depth.labels(model, version).set_function(self._current_depth)
        self._requests: dict[tuple[str, str], Counter] = {}

    def _current_depth(self) -> int:
        return self._depth

    def request(self, region: str, outcome: str, seconds: float) -> None:
        key = (region, outcome)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.metrics.requests.labels(self.model, self.version, region, outcome)
        counter.inc()
        self._request_duration.observe(seconds)

    def queue_depth(self, items: int) -> None:
        self._depth = items
        if self._shared_depth is not None:
            self._shared_depth.set(items)

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def batch(self, items: int, run_seconds: float) -> None:
        self._batch_size.observe(items)
        self._inference.observe(run_seconds)

    def loaded(self, task: str, provider: str, sha256: str) -> None:
        self._info_labels = (self.model, self.version, task, provider, sha256)
        self.metrics.model_info.labels(*self._info_labels).set(1)

    def unloaded(self) -> None:
        """Drop the gauges of a version that is gone; counters and histograms keep their history."""
        if self._info_labels is not None:
            _remove(self.metrics.model_info, self._info_labels)
        _remove(self.metrics.queue_depth, (self.model, self.version))


def _remove(metric: Gauge, labels: tuple[str, ...]) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
