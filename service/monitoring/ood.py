"""Out-of-domain flags for every prediction: input checks against the reference, and the model's own score.

Reasons (a bounded metric label):

* ``unseen_category`` -- a categorical value training never saw;
* ``out_of_range`` -- a continuous value outside the training minimum..maximum widened by ``range_slack`` of
  it on each side (the extremes of a few hundred rows are themselves a sample: a held-out penguin lies
  beyond the raw range of 192 training rows about one time in 25);
* ``unexpected_missing`` -- a missing value in a column that never had one in training;
* ``image_summary`` -- an image whose brightness, contrast or saturation lies outside the training range
  widened by ``slack`` (a share of the range, or of the value, whichever is larger);
* ``image_aspect`` -- an image whose aspect ratio (width / height) is more than :data:`EXTREME_ASPECT` times
  outside training's range: resizing it to the model's input distorts or crops away much of what it shows.
  Width and height alone never flag a prediction (users resize; resizing is preprocessing's job): they are
  drift features, in the drift windows and the drift report;
* ``model_score`` -- the model's own score above the threshold export calibrated on validation data (at
  ``ood_false_alarm_rate``): the Mahalanobis distance of its penultimate features where the bundle exports
  them, the energy ``-logsumexp(logits)`` where it exports its logits, ``1 - max probability`` for older
  ones (``service.monitoring.batch.model_score`` says which a version applies).

``score`` is the model's score where the bundle has a calibrated one
(classification), else the share of checked inputs that failed a check.
Everything here runs on the request path: the model's score and the images' pixel summaries
come computed once per batch (``service.monitoring.batch``), and what is left per request is
plain Python on a few numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bundle import monitoring as mon
from bundle.manifest import Manifest
from bundle.tabular import category_levels
from service.monitoring.batch import model_score
from service.monitoring.drift import _numbers

_VECTOR_FROM = 16  # items from which one numpy call beats a Python loop
_PLAIN_ROWS = 8  # a table of at most this many rows is checked in plain Python (see OODDetector.plain_flags)
_PLAIN_TYPES = frozenset((str, int, float, type(None)))  # what JSON rows hold (bool aside): the plain path's types
REASONS = ("unseen_category", "out_of_range", "unexpected_missing", "image_summary", "image_aspect", "model_score")
PIXEL_KEYS = ("brightness", "contrast", "saturation")  # summaries that flag a prediction (reason image_summary)
EXTREME_ASPECT = 2.0  # an aspect ratio this many times outside training's range flags a prediction (image_aspect)
_ASPECT = mon.SUMMARY_KEYS.index("aspect")


class OODDetector:
    """Applies one version's reference and calibration to a request's inputs and outputs.

    ``in_graph``: whether the version's graph computes its monitoring columns, which decides the model-based
    score it applies and its threshold (``batch.model_score``: the Mahalanobis score only in the graph)."""

    def __init__(
        self,
        manifest: Manifest,
        features: Mapping[str, Any],
        image_slack: float,
        in_graph: bool = False,
        range_slack: float = 0.0,
    ) -> None:
        self.input_kind = manifest.input_kind
        applied = model_score(manifest, in_graph)
        self.score: str = applied[0] if applied is not None else "max_softmax"
        self.threshold: float | None = applied[1] if applied is not None else None
        # images: [low, high] per summary (in SUMMARY_KEYS order); unbounded where the reference has no range,
        # and for width and height. The pixel summaries' training range is widened by the slack, the aspect's
        # by a factor of EXTREME_ASPECT either way.
        self.image_low = [-math.inf] * len(mon.SUMMARY_KEYS)
        self.image_high = [math.inf] * len(mon.SUMMARY_KEYS)
        self.image_reasons = ["image_summary"] * len(mon.SUMMARY_KEYS)
        self.image_reasons[_ASPECT] = "image_aspect"
        self.image_checks = 0
        for i, key in enumerate(mon.SUMMARY_KEYS):
            ref = features.get(f"image.{key}")
            if ref is None or not _has_range(ref):
                continue
            if key in PIXEL_KEYS:
                margin = image_slack * max(ref["max"] - ref["min"], abs(ref["max"]), 1e-9)
                self.image_low[i], self.image_high[i] = ref["min"] - margin, ref["max"] + margin
            elif key == "aspect" and ref["min"] > 0:
                self.image_low[i], self.image_high[i] = ref["min"] / EXTREME_ASPECT, ref["max"] * EXTREME_ASPECT
            else:
                continue
            self.image_checks += 1
        self.image_bounds = [  # the bounded summaries only: (index, low, high, reason)
            (i, self.image_low[i], self.image_high[i], self.image_reasons[i])
            for i in range(len(mon.SUMMARY_KEYS))
            if math.isfinite(self.image_low[i]) or math.isfinite(self.image_high[i])
        ]
        # tables
        self.vocab: dict[str, frozenset[str]] = {}
        self.ranges: dict[str, tuple[float, float]] = {}
        self.never_missing: list[str] = []
        if manifest.tabular is not None:
            processor = manifest.tabular.processor
            vocab = (processor.get("categorify") or {}).get("vocab", {})
            for name, ref in features.items():
                if ref.get("kind") == "categorical" and name in vocab:
                    self.vocab[name] = frozenset(v for v in vocab[name] if v != "#na#")
                elif _has_range(ref):
                    low, high = float(ref["min"]), float(ref["max"])
                    margin = range_slack * (high - low)
                    self.ranges[name] = (low - margin, high + margin)
                if ref.get("missing", 0.0) == 0.0 and ref.get("count"):
                    self.never_missing.append(name)
        self.checked_columns = sorted({*self.vocab, *self.ranges, *self.never_missing})
        bounds = np.array(list(self.ranges.values()), dtype=np.float64).reshape(-1, 2)
        self.range_low, self.range_high = bounds[:, :1], bounds[:, 1:]  # [columns, 1], against [columns, rows]
        self.checks = self.image_checks if self.input_kind == "image" else len(features)

    def image_failures(self, summaries: Sequence[Sequence[float]]) -> list[tuple[set[str], int]]:
        """Each image's reasons, and how many of its summaries (``SUMMARY_KEYS`` order) lie out of range.

        Plain Python: for the few images of a request it is cheaper than numpy's per-call cost."""
        low, high, names = self.image_low, self.image_high, self.image_reasons
        judged = []
        for row in summaries:
            why = {name for v, lo, hi, name in zip(row, low, high, names) if v < lo or v > hi}
            judged.append((why, sum(v < lo or v > hi for v, lo, hi in zip(row, low, high))))
        return judged

    def image_flags(
        self, values: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]], scored: bool
    ) -> tuple[list[list[float]], list[dict[str, Any]]] | None:
        """:meth:`flags` of a few images from their batch columns, and their ``SUMMARY_KEYS`` values, in one pass.

        ``values``: each image's columns (``service.monitoring.batch``: the model's score first when ``scored``,
        the three pixel summaries last); ``sizes``: each one's (width, height) from its header. The request
        path's common case, in plain Python with no intermediate lists; None where :meth:`flags` must decide
        (more than ``_VECTOR_FROM`` images, or a threshold without a score column)."""
        threshold = self.threshold
        if len(values) > _VECTOR_FROM or (threshold is not None and not scored):
            return None
        bounds = self.image_bounds
        checks = max(self.checks, 1)
        summaries: list[list[float]] = []
        flags: list[dict[str, Any]] = []
        for row, (width, height) in zip(values, sizes):
            summary = [row[-3], row[-2], row[-1], width, height, width / max(height, 1)]
            summaries.append(summary)
            failed = 0
            reasons: list[str] = []
            for i, lo, hi, name in bounds:
                value = summary[i]
                if value < lo or value > hi:
                    failed += 1
                    if name not in reasons:
                        reasons.append(name)
            if threshold is None:
                score = failed / checks
            else:
                score = row[0]
                if score > threshold:
                    reasons.append("model_score")
            if len(reasons) > 1:
                reasons.sort()  # as flags() gives them
            flags.append({"score": round(float(score), 6), "flagged": bool(reasons), "reasons": reasons})
        return summaries, flags

    def tabular_flags(
        self, columns: Mapping[str, np.ndarray], rows: Sequence[Any] | None = None
    ) -> tuple[list[set[str]], list[float]]:
        """The reasons of each row, and how many of its checks failed, from the raw column arrays.

        Each check gives a boolean row per column; they are stacked so that the
        counting is a few operations per request whatever the number of columns
        (:meth:`array_flags`). A few rows of JSON's own types take :meth:`plain_flags` instead,
        and one JSON row (``rows``, as it was sent) :meth:`row_flags`.
        """
        n = len(next(iter(columns.values()))) if columns else 0
        if rows is not None and n == 1 and type(rows[0]) is dict:
            try:
                one = self.row_flags(rows[0])
            except OverflowError:  # an int too large for a float: numpy's path says what it makes of it
                one = None
            if one is not None:
                return [one[0]], [one[1]]
        if n <= _PLAIN_ROWS and (plain := self.plain_flags(columns, n)) is not None:
            return plain
        return self.array_flags(columns, n)

    def row_flags(self, row: dict[str, Any]) -> tuple[set[str], float] | None:
        """:meth:`plain_flags` of one JSON row read straight from its dict (no column arrays): the reasons and
        the failed checks; None where a value is not what that path takes (it decides then)."""
        why: set[str] = set()
        count = 0
        for name, vocab in self.vocab.items():
            value = row.get(name)
            kind = type(value)
            if kind is str:
                level = value
            elif kind is int:
                level = str(value)
            elif value is None:
                continue
            else:
                return None
            if level not in vocab:
                count += 1
                why.add("unseen_category")
        for name, (low, high) in self.ranges.items():
            value = row.get(name)
            kind = type(value)
            if (kind is float or kind is int) and value is not None:
                if math.isfinite(value) and not low <= value <= high:
                    count += 1
                    why.add("out_of_range")
            elif value is not None:
                return None
        for name in self.never_missing:
            value = row.get(name)
            kind = type(value)
            if value is None or (kind is float and value != value):
                count += 1
                why.add("unexpected_missing")
            elif kind not in _PLAIN_TYPES:
                return None
        return why, float(count)

    def array_flags(self, columns: Mapping[str, np.ndarray], n: int) -> tuple[list[set[str]], list[float]]:
        """:meth:`tabular_flags` in numpy, for any rows and types."""
        unseen = [_unseen(category_levels(_column(columns, name, n)), vocab) for name, vocab in self.vocab.items()]
        numbers = _matrix(
            [_numbers(columns[name]) if name in columns else np.full(n, np.nan) for name in self.ranges], n, np.float64
        )
        outside = np.isfinite(numbers) & ((numbers < self.range_low) | (numbers > self.range_high))
        missing = [_missing(_column(columns, name, n)) for name in self.never_missing]
        failures = {
            "unseen_category": _matrix(unseen, n, bool),
            "out_of_range": outside,
            "unexpected_missing": _matrix(missing, n, bool),
        }
        failed = np.concatenate(list(failures.values())).sum(axis=0, dtype=np.float64)
        reasons: list[set[str]] = [set() for _ in range(n)]
        for reason, matrix in failures.items():
            for i in np.flatnonzero(matrix.any(axis=0)):
                reasons[i].add(reason)
        return reasons, failed.tolist()

    def plain_flags(self, columns: Mapping[str, np.ndarray], n: int) -> tuple[list[set[str]], list[float]] | None:
        """:meth:`tabular_flags` of a few rows in plain Python; None (take the numpy path) unless every checked
        column is an object array of strings, ints, floats and None, with one type per categorical column.

        The numpy path costs a few dozen calls whatever the rows, several microseconds each on a busy event
        loop: most of a one-row request's monitoring. The values here are judged as that path judges them:
        a level is the string itself or an int's ``str`` (``category_levels``), a number outside the
        training range when finite, missing when None or NaN, and an absent column missing everywhere."""
        values: dict[str, list[Any]] = {}
        for name in self.checked_columns:
            column = columns.get(name)
            if column is None:
                values[name] = [None] * n
                continue
            if not isinstance(column, np.ndarray) or column.dtype.kind != "O":
                return None
            items = column.tolist()
            types = set(map(type, items))
            if not types <= _PLAIN_TYPES:
                return None
            if name in self.vocab and (float in types or len(types - {type(None)}) > 1):
                return None  # float levels print specially, mixed columns take the general path: numpy's
            if name in self.ranges and str in types:
                return None  # text in a numeric column: pandas decides what it reads as
            values[name] = items
        # one row at a time, by row_flags' rules: the checks above leave it nothing to refuse
        try:
            judged = [self.row_flags({name: items[i] for name, items in values.items()}) for i in range(n)]
        except OverflowError:  # an int too large for a float: numpy's path says what it makes of it
            return None
        if any(one is None for one in judged):
            return None
        return [one[0] for one in judged], [one[1] for one in judged]  # type: ignore[index]

    def flags(
        self,
        output: np.ndarray,
        summaries: Sequence[Sequence[float]] | None,
        columns: Mapping[str, np.ndarray] | None,
        logits: np.ndarray | None = None,
        scores: Sequence[float] | None = None,
        rows: Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        """``{"score", "flagged", "reasons"}`` per item.

        ``summaries``: each image's ``SUMMARY_KEYS`` values; ``columns``: a table's raw column arrays;
        ``logits`` where the graph outputs them;
        ``scores``: the model's score of each item where the batch already computed it
        (``service.monitoring.batch``), else it is computed here from ``output`` and ``logits``;
        ``rows``: the JSON rows the table came from, where it came as JSON."""
        n = len(output)
        reasons: list[set[str]] = [set() for _ in range(n)]
        failed: Sequence[float] = [0] * n
        if summaries is not None:
            judged = self.image_failures(summaries)
            reasons, failed = [why for why, _ in judged], [count for _, count in judged]
        elif columns is not None:
            reasons, failed = self.tabular_flags(columns, rows)
        if self.threshold is not None:
            if scores is None:
                scores = mon.ood_score(self.score, output, logits).tolist()
            threshold = self.threshold
            for why, score in zip(reasons, scores):
                if score > threshold:
                    why.add("model_score")
        else:
            checks = max(self.checks, 1)
            scores = [count / checks for count in failed]
        if n > _VECTOR_FROM:
            rounded = np.round(np.asarray(scores, dtype=np.float64), 6).tolist()
        else:
            rounded = [round(float(score), 6) for score in scores]
        return [
            {"score": score, "flagged": True, "reasons": sorted(why)}
            if why
            else {"score": score, "flagged": False, "reasons": []}
            for score, why in zip(rounded, reasons)
        ]


def _column(columns: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    return columns[name] if name in columns else np.full(n, None, dtype=object)


def _matrix(rows: list[np.ndarray], n: int, dtype: Any) -> np.ndarray:
    """[len(rows), n], also for no rows."""
    return np.array(rows, dtype=dtype) if rows else np.zeros((0, n), dtype=dtype)


def _unseen(levels: np.ndarray, vocab: frozenset[str]) -> np.ndarray:
    """Which levels (``None`` where missing) are present but not in ``vocab`` (set lookups, applied by map)."""
    known = np.fromiter(map(vocab.__contains__, levels), dtype=bool, count=len(levels))
    return ~known & (levels != None)  # noqa: E711 (elementwise test on an object array)


def _missing(values: np.ndarray) -> np.ndarray:
    """Missing as pandas reads it (None, NaN, NaT, pd.NA), without a Series."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind in "biu":
        return np.zeros(len(values), dtype=bool)
    return np.asarray(pd.isna(values), dtype=bool)


def _has_range(reference: Any) -> bool:
    return isinstance(reference, Mapping) and reference.get("min") is not None and reference.get("max") is not None


def image_sizes(images: Sequence[bytes]) -> list[tuple[int, int]]:
    return [mon.encoded_size(data) for data in images]
