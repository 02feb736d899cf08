"""The monitor: out-of-domain flags on the request path, everything else in a background thread.

On the request path :meth:`Monitor.observe` only scores the request for
out-of-domain inputs (the response carries the flags) and puts an
:class:`Observation` in a bounded queue; a full queue drops the observation
and counts it (``serving_monitor_dropped_total``). The worker thread bins the
observations into the drift windows of their version (one per region, and
one for all regions), updates the estimated accuracy, counts out-of-domain
reasons, sets the gauges, and hands a record to the prediction log.

Readings for other components (the rollout guardrails, the drift endpoint,
the pages): :meth:`drift_score`, :meth:`live_accuracy`,
:meth:`estimated_accuracy`, :meth:`live_error`, :meth:`drift_report`; the
guardrails read the first two through :meth:`guardrail_readings`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections import deque
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import orjson
import pandas as pd
from prometheus_client import Counter, Gauge

from bundle import monitoring as mon
from bundle.manifest import read_reference
from service.http.errors import InvalidInput, NotFound, Unavailable
from service.rollout.guardrails import Reading, ReadingSource
from service.metrics import ServingMetrics
from service.monitoring.drift import DriftWindow, FeatureBins, verdict
from service.monitoring.log import LogMetrics, PredictionLog
from service.monitoring.ood import REASONS, OODDetector, image_sizes
from service.monitoring.performance import FeedbackWindow, Judgement, judge
from service.settings import ServiceSettings
from service.store import StoreUnavailable, open_store

log = logging.getLogger("service.monitoring")

ALL_REGIONS = "*"
_GAUGE_INTERVAL_S = 0.5  # drift gauges are recomputed at most this often per version
_DRAIN_INTERVAL_S = 0.05  # the worker takes what requests left this often
_MAX_BATCH = 512  # observations processed together


@dataclass
class Observation:
    """What one successful request leaves for the worker."""

    state: "VersionState"
    region: str
    arm: str
    request_id: str
    created_at: float
    latency_ms: float
    output: np.ndarray
    predictions: list[dict[str, Any]]
    summaries: list[list[float]] | None  # each image's summaries, in bundle.monitoring.SUMMARY_KEYS order
    columns: Mapping[str, np.ndarray] | None  # the raw table, one array per column
    images: list[bytes] | None
    logged: bool
    rows: list[Any] | None = None  # the JSON rows as sent, where the table came as JSON


class VersionState:
    """One served version's reference bins, out-of-domain detector, calibration and windows."""

    def __init__(self, version: Any, settings: ServiceSettings) -> None:
        self.source = version
        self.name: str = version.name
        self.version: int = version.version
        manifest = version.manifest
        self.task = manifest.task
        self.input_kind = manifest.input_kind
        self.classes = list(manifest.outputs.classes or [])
        reference = _read_reference(version)
        features = reference.get("features") or {}
        predictions = reference.get("predictions") or {}
        vocab = {}
        if manifest.tabular is not None:
            vocab = (manifest.tabular.processor.get("categorify") or {}).get("vocab", {})
        self.input_features = [
            FeatureBins.from_reference(name, ref, vocab.get(name)) for name, ref in features.items() if _usable(ref)
        ]
        self.prediction_features = [
            FeatureBins.from_reference(f"prediction.{name}", ref, self.classes if name == "label" else None)
            for name, ref in predictions.items()
            if _usable(ref)
        ]
        self.features = self.input_features + self.prediction_features
        self.detector = OODDetector(manifest, features, settings.ood_image_slack)
        calibration = manifest.monitoring
        self.knots = (
            (calibration.calibration_confidence, calibration.calibration_accuracy)
            if calibration is not None and calibration.calibration_confidence and self.task == "classification"
            else None
        )
        self.validation_accuracy = calibration.validation_accuracy if calibration is not None else None
        self.capacity = settings.drift_window
        self.windows: dict[str, DriftWindow] = {}
        self.lock = threading.Lock()
        self.items = 0
        self.flagged = 0
        self.reasons = dict.fromkeys(REASONS, 0)
        self.gauges_at = 0.0
        self.drift_at_refresh: tuple[float, int] | None = None  # (largest PSI, items) at the last gauge refresh

    def window(self, region: str) -> DriftWindow:
        found = self.windows.get(region)
        if found is None:
            found = self.windows[region] = DriftWindow(self.features, self.capacity)
        return found

    def bins(self, observations: list[Observation]) -> np.ndarray:
        """[items, features] bin indices of a group of observations of this version."""
        outputs = np.concatenate([o.output for o in observations])
        columns = []
        if self.input_features:
            if self.input_kind == "image":
                summaries = np.array([row for o in observations for row in o.summaries], dtype=np.float64)
                position = {key: i for i, key in enumerate(mon.SUMMARY_KEYS)}
                columns += [f.bins(summaries[:, position[f.name.split(".", 1)[1]]]) for f in self.input_features]
            else:
                columns += [f.bins(_concatenated(observations, f.name)) for f in self.input_features]
        for feature in self.prediction_features:
            kind = feature.name.split(".", 1)[1]
            if kind == "label":
                values = np.asarray(self.classes, dtype=object)[outputs.argmax(axis=1)]
            elif kind == "confidence":
                values = outputs.max(axis=1)
            else:
                values = outputs[:, 0] if outputs.ndim == 2 else outputs
            columns.append(feature.bins(values))
        if not columns:
            return np.zeros((len(outputs), 0), dtype=np.int16)
        return np.stack(columns, axis=1)

    def estimated_correct(self, observations: list[Observation]) -> np.ndarray | None:
        if self.knots is None:
            return None
        confidence = np.concatenate([o.output for o in observations]).max(axis=1)
        return mon.estimated_correct(confidence, *self.knots)


