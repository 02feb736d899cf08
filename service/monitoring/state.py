"""One served version as monitoring knows it: reference bins, out-of-domain detector, calibration and windows."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from bundle import monitoring as mon
from bundle.manifest import read_reference
from service.monitoring.drift import DriftWindow, FeatureBins
from service.monitoring.observation import Observation
from service.monitoring.ood import REASONS, OODDetector
from service.settings import ServiceSettings

log = logging.getLogger("service.monitoring")

ALL_REGIONS = "*"


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
        columns = getattr(version, "columns", None)  # the graph computes the Mahalanobis score, or a fallback
        in_graph = columns is not None and columns.in_graph
        self.detector = OODDetector(manifest, features, settings.ood_image_slack, in_graph, settings.ood_range_slack)
        self.manifest_score = manifest.monitoring.ood_score if manifest.monitoring is not None else None
        calibration = manifest.monitoring
        self.calibration_items = calibration.calibration_items if calibration is not None else 0
        self.calibration_errors = calibration.errors() if calibration is not None else None
        has_knots = calibration is not None and bool(calibration.calibration_confidence)
        # classification with a calibration that saw enough errors; else estimated accuracy is unknown, and why
        self.calibration_problem = (
            mon.calibration_problem(self.calibration_items, self.calibration_errors) if has_knots else None
        )
        if self.task == "classification" and not has_knots:
            self.calibration_problem = "the bundle has no confidence calibration"
        self.knots = (
            (calibration.calibration_confidence, calibration.calibration_accuracy)
            if calibration is not None and has_knots and self.task == "classification" and not self.calibration_problem
            else None
        )
        self.validation_accuracy = calibration.validation_accuracy if calibration is not None else None
        self.capacity = settings.drift_window
        self.min_items = settings.drift_min_items
        self.windows: dict[str, DriftWindow] = {}
        self.lock = threading.Lock()
        self.items = 0
        self.flagged = 0
        self.reasons = dict.fromkeys(REASONS, 0)
        self.gauges_at = 0.0
        self.drift_at_refresh: tuple[float | None, int] | None = (
            None  # (drift.significant_psi, items) at the last refresh
        )

    def window(self, region: str) -> DriftWindow:
        found = self.windows.get(region)
        if found is None:
            found = self.windows[region] = DriftWindow(self.features, self.capacity, self.min_items)
        return found

    def bins(self, observations: list[Observation]) -> np.ndarray:
        """[items, features] bin indices of a group of observations of this version."""
        outputs = np.concatenate([o.output for o in observations])
        columns = []
        if self.input_features:
            if self.input_kind == "image":
                summaries = np.array([row for o in observations for row in o.summaries or ()], dtype=np.float64)
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


def _usable(reference: Any) -> bool:
    return isinstance(reference, Mapping) and reference.get("kind") in ("continuous", "categorical")


def _read_reference(version: Any) -> dict[str, Any]:
    try:
        document = read_reference(version.path, version.manifest)
    except (OSError, ValueError) as exc:
        log.warning(
            "%s v%d: cannot read its reference statistics (%s); drift is off", version.name, version.version, exc
        )
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
