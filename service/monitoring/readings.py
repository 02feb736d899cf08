"""Monitoring's readings for other components: the guardrails' drift and live accuracy, the drift report.

Readings are over the monitor's own windows: a version's last
``drift_window`` items (per region and all regions) and its last
``feedback_window`` answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.monitoring.drift import largest_psi, verdict
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
            "ood": {
                "items": items,
                "flagged": flagged,
                "flagged_share": round(flagged / items, 6) if items else 0.0,
                "reasons": reasons,
                "threshold": state.detector.threshold,
                "score": state.detector.score if state.detector.threshold is not None else None,
            },
            "performance": {
                "validation_accuracy": state.validation_accuracy,
                "estimated_accuracy": None if estimate is None else round(estimate, 6),
                "live_accuracy": self.feedback.live_accuracy(name, number, region),
                "live_error": self.feedback.live_error(name, number, region),
                "feedback": self.feedback.count(name, number, region),
            },
        }