class MonitorMetrics:
    def __init__(self, metrics: ServingMetrics) -> None:
        r = metrics.registry
        self.drift_score = Gauge(
            "serving_drift_score", "PSI of a feature over the drift window, all regions.",
            ["model", "version", "feature"], registry=r,
        )  # fmt: skip
        self.ood = Counter(
            "serving_ood", "Items flagged out-of-domain, by reason.", ["model", "version", "reason"], registry=r
        )
        self.items = Counter(
            "serving_monitored_items", "Items scored by the monitor.", ["model", "version", "region"], registry=r
        )
        self.estimated_accuracy = Gauge(
            "serving_estimated_accuracy",
            "Accuracy estimated from calibrated confidences over the drift window (classification).",
            ["model", "version", "region"], registry=r,
        )  # fmt: skip
        self.feedback = Counter(
            "serving_feedback", "Ground-truth answers received.", ["model", "version", "region"], registry=r
        )
        self.feedback_correct = Counter(
            "serving_feedback_correct", "Answers that matched the prediction (classification).",
            ["model", "version", "region"], registry=r,
        )  # fmt: skip
        self.feedback_abs_error = Counter(
            "serving_feedback_abs_error", "Sum of |answer - prediction| (regression).",
            ["model", "version", "region"], registry=r,
        )  # fmt: skip
        self.live_accuracy = Gauge(
            "serving_live_accuracy", "Accuracy over the feedback window (classification).",
            ["model", "version", "region"], registry=r,
        )  # fmt: skip
        self.live_error = Gauge(
            "serving_live_error", "Mean absolute error over the feedback window (regression).",
            ["model", "version", "region"], registry=r,
        )  # fmt: skip
        self.dropped = Counter(
            "serving_monitor_dropped", "Observations dropped because the monitor queue was full.", registry=r
        )
        self.log = LogMetrics(r)


