"""Monitoring's readings for other components: the guardrails' drift and live accuracy, the drift report.

Readings are over the monitor's own windows: a version's last
``drift_window`` items (per region and all regions) and its last
``feedback_window`` answers.

Every figure says how sure it is: a drift verdict only beyond the PSI's
noise at the window's size, and none (``collecting``) under
``drift_min_items``; estimated accuracy with an interval from the
calibration set's size, ``unknown`` when validation had too few errors to
calibrate on, and a ``disagreement`` mark where live accuracy from feedback
differs from it by more than both their sampling allows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bundle import monitoring as mon
from service.monitoring.drift import COLLECTING, largest_psi, overall_verdict
from service.monitoring.feedback import FeedbackBook
from service.monitoring.state import ALL_REGIONS, VersionState
from service.rollout.guardrails import Reading, ReadingSource
from service.settings import ServiceSettings


class MonitorReadings:
    """Readings over the versions' states and the feedback book."""

    def __init__(
        self,
        settings: ServiceSettings,
        states: dict[tuple[str, int], VersionState],
        prepare: Callable[[Any], VersionState],
        feedback: FeedbackBook,
    ) -> None:
        self.settings = settings
        self._states = states
        self.prepare = prepare
        self.feedback = feedback

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
        return largest_psi(table)

    def guardrail_readings(self) -> dict[str, ReadingSource]:
        """What the rollout guardrails judge beside their own windows (``max_drift``, ``min_live_accuracy``).

        Each reading is over the monitor's own window, not the guardrail's time window: the version's last
        ``drift_window`` items (all regions) and its last ``feedback_window`` answers, with their counts. The
        drift reading is the largest PSI among the features above their noise level at the window's size
        (``drift.significant_psi``; 0 where every feature is within its noise), so ``max_drift`` breaches
        exactly when a feature would read ``drift`` at that line. While the window holds fewer than
        ``drift_min_items`` items it is collecting: the value is None, which the guardrails do not judge
        (neither a pass nor a breach). It is the reading of the last gauge refresh (at most
        ``GAUGE_INTERVAL_S`` older than the version's latest traffic), computed in the monitor's thread, so
        the guardrails never bin a window on the event loop."""
        return {"drift": self._drift_reading, "live_accuracy": self._accuracy_reading}

    def _drift_reading(self, model: str, version: int, window_s: float, now: float) -> Reading | None:
        state = self._states.get((model, version))
        if state is None or state.drift_at_refresh is None:
            return None
        score, size = state.drift_at_refresh
        return Reading(score if state.features else None, size)

    def _accuracy_reading(self, model: str, version: int, window_s: float, now: float) -> Reading | None:
        count = self.feedback.count(model, version)
        return Reading(self.feedback.live_accuracy(model, version), count) if count else None

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
        worst = largest_psi(table)
        number = state.version
        applied = state.detector.score if state.detector.threshold is not None else None
        return {
            "version": number,
            "window": {"size": size, "capacity": state.capacity, "items_seen": total, "min_items": window.min_items},
            "reference_size": max((f.reference_count for f in state.input_features), default=0),
            "drift_score": round(worst, 6),
            "verdict": overall_verdict(table),
            "drifted_features": [row["feature"] for row in table if row["verdict"] == "drift"],
            "features": inputs,
            "predictions": [row for row in table if row["feature"].startswith("prediction.")],
            "ood": {
                "items": items,
                "flagged": flagged,
                "flagged_share": round(flagged / items, 6) if items else 0.0,
                "reasons": reasons,
                "threshold": state.detector.threshold,
                "score": applied,
                "fallback": applied is not None and applied != state.manifest_score,
            },
            "performance": self._performance(state, estimate, size, region),
        }

    def _performance(
        self, state: VersionState, estimate: float | None, size: int, region: str | None
    ) -> dict[str, Any]:
        """Estimated accuracy with its interval (or ``unknown``, and why), live accuracy with its interval, and
        whether they disagree beyond both."""
        name, number = state.name, state.version
        live = self.feedback.live_accuracy(name, number, region)
        count = self.feedback.count(name, number, region)
        interval = None
        if state.calibration_problem is not None:
            status = "unknown"
        elif estimate is None:
            status = COLLECTING if state.knots is not None else "none"
        else:
            status = "estimated"
            interval = [round(v, 6) for v in mon.estimate_interval(estimate, state.calibration_items, size)]
        live_interval = [round(v, 6) for v in mon.accuracy_interval(live, count)] if live is not None else None
        disagreement = None
        if status == "estimated" and live is not None and estimate is not None:
            effective = 1.0 / (1.0 / state.calibration_items + 1.0 / size)
            disagreement = mon.accuracies_disagree(estimate, effective, live, count)
        return {
            "validation_accuracy": state.validation_accuracy,
            "estimated_accuracy": None if estimate is None or status != "estimated" else round(estimate, 6),
            "estimated_accuracy_interval": interval,
            "estimated_accuracy_status": status,
            "estimated_accuracy_problem": state.calibration_problem,
            "calibration": {"items": state.calibration_items, "errors": state.calibration_errors},
            "live_accuracy": live,
            "live_accuracy_interval": live_interval,
            "live_error": self.feedback.live_error(name, number, region),
            "feedback": count,
            "disagreement": disagreement,
        }
