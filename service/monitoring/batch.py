"""What monitoring computes once per batch, where the batch runs, not once per request.

A request's out-of-domain flags need the model's own score (energy or
``1 - max p``) and, for image models, each image's pixel summaries
(brightness, contrast, saturation: ``bundle.monitoring.summary_matrix``).
Both are a dozen numpy calls whatever the number of items, so for a small
model they cost far more per request than per batch: computed over the whole
batch they are nearly free. :class:`BatchColumns` gives each batch's result
these columns after the model's outputs (side by side, like the logits
beside the probabilities; see ``service.models.runtime``), and
:meth:`BatchColumns.split` takes a request's rows apart again.

Where they are computed: when the service opens a version with monitoring
on, :meth:`BatchColumns.graph` adds them to the model's ONNX graph as one
more output (``service.monitoring.graph``), so ONNX Runtime computes them in
the batch's own run, several times cheaper than numpy on a busy event loop.
A graph that cannot take them gets them from numpy after each run instead
(:meth:`BatchColumns.wrap`), wherever the batch runs: on the event loop for a
model the batch policy runs inline, in the runtime thread otherwise.

Columns, in order: ``score`` (where the version has a calibrated threshold),
then ``brightness``, ``contrast``, ``saturation`` (image models). A version
with neither, or whose first output is not ``[batch, k]``, gets no columns,
and the monitor computes what it needs per request instead.

Which score: the manifest's ``monitoring.ood_score``, except that the
Mahalanobis distance is only computed inside the graph (it reads the
penultimate features, which the runtime never fetches): where the graph
cannot take the nodes, or the bundle's feature statistics cannot be read,
the version falls back to the score export calibrated next (``energy``,
then ``max_softmax``), with that score's threshold (:func:`model_score`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from bundle import monitoring as mon
from bundle.manifest import LOGITS_OUTPUT, Manifest, TensorSpec
from service.models.runtime import OnnxRuntime
from service.monitoring.graph import COLUMNS_OUTPUT, with_columns

log = logging.getLogger("service.monitoring")

RunBatch = Callable[[Sequence[np.ndarray]], np.ndarray]
PIXEL_KEYS = mon.SUMMARY_KEYS[:3]  # what pixels alone give; width, height and aspect come from each request


FALLBACK_SCORES = ("energy", "max_softmax")  # in order, where a bundle's own score cannot be computed


def model_score(manifest: Manifest, in_graph: bool) -> tuple[str, float] | None:
    """The model-based out-of-domain score a version applies, and its threshold; None without one.

    ``in_graph``: whether the version's graph computes the columns (the Mahalanobis score needs it); else
    the first of :data:`FALLBACK_SCORES` that export calibrated and the graph can give."""
    calibration = manifest.monitoring
    if manifest.task != "classification" or calibration is None or calibration.ood_threshold is None:
        return None
    if calibration.ood_score != "mahalanobis" or in_graph:
        return calibration.ood_score, calibration.ood_threshold
    has_logits = LOGITS_OUTPUT in [spec.name for spec in manifest.onnx.outputs[1:]]
    for name in FALLBACK_SCORES:
        if name in calibration.ood_thresholds and (name != "energy" or has_logits):
            return name, calibration.ood_thresholds[name]
    return None


def layout(manifest: Manifest, in_graph: bool = True) -> tuple[str | None, bool]:
    """A version's columns: its out-of-domain score (None without a calibrated threshold), and whether the
    pixel summaries follow."""
    score = model_score(manifest, in_graph)
    return (score[0] if score is not None else None), manifest.input_kind == "image"


def read_feature_space(manifest: Manifest, folder: Path) -> mon.FeatureSpace | None:
    """The bundle's fitted feature statistics (``reference.json`` ``feature_space``); None where it has none or
    they cannot be read (logged: the version falls back to another score)."""
    if not manifest.reference_file:
        return None
    try:
        document = json.loads((folder / manifest.reference_file).read_text())
        return mon.FeatureSpace.from_dict(document["feature_space"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s v%d: no feature statistics (%s)", manifest.name, manifest.version, exc)
        return None


class BatchColumns:
    """Per-batch monitoring columns for one version."""

    def __init__(self, manifest: Manifest, runtime: OnnxRuntime) -> None:
        names, widths = runtime.output_names, runtime.output_widths
        self.in_graph = COLUMNS_OUTPUT in names  # the runtime's graph computes them (see graph())
        self.score, self.pixels = layout(manifest, self.in_graph)
        self.first = slice(0, widths[0])  # widths[0] is None for a lone output: all of it
        self.logits: slice | None = None
        if self.score == "energy" and not self.in_graph:
            at = names.index(LOGITS_OUTPUT)
            start = sum(w or 0 for w in widths[:at])
            self.logits = slice(start, start + (widths[at] or 0))
        self.width = (self.score is not None) + 3 * self.pixels

    @classmethod
    def for_version(cls, manifest: Manifest, runtime: OnnxRuntime) -> BatchColumns | None:
        """The columns of a version, or None where it has none or its outputs are not ``[batch, k]``."""
        columns = cls(manifest, runtime)
        first_rank = len(runtime.session.get_outputs()[0].shape)
        return columns if columns.width and first_rank == 2 else None

    @staticmethod
    def graph(manifest: Manifest, model_path: Path) -> tuple[bytes, TensorSpec] | None:
        """The model at ``model_path`` with the columns as one more output, and that output's spec; None where
        the graph cannot take them (numpy computes them then). Never raises: monitoring must not stop a load."""
        score, pixels = layout(manifest)
        if not (score or pixels):
            return None
        space, features = None, ""
        if score == "mahalanobis" and manifest.monitoring is not None:
            space, features = read_feature_space(manifest, model_path.parent), manifest.monitoring.feature_output or ""
            if space is None:
                return None  # the numpy columns, with a fallback score
        try:
            model = with_columns(onnx.load(str(model_path)), score, pixels, space, features)
        except Exception:
            log.exception(
                "%s v%d: monitoring's columns are computed by numpy, not in the graph", manifest.name, manifest.version
            )
            return None
        if model is None:
            return None
        width = model.graph.output[-1].type.tensor_type.shape.dim[1].dim_value
        return model.SerializeToString(), TensorSpec(name=COLUMNS_OUTPUT, dtype="float32", shape=["batch", width])

    def wrap(self, run: RunBatch) -> RunBatch:
        """``run`` with this version's columns appended to each batch's rows (``run`` itself where its graph
        computes them)."""
        if self.in_graph:
            return run

        def run_with_columns(arrays: Sequence[np.ndarray]) -> np.ndarray:
            outputs = run(arrays)
            return np.concatenate([outputs, self.compute(arrays, outputs)], axis=1)

        return run_with_columns

    def compute(self, arrays: Sequence[np.ndarray], outputs: np.ndarray) -> np.ndarray:
        """float32 [batch, width]: the columns of one batch, in numpy (``outputs``: the model's outputs side by
        side)."""
        parts = []
        if self.score is not None:
            logits = outputs[:, self.logits] if self.logits is not None else None
            parts.append(mon.ood_score(self.score, outputs[:, self.first], logits)[:, None])
        if self.pixels:
            pixels = arrays[0]
            parts.append(mon.summary_matrix(pixels, [(0, 0)] * len(pixels))[:, :3])
        return np.concatenate(parts, axis=1).astype(np.float32)

    def scores(self, values: list[list[float]]) -> list[float] | None:
        """The model's score of each item, from a request's columns as lists (None without a score)."""
        return [row[0] for row in values] if self.score is not None else None

    def summaries(self, values: list[list[float]], sizes: Sequence[tuple[int, int]]) -> list[list[float]] | None:
        """Each image's ``SUMMARY_KEYS`` values: the pixel columns, then the decoded (width, height) and aspect."""
        if not self.pixels:
            return None
        return [[*row[-3:], w, h, w / max(h, 1)] for row, (w, h) in zip(values, sizes)]

    def split(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A request's rows as (the model's outputs side by side, its monitoring columns)."""
        return rows[:, : -self.width], rows[:, -self.width :]