class Monitor:
    """Drift windows, out-of-domain flags, estimated and live accuracy, the prediction log, feedback."""

    def __init__(self, settings: ServiceSettings, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.metrics = MonitorMetrics(metrics)
        self._states: dict[tuple[str, int], VersionState] = {}
        # A deque, not a queue.Queue: appending takes no lock and wakes no thread. The worker drains it every
        # _DRAIN_INTERVAL_S, so it processes many observations per numpy call and the request path never
        # pays for a thread wake-up (with queue.Queue each request woke the worker: a futex and a GIL hand-off).
        self._pending: deque[Observation] = deque()
        self._capacity = settings.monitor_queue_size
        self._submitted = 0  # written by the event loop only
        self._processed = 0  # written by the worker only
        self._wake = threading.Event()
        self._stopping = False
        self._worker = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._feedback: dict[tuple[str, int, str], FeedbackWindow] = {}
        self._feedback_lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self.dropped = 0
        self.log: PredictionLog | None = None
        if settings.prediction_log:
            pg = settings.state_url.startswith(("postgresql://", "postgres://"))
            store = open_store(settings.state_url if pg else "", settings.prediction_log_path)
            self.log = PredictionLog(
                store,
                self.metrics.log,
                buffer_size=settings.prediction_log_buffer,
                retention_s=settings.prediction_log_retention_days * 86_400,
            )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._worker.start()
        if self.log is not None:
            self.log.start()

    def stop(self) -> None:
        """Process what is queued, then write what the log holds."""
        if self._worker.is_alive():
            self._stopping = True
            self._wake.set()
            self._worker.join(10.0)
        if self.log is not None:
            self.log.stop()

    def prepare(self, version: Any) -> VersionState:
        """The state of a served version, built on first use (reads its reference.json)."""
        key = (version.name, version.version)
        state = self._states.get(key)
        if state is None or state.source is not version:
            with self._prepare_lock:  # the event loop and the drift endpoint's thread may both get here
                state = self._states.get(key)
                if state is None or state.source is not version:
                    state = self._states[key] = VersionState(version, self.settings)
        return state

    # -- the request path ------------------------------------------------------------------

    def observe(
        self, version: Any, region: str, arm: str, request_id: str, seen: Mapping[str, Any],
        arrays: list[np.ndarray], output: np.ndarray, predictions: list[dict[str, Any]], latency_s: float,
        logits: np.ndarray | None = None, batch_columns: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        """Add ``ood`` to each prediction and queue the rest of the work; never raises.

        ``logits``: the graph's logits output, where it has one (the energy out-of-domain score);
        ``batch_columns``: what the batch computed for these items (``service.monitoring.batch``), where it did."""
        try:
            state = self.prepare(version)
            summaries = columns = rows = images = flags = None
            computed = version.columns if batch_columns is not None else None
            values = batch_columns.tolist() if batch_columns is not None else []
            if state.input_kind == "image":
                images = seen.get("images")
                pixels = arrays[0]
                sizes = seen.get("sizes") or (
                    image_sizes(images) if images else [(pixels.shape[3], pixels.shape[2])] * len(pixels)
                )
                if computed is not None and computed.pixels:  # a few images: summaries and flags in one pass
                    quick = state.detector.image_flags(values, sizes, computed.score is not None)
                    summaries, flags = quick if quick is not None else (computed.summaries(values, sizes), None)
                if summaries is None:
                    summaries = mon.summary_matrix(pixels, sizes).tolist()
            else:
                columns, rows = seen.get("columns"), seen.get("rows")
            if flags is None:
                scores = computed.scores(values) if computed is not None else None
                flags = state.detector.flags(output, summaries, columns, logits, scores, rows)
            for prediction, item_flags in zip(predictions, flags):
                prediction["ood"] = item_flags
            logged = self.log is not None and random.random() < self.settings.prediction_log_sample_rate
            observation = Observation(
                state, region, arm, request_id, time.time(), latency_s * 1000.0, output, predictions,
                summaries, columns, images, logged, rows,
            )  # fmt: skip
        except Exception:  # monitoring must never fail a prediction
            log.exception("monitoring %s v%s failed for request %s", version.name, version.version, request_id)
            return
        if len(self._pending) >= self._capacity:
            self.dropped += 1
            self.metrics.dropped.inc()
            return
        self._pending.append(observation)
        self._submitted += 1

    def wait_idle(self, timeout_s: float = 2.0) -> bool:
        """Wait (blocking) until every queued observation is processed; False on timeout."""
        deadline = time.monotonic() + timeout_s
        target = self._submitted
        self._wake.set()  # drain now, not at the next interval
        while self._processed < target:
            if time.monotonic() > deadline or not self._worker.is_alive():
                return self._processed >= target
            time.sleep(0.002)
        return True

    # -- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        pending = self._pending
        while True:
            self._wake.wait(_DRAIN_INTERVAL_S)
            self._wake.clear()
            stopping = self._stopping
            while pending:
                batch = [pending.popleft() for _ in range(min(_MAX_BATCH, len(pending)))]
                try:
                    self._process(batch)
                except Exception:
                    log.exception("the monitor failed to process %d observations", len(batch))
                self._processed += len(batch)
            if stopping:
                return

    def _process(self, batch: list[Observation]) -> None:
        groups: dict[int, list[Observation]] = {}
        for observation in batch:
            groups.setdefault(id(observation.state), []).append(observation)
        for observations in groups.values():
            state = observations[0].state
            bins = state.bins(observations)
            estimated = state.estimated_correct(observations)
            sizes = [len(o.output) for o in observations]
            starts = np.concatenate([[0], np.cumsum(sizes)])
            with state.lock:
                state.window(ALL_REGIONS).add(bins, estimated)
                regions: dict[str, list[int]] = {}
                for i, o in enumerate(observations):
                    regions.setdefault(o.region, []).extend(range(starts[i], starts[i + 1]))
                for region, rows in regions.items():
                    state.window(region).add(bins[rows], estimated[rows] if estimated is not None else None)
                self._count(state, observations, regions)
            self._set_gauges(state, list(regions))
            if self.log is not None:
                for o in observations:
                    if o.logged:
                        self.log.append(self._record(o))

    def _count(self, state: VersionState, observations: list[Observation], regions: Mapping[str, list[int]]) -> None:
        labels = (state.name, str(state.version))
        reasons: dict[str, int] = {}
        for o in observations:
            for prediction in o.predictions:
                flags = prediction.get("ood") or {}
                state.items += 1
                if flags.get("flagged"):
                    state.flagged += 1
                for reason in flags.get("reasons", ()):
                    reasons[reason] = reasons.get(reason, 0) + 1
        for reason, n in reasons.items():
            state.reasons[reason] = state.reasons.get(reason, 0) + n
            self.metrics.ood.labels(*labels, reason).inc(n)
        for region, rows in regions.items():
            self.metrics.items.labels(*labels, region).inc(len(rows))

    def _set_gauges(self, state: VersionState, regions: list[str]) -> None:
        now = time.monotonic()
        if now - state.gauges_at < _GAUGE_INTERVAL_S:
            return
        state.gauges_at = now
        with state.lock:
            window = state.window(ALL_REGIONS)
            table = window.table(self.settings.drift_warn, self.settings.drift_threshold)
            estimates = {r: state.window(r).estimated_accuracy() for r in regions}
            state.drift_at_refresh = (_largest_psi(table), window.size)
        labels = (state.name, str(state.version))
        for row in table:
            self.metrics.drift_score.labels(*labels, row["feature"]).set(row["psi"])
        for region, estimate in estimates.items():
            if estimate is not None:
                self.metrics.estimated_accuracy.labels(*labels, region).set(estimate)

    def _record(self, o: Observation) -> tuple[Any, ...]:
        if o.rows is not None:
            inputs: Any = o.rows
        elif o.columns is not None:
            inputs = _records(o.columns)
        else:
            inputs = []
            for i, data in enumerate(o.images or []):
                item: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                item.update(zip(mon.SUMMARY_KEYS, o.summaries[i]))
                if self.settings.prediction_log_images and len(data) <= self.settings.prediction_log_image_max_bytes:
                    item["b64"] = base64.b64encode(data).decode("ascii")
                inputs.append(item)
        outputs = [p.copy() for p in o.predictions]  # copy and pop: C calls, not a Python loop over keys
        for p in outputs:
            p.pop("ood", None)
        ood = [p.get("ood") for p in o.predictions]
        dumps = orjson.dumps
        return (
            o.request_id, o.created_at, o.state.name, o.state.version, o.region, o.arm,
            dumps(inputs, default=str).decode(), dumps(outputs).decode(), dumps(ood).decode(), o.latency_ms,
        )  # fmt: skip

    # -- feedback ----------------------------------------------------------------------------

    def record_feedback(
        self, request_id: str, item: int, label: Any, value: Any, classes_of: Any
    ) -> tuple[dict[str, Any], Judgement]:
        """Attach ground truth to a logged prediction (blocking: run it in a thread).

        ``classes_of(model, version)`` gives the classes of a loaded version, or None.
        """
        if self.log is None:
            raise Unavailable("feedback needs the prediction log, and it is off (prediction_log=false)")
        store = self.log.store
        try:
            self.log.ensure_schema()
            row = store.query_one(
                "SELECT model, version, region, outputs FROM monitoring_predictions WHERE request_id = ?", (request_id,)
            )
            if row is None:  # it may still be on its way here, in the monitor queue or the log buffer
                self.wait_idle()
                self.log.flush()
                row = store.query_one(
                    "SELECT model, version, region, outputs FROM monitoring_predictions WHERE request_id = ?",
                    (request_id,),
                )
        except StoreUnavailable as exc:
            raise Unavailable(f"the prediction log is unavailable: {exc}") from exc
        if row is None:
            raise NotFound(f"request_id: no logged prediction has id {request_id!r}")
        predictions = orjson.loads(row["outputs"])
        if not 0 <= item < len(predictions):
            raise InvalidInput(f"item: request {request_id!r} has {len(predictions)} predictions, got item {item}")
        model, version, region = row["model"], int(row["version"]), row["region"]
        judgement = judge(predictions[item], classes_of(model, version), label, value)
        try:
            store.execute(
                "INSERT INTO monitoring_feedback (request_id, item, model, version, region, label, value, correct, "
                "error, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, item) DO UPDATE "
                "SET label = excluded.label, value = excluded.value, correct = excluded.correct, "
                "error = excluded.error, received_at = excluded.received_at",
                (request_id, item, model, version, region, judgement.label, judgement.value,
                 None if judgement.correct is None else int(judgement.correct), judgement.error, time.time()),
            )  # fmt: skip
        except StoreUnavailable as exc:
            raise Unavailable(f"the prediction log is unavailable: {exc}") from exc
        self._fold_in(model, version, region, (request_id, item), judgement)
        return {"model": model, "version": version, "region": region, "prediction": predictions[item]}, judgement

    def _fold_in(self, model: str, version: int, region: str, key: tuple[str, int], judgement: Judgement) -> None:
        labels = (model, str(version), region)
        self.metrics.feedback.labels(*labels).inc()
        if judgement.correct:
            self.metrics.feedback_correct.labels(*labels).inc()
        if judgement.error is not None:
            self.metrics.feedback_abs_error.labels(*labels).inc(judgement.error)
        with self._feedback_lock:
            for where in (region, ALL_REGIONS):
                window = self._feedback.get((model, version, where))
                if window is None:
                    window = self._feedback[(model, version, where)] = FeedbackWindow(self.settings.feedback_window)
                window.add(key, judgement)
            window = self._feedback[(model, version, region)]
            accuracy, error = window.accuracy(), window.mean_error()
        if accuracy is not None:
            self.metrics.live_accuracy.labels(*labels).set(accuracy)
        if error is not None:
            self.metrics.live_error.labels(*labels).set(error)

    # -- readings ----------------------------------------------------------------------------

    def live_accuracy(self, model: str, version: int, region: str | None = None) -> float | None:
        """Accuracy over the feedback window (this replica's feedback), None before any answer."""
        window = self._feedback.get((model, version, region or ALL_REGIONS))
        return window.accuracy() if window is not None else None

    def live_error(self, model: str, version: int, region: str | None = None) -> float | None:
        window = self._feedback.get((model, version, region or ALL_REGIONS))
        return window.mean_error() if window is not None else None

    def feedback_count(self, model: str, version: int, region: str | None = None) -> int:
        window = self._feedback.get((model, version, region or ALL_REGIONS))
        return len(window) if window is not None else 0

    def estimated_accuracy(self, model: str, version: int, region: str | None = None) -> float | None:
        state = self._states.get((model, version))
        if state is None:
            return None
        with state.lock:
            return state.window(region or ALL_REGIONS).estimated_accuracy()

    def drift_score(self, model: str, version: int, region: str | None = None) -> float | None:
        """The largest PSI over the features of the window (None before any traffic)."""
        state = self._states.get((model, version))
        if state is None:
            return None
        with state.lock:
            window = state.window(region or ALL_REGIONS)
            if window.size == 0:
                return None
            table = window.table(self.settings.drift_warn, self.settings.drift_threshold)
        return _largest_psi(table)

    def guardrail_readings(self) -> dict[str, ReadingSource]:
        """What the rollout guardrails judge beside their own windows (``max_drift``, ``min_live_accuracy``).

        Each reading is over the monitor's own window, not the guardrail's time window: the version's last
        ``drift_window`` items (all regions) and its last ``feedback_window`` answers, with their counts. The
        drift score is given only once that window is full: over a few dozen items PSI is mostly sampling
        noise (held-out digits score 0.66 over 30 items against a reference of the same digits). It is the
        score of the last gauge refresh (at most ``_GAUGE_INTERVAL_S`` older than the version's latest
        traffic), computed in the monitor's thread, so the guardrails never bin a window on the event loop."""
        return {"drift": self._drift_reading, "live_accuracy": self._accuracy_reading}

    def _drift_reading(self, model: str, version: int, window_s: float, now: float) -> Reading | None:
        state = self._states.get((model, version))
        if state is None or state.drift_at_refresh is None:
            return None
        score, size = state.drift_at_refresh
        return Reading(score if size >= state.capacity and state.features else None, size)

    def _accuracy_reading(self, model: str, version: int, window_s: float, now: float) -> Reading | None:
        count = self.feedback_count(model, version)
        return Reading(self.live_accuracy(model, version), count) if count else None

    def drift_report(self, version: Any, region: str | None = None) -> dict[str, Any]:
        """The drift endpoint's body for one served version."""
        state = self.prepare(version)
        warn, drift = self.settings.drift_warn, self.settings.drift_threshold
        with state.lock:
            window = state.window(region or ALL_REGIONS)
            table = window.table(warn, drift)
            size, total = window.size, window.total
            estimate = window.estimated_accuracy()
            items, flagged, reasons = state.items, state.flagged, dict(state.reasons)
        for row, feature in zip(table, state.features):
            row["reference_size"] = feature.reference_count
        inputs = [row for row in table if not row["feature"].startswith("prediction.")]
        worst = _largest_psi(table)
        name, number = state.name, state.version
        return {
            "version": number,
            "window": {"size": size, "capacity": state.capacity, "items_seen": total},
            "reference_size": max((f.reference_count for f in state.input_features), default=0),
            "drift_score": round(worst, 6),
            "verdict": verdict(worst, warn, drift) if size else "no_data",
            "drifted_features": [row["feature"] for row in table if row["verdict"] == "drift"],
            "features": inputs,
            "predictions": [row for row in table if row["feature"].startswith("prediction.")],
            "ood": {"items": items, "flagged": flagged, "flagged_share": round(flagged / items, 6) if items else 0.0,
                    "reasons": reasons, "threshold": state.detector.threshold,
                    "score": state.detector.score if state.detector.threshold is not None else None},  # fmt: skip
            "performance": {
                "validation_accuracy": state.validation_accuracy,
                "estimated_accuracy": None if estimate is None else round(estimate, 6),
                "live_accuracy": self.live_accuracy(name, number, region),
                "live_error": self.live_error(name, number, region),
                "feedback": self.feedback_count(name, number, region),
            },
        }

    def describe(self) -> dict[str, Any]:
        return {
            "queue": len(self._pending),
            "dropped": self.dropped,
            "prediction_log": self.log.describe() if self.log is not None else None,
        }


def _usable(reference: Any) -> bool:
    return isinstance(reference, Mapping) and reference.get("kind") in ("continuous", "categorical")


def _largest_psi(table: list[dict[str, Any]]) -> float:
    """A version's drift score: the largest PSI over the features of a drift table (0 with none)."""
    return max((row["psi"] for row in table), default=0.0)


def _read_reference(version: Any) -> dict[str, Any]:
    try:
        document = read_reference(version.path, version.manifest)
    except (OSError, ValueError) as exc:
        log.warning("%s v%d: cannot read its reference statistics (%s); drift is off", version.name,
                    version.version, exc)  # fmt: skip
        return {}
    return document if isinstance(document, dict) else {}


def _concatenated(observations: list[Observation], name: str) -> np.ndarray:
    """One raw column across a group of observations; all missing where a table lacks it."""
    parts = []
    for o in observations:
        table = o.columns or {}
        n = len(next(iter(table.values()))) if table else 0
        parts.append(table[name] if name in table else np.full(n, None, dtype=object))
    return np.concatenate(parts) if parts else np.array([], dtype=object)


def _records(columns: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """The table as one JSON object per row, missing values (None, NaN, pd.NA) as null."""
    names = list(columns)
    values = []
    for name in names:
        column = np.asarray(columns[name])
        missing = pd.isna(column)
        column = column.astype(object)
        column[missing] = None
        values.append(column.tolist())
    return [dict(zip(names, row)) for row in zip(*values)]
