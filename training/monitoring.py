"""Export-time fitting for monitoring: what the service needs to judge live traffic, as plain data.

Called by :func:`training.export.export_learner`:

* :func:`image_feature_references` -- the reference bins of the per-image
  summaries (``bundle.monitoring.pixel_summaries`` of the training images as
  validation preprocesses them), the same function the service applies;
* :func:`reference_sample` -- a capped sample (``REFERENCE_SAMPLE_SIZE`` rows)
  of raw training rows, or of training image summaries, stored in
  ``reference.json`` for ``python -m training drift-report``;
* :func:`fit_monitoring` -- on the validation set: the out-of-domain
  threshold at a chosen in-domain false-alarm rate (on the energy of the
  validation logits, or on ``1 - max probability``), and the isotonic map
  that calibrates confidences for estimated accuracy (classification only).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from bundle import monitoring as mon
from bundle import reference as ref
from bundle.manifest import Monitoring, OodScore
from training.learner import Learner, activation_for

REFERENCE_SAMPLE_SIZE = 1_000  # rows kept for the classifier drift report; documented in docs/monitoring.md
DEFAULT_FALSE_ALARM_RATE = 0.01  # share of in-domain validation items the out-of-domain threshold flags


def image_summaries_of(dls: Any, split: str = "train") -> dict[str, np.ndarray]:
    """Summaries of every readable image of a split, as the service computes them for live images."""
    ds = dls._dataset(split)
    pixels, sizes = [], []
    for i in range(len(ds)):
        try:
            pixels.append(np.asarray(ds.pixels(i)))
        except Exception:  # unreadable: training skipped it too
            continue
        sizes.append(_decoded_size(ds.items[i]))
    if not pixels:
        return {key: np.array([]) for key in mon.SUMMARY_KEYS}
    return mon.pixel_summaries(np.stack(pixels), sizes)


def image_feature_references(summaries: dict[str, np.ndarray]) -> dict[str, Any]:
    return {f"image.{key}": ref.continuous_reference(values) for key, values in summaries.items()}


def reference_sample(dls: Any, summaries: dict[str, np.ndarray] | None, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``REFERENCE_SAMPLE_SIZE`` training rows (tabular: raw columns; images: their summaries)."""
    rng = np.random.default_rng(seed)
    if dls.input_kind == "image":
        if not summaries:
            return []
        n = len(next(iter(summaries.values())))
        keep = np.sort(rng.permutation(n)[:REFERENCE_SAMPLE_SIZE])
        return [{key: float(summaries[key][i]) for key in summaries} for i in keep]
    frame = dls.train_df_raw
    processor = dls.processor
    columns = [c for c in [*processor.raw_cat_names, *processor.raw_cont_names] if c in frame.columns]
    keep = np.sort(rng.permutation(len(frame))[:REFERENCE_SAMPLE_SIZE])
    rows = frame.iloc[keep][columns].to_dict(orient="records")
    return [{k: _plain(v) for k, v in row.items()} for row in rows]


def fit_monitoring(
    learn: Learner, false_alarm_rate: float, sample_size: int, ood_score: OodScore = "energy"
) -> Monitoring:
    """Calibrate on the validation set: OOD threshold and confidence calibration (classification), else defaults.

    ``ood_score`` names the score the threshold is fitted on (``bundle.monitoring.ood_score``): the
    service computes the same score from the same graph, whose logits output the parity check covers.
    """
    if learn.dls.task != "classification":
        return Monitoring(reference_sample_size=sample_size)
    raw, targets = learn.get_preds(activation=False)
    logits = raw.float().numpy()
    probs = activation_for(learn.dls.task)(raw.float()).numpy()
    target = targets.long().numpy().reshape(-1)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == target
    knots_x, knots_y = mon.fit_confidence_calibration(confidence, correct)
    return Monitoring(
        ood_score=ood_score,
        ood_threshold=mon.fit_ood_threshold(mon.ood_score(ood_score, probs, logits), false_alarm_rate),
        ood_false_alarm_rate=false_alarm_rate,
        calibration_confidence=knots_x,
        calibration_accuracy=knots_y,
        calibration_items=len(probs),
        validation_accuracy=float(correct.mean()),
        estimated_validation_accuracy=float(mon.estimated_correct(confidence, knots_x, knots_y).mean()),
        reference_sample_size=sample_size,
    )


def _decoded_size(item: Any) -> tuple[int, int]:
    """(width, height) of the stored image, as the service reads it from the encoded bytes."""
    if isinstance(item, np.ndarray):
        return int(item.shape[1]), int(item.shape[0])
    if isinstance(item, Image.Image):
        return item.size
    data = bytes(item) if isinstance(item, (bytes, bytearray)) else Path(item).read_bytes()
    return mon.encoded_size(data)


def _plain(value: Any) -> Any:
    """A JSON-ready cell: numpy scalars unwrapped, NaN as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if pd.isna(value):  # pandas NA, NaT
        return None
    return str(value)
