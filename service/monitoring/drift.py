"""Online drift: live values binned with the reference bins from the bundle, PSI over a sliding window.

A :class:`FeatureBins` is built once per feature from ``reference.json``
(the *fit* happened at export) and only *applies* it: a value becomes a bin
index. Continuous features use the reference's inner edges, plus a bin for
missing values; categorical features one bin per reference level, one for
``__other__`` (training levels outside the top ones), one for missing, and
one for levels training never saw. Unseen levels are counted on their own and
left out of the PSI, so a new level shows as ``unseen_share`` rather than a
saturated score.

A :class:`DriftWindow` keeps the bin indices of the last ``capacity`` items
(count-based) in a ring; counts are taken when someone reads them, which is
rare next to the writes. PSI uses additive smoothing (half an item per bin on
both sides), so an empty bin costs a finite, small amount.

Verdicts account for sampling noise: a feature is ``drift`` (``warn``) only
when its PSI is above both the configured line and the PSI that in-domain
samples of the same sizes reach by chance (``noise_psi``, the high quantile
of its null distribution: ``bundle.noise``). Before a window
holds ``min_items`` items every feature is ``collecting``: no verdict at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from bundle.noise import grid_size, psi_null_quantile, smoothed_psi
from bundle.reference import OTHER_LEVEL
from bundle.tabular import _plain_numbers, category_levels

COLLECTING = "collecting"  # the verdict of every feature of a window under its minimum
VERDICTS = ("ok", "warn", "drift")


@dataclass
class FeatureBins:
    """How one feature's values become bin indices, and the reference shares of those bins."""

    name: str
    kind: str  # continuous | categorical
    edges: np.ndarray  # continuous: inner edges
    levels: dict[str, int]  # categorical: reference level -> bin
    vocabulary: frozenset[str] | None  # categorical: every training level (None: unknown, nothing is unseen)
    expected: np.ndarray  # reference share per PSI bin (the unseen bin excluded)
    reference_count: int
    minimum: float | None
    maximum: float | None
    reference_missing: float
    _noise: dict[int, float] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_reference(
        cls, name: str, reference: Mapping[str, Any], vocabulary: Sequence[str] | None = None
    ) -> FeatureBins:
        missing = float(reference.get("missing") or 0.0)
        count = int(reference.get("count") or 0)
        if reference.get("kind") == "continuous":
            fractions = np.asarray(reference["fractions"], dtype=np.float64)
            expected = np.append((1.0 - missing) * fractions, missing)
            return cls(
                name,
                "continuous",
                np.asarray(reference["edges"], dtype=np.float64),
                {},
                None,
                expected,
                count,
                reference.get("min"),
                reference.get("max"),
                missing,
            )
        if reference.get("kind") == "categorical":
            frequencies = dict(reference["frequencies"])
            known = [level for level in frequencies if level != OTHER_LEVEL]
            shares = [frequencies[level] for level in known] + [frequencies.get(OTHER_LEVEL, 0.0)]
            expected = np.append((1.0 - missing) * np.asarray(shares, dtype=np.float64), missing)
            vocab = frozenset(v for v in vocabulary if v != "#na#") if vocabulary is not None else None
            return cls(
                name,
                "categorical",
                np.array([]),
                {level: i for i, level in enumerate(known)},
                vocab,
                expected,
                count,
                None,
                None,
                missing,
            )
        raise ValueError(f"feature {name!r}: unknown reference kind {reference.get('kind')!r}")

    def noise(self, window: int) -> float:
        """The PSI that ``window`` in-domain items reach by chance against this reference (the null's
        ``NULL_QUANTILE``), at the window size rounded down to two digits; cached."""
        size = grid_size(window)
        level = self._noise.get(size)
        if level is None:
            seed = sum(map(ord, self.name))  # reproducible, and not the same draws for every feature
            level = self._noise[size] = psi_null_quantile(self.expected, self.reference_count, size, seed=seed)
        return level

    @property
    def n_bins(self) -> int:
        """PSI bins, plus one for unseen levels at index ``n_bins - 1``."""
        return len(self.expected) + 1

    @property
    def missing_bin(self) -> int:
        return len(self.expected) - 1

    @property
    def unseen_bin(self) -> int:
        return len(self.expected)

    def bins(self, values: Any) -> np.ndarray:
        """Bin index of every value (never raises on data: anything unreadable is missing)."""
        if self.kind == "continuous":
            numbers = _numbers(values)
            finite = np.isfinite(numbers)
            index = np.searchsorted(self.edges, np.where(finite, numbers, 0.0), side="left")
            return np.where(finite, index, self.missing_bin).astype(np.int16)
        levels = category_levels(values if isinstance(values, (pd.Series, np.ndarray)) else list(values))
        unknown = self.unseen_bin if self.vocabulary is not None else len(self.levels)
        return np.fromiter(map(self._lookup.get, levels, repeat(unknown)), dtype=np.int16, count=len(levels))

    @cached_property
    def _lookup(self) -> dict[str | None, int]:
        """Level -> bin for every level with a bin of its own or ``__other__``, and missing (``None``).

        Applied with ``map`` (C, no Python loop per value); a level it lacks is unseen (or ``__other__``
        where the vocabulary is unknown)."""
        other = len(self.levels)
        lookup: dict[str | None, int] = dict.fromkeys(self.vocabulary or (), other)
        lookup.update(self.levels)
        lookup[None] = self.missing_bin
        return lookup


