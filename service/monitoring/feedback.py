"""Feedback: ground truth attached to logged predictions, and the live accuracy or error it gives per version.

An answer names a served prediction by the service's request id and the item; it is judged against what the
log recorded (``service.monitoring.performance.judge``), stored beside the log (``monitoring_feedback``), and
folded into a window of the version's recent answers per region and for all regions.

One answer per item counts, once, in every figure: the first answer for an item (the store's insert decides,
so two replicas racing on one item count it once) is counted in ``serving_feedback_total`` and the window; a
later answer for the same item replaces the stored one (and the judgement in this replica's window, when the
item is there) but counts nothing again. The answer says which happened, never what was predicted: a
feedback-only credential reads nothing of the log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from bundle.prediction_log import FEEDBACK, PREDICTIONS
from bundle.store import StoreUnavailable
from service.http.errors import InvalidInput, NotFound, Unavailable
from service.monitoring.log import PredictionLog
from service.monitoring.metrics import MonitorMetrics
from service.monitoring.performance import FeedbackWindow, Judgement, judge
from service.monitoring.state import ALL_REGIONS

ClassesOf = Callable[[str, int], "list[str] | None"]  # the classes of a loaded version, or None

# a served prediction: shadow records (the candidate's answers to copies) are only compared, never answered
_PREDICTION = f"SELECT model, version, region, outputs FROM {PREDICTIONS} WHERE request_id = ? AND shadow_of IS NULL"
_COLUMNS = "request_id, item, model, version, region, label, value, correct, error, received_at, source"
_INSERT = (
    f"INSERT INTO {FEEDBACK} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (request_id, item) DO NOTHING"
)
_REPLACE = (
    f"UPDATE {FEEDBACK} SET label = ?, value = ?, correct = ?, error = ?, received_at = ?, source = ? "
    "WHERE request_id = ? AND item = ?"
)

ALREADY_ANSWERED = "already_answered"


@dataclass(frozen=True)
class FeedbackOutcome:
    """What became of one answer: ``counted`` the first time an item is answered, else why not."""

    counted: bool
    reason: str | None
    model: str
    version: int
    region: str
    judgement: Judgement


class FeedbackBook:
    """Answers in, live readings out; ``settle`` makes what was just answered reach the log first."""

    def __init__(
        self,
        log: PredictionLog | None,
        metrics: MonitorMetrics,
        window: int,
        settle: Callable[[], Any],
    ) -> None:
        self.log = log
        self.metrics = metrics
        self.window = window
        self.settle = settle  # blocking: queued observations processed (so their records reach the log)
        self._windows: dict[tuple[str, int, str], FeedbackWindow] = {}
        self._lock = threading.Lock()

    def record(
        self, request_id: str, item: int, label: Any, value: Any, classes_of: ClassesOf, source: str = "api"
    ) -> FeedbackOutcome:
        """Attach ground truth to a logged prediction (blocking: run it in a thread); ``source`` says who
        answered: ``review`` (a person in the review queue) or ``api`` (a system)."""
        if self.log is None:
            raise Unavailable("feedback needs the prediction log, and it is off (prediction_log=false)")
        store = self.log.store
        try:
            self.log.ensure_schema()
            row = store.query_one(_PREDICTION, (request_id,))
            if row is None:  # it may still be on its way here, in the monitor queue or the log buffer
                self.settle()
                self.log.flush()
                row = store.query_one(_PREDICTION, (request_id,))
        except StoreUnavailable as exc:
            raise Unavailable(f"the prediction log is unavailable: {exc}") from exc
        if row is None:
            raise NotFound(f"request_id: no logged prediction has id {request_id!r}")
        predictions = orjson.loads(row["outputs"])
        if not 0 <= item < len(predictions):
            raise InvalidInput(f"item: the prediction {request_id!r} has no item {item}")
        model, version, region = row["model"], int(row["version"]), row["region"]
        judgement = judge(predictions[item], classes_of(model, version), label, value)
        correct = None if judgement.correct is None else int(judgement.correct)
        answer = (judgement.label, judgement.value, correct, judgement.error, time.time(), source)
        try:
            counted = store.execute(_INSERT, (request_id, item, model, version, region, *answer)) > 0
            if not counted:
                store.execute(_REPLACE, (*answer, request_id, item))
        except StoreUnavailable as exc:
            raise Unavailable(f"the prediction log is unavailable: {exc}") from exc
        self._fold_in(model, version, region, (request_id, item), judgement, counted)
        return FeedbackOutcome(counted, None if counted else ALREADY_ANSWERED, model, version, region, judgement)

    def _fold_in(
        self, model: str, version: int, region: str, key: tuple[str, int], judgement: Judgement, counted: bool
    ) -> None:
        labels = (model, str(version), region)
        if counted:
            self.metrics.feedback.labels(*labels).inc()
            if judgement.correct:
                self.metrics.feedback_correct.labels(*labels).inc()
            if judgement.error is not None:
                self.metrics.feedback_abs_error.labels(*labels).inc(judgement.error)
        with self._lock:
            for where in (region, ALL_REGIONS):
                window = self._windows.get((model, version, where))
                if window is None:
                    if not counted:
                        continue
                    window = self._windows[(model, version, where)] = FeedbackWindow(self.window)
                if counted or key in window:  # a repeated answer corrects the one this replica holds, if any
                    window.add(key, judgement)
            window = self._windows.get((model, version, region))
            if window is None:
                return
            accuracy, error = window.accuracy(), window.mean_error()
        if accuracy is not None:
            self.metrics.live_accuracy.labels(*labels).set(accuracy)
        if error is not None:
            self.metrics.live_error.labels(*labels).set(error)

    # -- readings ----------------------------------------------------------------------------

    def live_accuracy(self, model: str, version: int, region: str | None = None) -> float | None:
        """Accuracy over the feedback window (this replica's feedback), None before any answer."""
        window = self._windows.get((model, version, region or ALL_REGIONS))
        return window.accuracy() if window is not None else None

    def live_error(self, model: str, version: int, region: str | None = None) -> float | None:
        window = self._windows.get((model, version, region or ALL_REGIONS))
        return window.mean_error() if window is not None else None

    def count(self, model: str, version: int, region: str | None = None) -> int:
        window = self._windows.get((model, version, region or ALL_REGIONS))
        return len(window) if window is not None else 0
