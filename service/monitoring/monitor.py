"""The monitor: out-of-domain flags on the request path, everything else in a background thread.

On the request path :meth:`Monitor.observe` only scores the request for
out-of-domain inputs (the response carries the flags) and hands an
:class:`Observation` to the worker (``service.monitoring.worker``), which
bins it into the drift windows of its version, updates the estimated
accuracy, counts out-of-domain reasons, sets the gauges, and hands a record
to the prediction log (``service.monitoring.log``). The shadow runner hands
the candidate's answers to copies of logged requests to :meth:`Monitor.log_shadow`.
Feedback is kept by
``service.monitoring.feedback``; readings for the guardrails, the drift
endpoint and the pages by ``service.monitoring.readings``.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from typing import Any

from bundle import monitoring as mon
from service.http.request_id import new_request_id
from service.monitoring.feedback import ClassesOf, FeedbackBook, FeedbackOutcome
from service.monitoring.log import PredictionLog
from service.monitoring.metrics import MonitorMetrics
from service.monitoring.observation import Observation, ServedRequest
from service.monitoring.ood import image_sizes
from service.monitoring.readings import MonitorReadings
from service.monitoring.records import Unencodable, log_record, shadow_record
from service.monitoring.state import VersionState
from service.monitoring.worker import MonitorWorker
from service.rollout.guardrails import ReadingSource
from service.settings import ServiceSettings

log = logging.getLogger("service.monitoring")


class Monitor:
    """Drift windows, out-of-domain flags, estimated and live accuracy, the prediction log, feedback."""

    def __init__(
        self, settings: ServiceSettings, metrics: MonitorMetrics, prediction_log: PredictionLog | None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.log = prediction_log
        self._states: dict[tuple[str, int], VersionState] = {}
        self._prepare_lock = threading.Lock()
        self.worker = MonitorWorker(
            metrics,
            settings.monitor_queue_size,
            settings.drift_warn,
            settings.drift_threshold,
            self._log if prediction_log is not None else None,
        )
        self.feedback = FeedbackBook(prediction_log, metrics, settings.feedback_window, self.worker.wait_idle)
        self.readings = MonitorReadings(settings, self._states, self.prepare, self.feedback)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.worker.start()
        if self.log is not None:
            self.log.start()

    def stop(self) -> None:
        """Process what is queued, then write what the log holds."""
        self.worker.stop()
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

    def observe(self, served: ServedRequest) -> None:
        """Add ``ood`` to each prediction and queue the rest of the work; never raises."""
        version, raw, arrays, output = served.version, served.raw, served.arrays, served.output
        batch_columns, predictions = served.columns, served.predictions
        try:
            state = self.prepare(version)
            summaries = columns = rows = images = flags = None
            computed = version.columns if batch_columns is not None else None
            values = batch_columns.tolist() if batch_columns is not None else []
            if state.input_kind == "image":
                images = raw.images
                pixels = arrays[0]
                sizes = raw.sizes or (
                    image_sizes(images) if images else [(pixels.shape[3], pixels.shape[2])] * len(pixels)
                )
                if computed is not None and computed.pixels:  # a few images: summaries and flags in one pass
                    quick = state.detector.image_flags(values, sizes, computed.score is not None)
                    summaries, flags = quick if quick is not None else (computed.summaries(values, sizes), None)
                if summaries is None:
                    summaries = mon.summary_matrix(pixels, sizes).tolist()
            else:
                columns, rows = raw.columns, raw.rows
            if flags is None:
                scores = computed.scores(values) if computed is not None else None
                flags = state.detector.flags(output, summaries, columns, served.logits, scores, rows)
            for prediction, item_flags in zip(predictions, flags):
                prediction["ood"] = item_flags
            logged = self.log is not None and self.sampled(served.request_id)
            observation = Observation(
                state,
                served.region,
                served.arm,
                served.request_id,
                time.time(),
                served.latency_s * 1000.0,
                output,
                predictions,
                summaries,
                columns,
                images,
                logged,
                rows,
                served.client_request_id,
            )
        except Exception:  # monitoring must never fail a prediction
            log.exception("monitoring %s v%s failed for request %s", version.name, version.version, served.request_id)
            return
        self.worker.submit(observation)

    def sampled(self, request_id: str) -> bool:
        """Whether a request is logged: decided by its id, so a shadow copy follows the request it copies."""
        rate = self.settings.prediction_log_sample_rate
        return rate >= 1.0 or zlib.crc32(request_id.encode()) < rate * 2**32

    def _log(self, observation: Observation) -> None:
        """Hand one observation's record to the log; never raises (the worker logs the others of its batch)."""
        assert self.log is not None
        s = self.settings
        try:
            record = log_record(
                observation, s.prediction_log_images, s.prediction_log_image_max_bytes, s.prediction_log_image_sample
            )
        except Unencodable as exc:
            log.warning("request %s cannot be logged (%s); dropped", observation.request_id, exc)
            self.log.drop("unencodable")
            return
        except Exception:
            log.exception("request %s cannot be logged; dropped", observation.request_id)
            self.log.drop("unencodable")
            return
        self.log.append(record)

    def log_shadow(
        self,
        stable_request_id: str,
        stable: tuple[str, int, str, str],
        candidate_version: int,
        predictions: list[dict[str, Any]],
        disagreed: list[int],
    ) -> None:
        """Log the candidate's answer to a copy of a logged request (arm ``shadow``, linked to it by its id), and
        flag the stable items it disagreed on for review. ``stable`` is (model, version, region, arm)."""
        if self.log is None or not self.sampled(stable_request_id):
            return
        try:
            record = shadow_record(
                new_request_id(), time.time(), stable, candidate_version, stable_request_id, disagreed, predictions
            )
        except Unencodable:
            self.log.drop("unencodable")
            return
        self.log.append(record)

    def wait_idle(self, timeout_s: float = 2.0) -> bool:
        """Wait (blocking) until every queued observation is processed; False on timeout."""
        return self.worker.wait_idle(timeout_s)

    # -- feedback and readings -------------------------------------------------------------

    def record_feedback(
        self, request_id: str, item: int, label: Any, value: Any, classes_of: ClassesOf, source: str = "api"
    ) -> FeedbackOutcome:
        """Attach ground truth to a logged prediction (blocking: run it in a thread)."""
        return self.feedback.record(request_id, item, label, value, classes_of, source)

    def guardrail_readings(self) -> dict[str, ReadingSource]:
        return self.readings.guardrail_readings()

    def drift_report(self, version: Any, region: str | None = None) -> dict[str, Any]:
        return self.readings.drift_report(version, region)

    def live_accuracy(self, model: str, version: int, region: str | None = None) -> float | None:
        return self.feedback.live_accuracy(model, version, region)

    def estimated_accuracy(self, model: str, version: int, region: str | None = None) -> float | None:
        return self.readings.estimated_accuracy(model, version, region)

    def drift_score(self, model: str, version: int, region: str | None = None) -> float | None:
        return self.readings.drift_score(model, version, region)

    def log_status(self) -> dict[str, Any] | None:
        """The prediction log's health for readiness (None when the log is off)."""
        return self.log.status() if self.log is not None else None

    def describe(self) -> dict[str, Any]:
        return {
            "queue": self.worker.queued,
            "dropped": self.worker.dropped,
            "prediction_log": self.log.describe() if self.log is not None else None,
        }