class DriftWindow:
    """The bin indices of the last ``capacity`` items, one column per feature, plus a float per item."""

    def __init__(self, features: Sequence[FeatureBins], capacity: int, min_items: int = 1) -> None:
        self.features = list(features)
        self.capacity = capacity
        self.min_items = min(max(min_items, 1), capacity)  # below it, no verdicts: the features are collecting
        self.bins = np.zeros((capacity, len(self.features)), dtype=np.int16)
        self.scores = np.zeros(capacity, dtype=np.float32)  # estimated chance of being right, per item
        self.has_score = np.zeros(capacity, dtype=bool)
        self.position = 0
        self.size = 0
        self.total = 0  # items ever added

    def add(self, bins: np.ndarray, scores: np.ndarray | None) -> None:
        """Append rows ``bins [n, features]`` (and their estimated-correct scores), oldest falling out."""
        n = len(bins)
        if n == 0:
            return
        self.total += n  # every item seen, also those that fall out at once
        if n > self.capacity:
            bins = bins[-self.capacity :]
            scores = scores[-self.capacity :] if scores is not None else None
            n = self.capacity
        rows = (self.position + np.arange(n)) % self.capacity
        self.bins[rows] = bins
        if scores is not None:
            self.scores[rows] = scores
        self.has_score[rows] = scores is not None
        self.position = int((self.position + n) % self.capacity)
        self.size = min(self.capacity, self.size + n)

    def counts(self, j: int) -> np.ndarray:
        column = self.bins[: self.size, j] if self.size < self.capacity else self.bins[:, j]
        return np.bincount(column, minlength=self.features[j].n_bins)

    def estimated_accuracy(self) -> float | None:
        held = self.has_score[: self.size]
        if not held.any():
            return None
        return float(self.scores[: self.size][held].mean())

    @property
    def collecting(self) -> bool:
        return self.size < self.min_items

    def table(self, warn: float, drift: float) -> list[dict[str, Any]]:
        """One row per feature: PSI, its noise level, verdict, shares of missing and unseen values.

        Under ``min_items`` items every verdict is ``collecting`` and no noise level is computed."""
        rows = []
        judged = not self.collecting
        for j, feature in enumerate(self.features):
            counts = self.counts(j)
            seen = counts[: feature.unseen_bin]
            score = psi(feature.expected, feature.reference_count, seen) if self.size else 0.0
            noise = feature.noise(int(seen.sum())) if judged else None
            unseen = int(counts[feature.unseen_bin])
            rows.append(
                {
                    "feature": feature.name,
                    "kind": feature.kind,
                    "psi": round(score, 6),
                    "noise_psi": None if noise is None else round(noise, 6),
                    "verdict": verdict(score, warn, drift, noise) if noise is not None else COLLECTING,
                    "missing_share": round(float(counts[feature.missing_bin]) / self.size, 6) if self.size else 0.0,
                    "unseen": unseen,
                    "unseen_share": round(unseen / self.size, 6) if self.size else 0.0,
                }
            )
        return rows


psi = smoothed_psi  # the population stability index with additive smoothing of both distributions


def verdict(score: float, warn: float, drift: float, noise: float = 0.0) -> str:
    """``drift``/``warn`` only above both the line and the feature's noise level, else ``ok``."""
    if score >= drift and score > noise:
        return "drift"
    if score >= warn and score > noise:
        return "warn"
    return "ok"


def overall_verdict(table: list[dict[str, Any]]) -> str:
    """A window's verdict: its worst feature's, ``collecting`` while its features are (or it has none)."""
    verdicts = {row["verdict"] for row in table}
    if not verdicts or COLLECTING in verdicts:
        return COLLECTING
    return max(verdicts, key=VERDICTS.index)


def significant_psi(table: list[dict[str, Any]]) -> float | None:
    """The largest PSI among the features above their noise level (0 where none is); None while collecting.

    What the rollout guardrail's ``max_drift`` judges: a breach then means the same as a ``drift`` verdict at
    the guardrail's line, and in-domain traffic, whose PSI stays within its noise, reads 0."""
    if not table or any(row["verdict"] == COLLECTING for row in table):
        return None
    return max((row["psi"] for row in table if row["psi"] > row["noise_psi"]), default=0.0)


def _numbers(values: Any) -> np.ndarray:
    """Values as float64, NaN where not a number (never raises); arrays without a pandas Series."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values.astype(np.float64)
    if isinstance(values, np.ndarray) and values.dtype.kind == "O":
        plain = _plain_numbers(values)
        if plain is not None:
            return plain
        return np.asarray(pd.to_numeric(values, errors="coerce"), dtype=np.float64)
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        return series.to_numpy(dtype=np.float64, na_value=math.nan)
    return pd.to_numeric(series.astype(object), errors="coerce").to_numpy(dtype=np.float64, na_value=math.nan)


def largest_psi(table: list[dict[str, Any]]) -> float:
    """A version's drift score: the largest PSI over the features of a drift table (0 with none)."""
    return max((row["psi"] for row in table), default=0.0)
