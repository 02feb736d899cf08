"""Training-time reference statistics per feature, and the drift score against them.

Training computes one reference per raw input feature and stores them in
``reference.json``; the service bins recent traffic the same way and reports
the population stability index (PSI) per feature. Every reference is plain
JSON (floats, strings, lists, dicts; ``None`` where a statistic is undefined).

Continuous reference: ``edges`` are the INNER bin edges only, so bin ``i``
is ``(edges[i-1], edges[i]]`` with ``-inf``/``+inf`` at the ends and
``len(fractions) == len(edges) + 1``. The first edge sits just below the
training minimum and the last is the training maximum, with the deduplicated
quantile cut points between them: values outside the training range fall in
the two outer bins, which are empty in training (so a constant column still
detects a shift). ``fractions`` are shares of the non-missing values;
``missing`` is the share of all values that were missing (NaN, None,
infinite or not a number).

Categorical reference: ``frequencies`` maps the top levels (canonical strings,
as :func:`bundle.tabular.category_levels` writes them) to their share of the
non-missing values, with the rest under ``"__other__"``.

Reading a PSI: below 0.1 the feature is stable, 0.1 to 0.25 is a moderate
shift worth watching, above 0.25 a significant shift. Missing values form
their own bin, so a feature that starts arriving empty also scores as drift.

Those thresholds assume large samples: a small sample drawn from the
training distribution itself scores well above 0.25 by chance (30 rows over
11 bins do). :func:`psi_noise` is the PSI that same-size samples of the
reference reach by chance, and :func:`drift_verdict` calls a feature shifted
only when its PSI is above both the threshold and that noise level.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bundle.tabular import category_levels

OTHER_LEVEL = "__other__"
PSI_EPSILON = 1e-4  # floor for bin shares so an empty bin costs a finite amount
PSI_STABLE = 0.1
PSI_SHIFT = 0.25


def continuous_reference(values: Iterable[Any], n_bins: int = 10) -> dict[str, Any]:
    """Quantile-binned reference of a numeric feature (non-numbers count as missing)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    numbers = _numbers(values)
    finite = numbers[np.isfinite(numbers)]
    count = int(numbers.size)
    if finite.size:
        low, high = finite.min(), finite.max()
        cuts = np.quantile(finite, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
        # Edges just below the minimum and at the maximum give values outside
        # the training range bins of their own (empty in training).
        edges = np.concatenate([[np.nextafter(low, -np.inf)], np.unique(cuts[(cuts > low) & (cuts < high)]), [high]])
        fractions = _bin_shares(finite, edges)
    else:
        edges, fractions = np.array([]), np.array([1.0])
    return {
        "kind": "continuous",
        "edges": [float(e) for e in edges],
        "fractions": [float(f) for f in fractions],
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "missing": (count - int(finite.size)) / count if count else 0.0,
        "count": count,
    }


def categorical_reference(values: Iterable[Any], max_levels: int = 50) -> dict[str, Any]:
    """Level frequencies of a categorical feature: the ``max_levels`` most common, the rest as ``__other__``."""
    if max_levels < 1:
        raise ValueError(f"max_levels must be at least 1, got {max_levels}")
    levels = category_levels(_series(values))
    present = levels[levels != None]  # noqa: E711 (elementwise test on an object array)
    count = int(levels.size)
    frequencies: dict[str, float] = {}
    if present.size:
        counts = pd.Series(present).value_counts()
        # Most common first, ties by name, so the same data always keeps the same levels.
        ranked = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
        for level, n in ranked[:max_levels]:
            frequencies[str(level)] = int(n) / present.size
        rest = sum(int(n) for _, n in ranked[max_levels:])
        if rest:
            frequencies[OTHER_LEVEL] = rest / present.size
    return {
        "kind": "categorical",
        "frequencies": frequencies,
        "missing": (count - int(present.size)) / count if count else 0.0,
        "count": count,
    }


def psi(reference: Mapping[str, Any], values: Iterable[Any]) -> float:
    """Population stability index of ``values`` against ``reference`` (0.0 when there are no values)."""
    kind = reference.get("kind")
    if kind == "continuous":
        expected, actual = _continuous_shares(reference, values)
    elif kind == "categorical":
        expected, actual = _categorical_shares(reference, values)
    else:
        raise ValueError(f"unknown reference kind {kind!r}: expected 'continuous' or 'categorical'")
    if actual is None:
        return 0.0
    expected = np.maximum(expected, PSI_EPSILON)
    actual = np.maximum(actual, PSI_EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_noise(reference: Mapping[str, Any], n: int, quantile: float = 0.99, draws: int = 400, seed: int = 0) -> float:
    """The ``quantile`` of the PSI that ``n`` values drawn from the reference itself score (a seeded bootstrap)."""
    if n < 1:
        return 0.0
    expected = _expected_shares(reference)
    probabilities = expected / expected.sum()
    samples = np.random.default_rng(seed).multinomial(n, probabilities, size=draws) / n
    floor_e = np.maximum(expected, PSI_EPSILON)
    floor_a = np.maximum(samples, PSI_EPSILON)
    scores = np.sum((floor_a - floor_e) * np.log(floor_a / floor_e), axis=1)
    return float(np.quantile(scores, quantile))


def drift_verdict(score: float, noise: float) -> str:
    """``shifted``/``moderate``/``stable``: the usual PSI thresholds, raised to the sample's noise level."""
    if score > max(PSI_SHIFT, noise):
        return "shifted"
    if score > max(PSI_STABLE, noise):
        return "moderate"
    return "stable"


def bin_shares(reference: Mapping[str, Any], values: Iterable[Any]) -> np.ndarray:
    """The share of ``values`` in each of the reference's PSI bins (``expected_shares``' order; zeros for none)."""
    kind = reference.get("kind")
    if kind == "continuous":
        expected, actual = _continuous_shares(reference, values)
    elif kind == "categorical":
        expected, actual = _categorical_shares(reference, values)
    else:
        raise ValueError(f"unknown reference kind {kind!r}: expected 'continuous' or 'categorical'")
    return actual if actual is not None else np.zeros_like(expected)


def expected_shares(reference: Mapping[str, Any]) -> np.ndarray:
    """The reference's share of each PSI bin: its bins (or levels, then ``__other__``), then missing."""
    return _expected_shares(reference)


def _expected_shares(reference: Mapping[str, Any]) -> np.ndarray:
    kind = reference.get("kind")
    missing = float(reference["missing"])
    if kind == "continuous":
        return np.append((1.0 - missing) * np.asarray(reference["fractions"], dtype=np.float64), missing)
    if kind == "categorical":
        frequencies = dict(reference["frequencies"])
        levels = [v for k, v in frequencies.items() if k != OTHER_LEVEL] + [frequencies.get(OTHER_LEVEL, 0.0)]
        return np.append((1.0 - missing) * np.asarray(levels, dtype=np.float64), missing)
    raise ValueError(f"unknown reference kind {kind!r}: expected 'continuous' or 'categorical'")


def tabular_reference(
    df_raw: pd.DataFrame, cat_names: Sequence[str], cont_names: Sequence[str], n_bins: int = 10, max_levels: int = 50
) -> dict[str, dict[str, Any]]:
    """One reference per raw feature of a training frame, keyed by column name."""
    absent = [name for name in [*cat_names, *cont_names] if name not in df_raw.columns]
    if absent:
        raise ValueError(f"reference columns {absent} are not in the frame; columns are {list(df_raw.columns)}")
    references = {name: categorical_reference(df_raw[name], max_levels=max_levels) for name in cat_names}
    references.update({name: continuous_reference(df_raw[name], n_bins=n_bins) for name in cont_names})
    return references


def drift_scores(references: Mapping[str, Mapping[str, Any]], df: pd.DataFrame) -> dict[str, float]:
    """PSI per referenced feature for a frame of recent raw rows (absent columns count as all missing)."""
    scores = {}
    for name, reference in references.items():
        values = df[name] if name in df.columns else pd.Series([None] * len(df), dtype=object)
        scores[name] = psi(reference, values)
    return scores


def _continuous_shares(reference: Mapping[str, Any], values: Iterable[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    edges = np.asarray(reference["edges"], dtype=np.float64)
    missing = float(reference["missing"])
    expected = np.append((1.0 - missing) * np.asarray(reference["fractions"], dtype=np.float64), missing)
    numbers = _numbers(values)
    if numbers.size == 0:
        return expected, None
    finite = numbers[np.isfinite(numbers)]
    shares = _bin_shares(finite, edges) if finite.size else np.zeros(edges.size + 1)
    actual_missing = 1.0 - finite.size / numbers.size
    return expected, np.append((1.0 - actual_missing) * shares, actual_missing)


def _categorical_shares(reference: Mapping[str, Any], values: Iterable[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    frequencies = dict(reference["frequencies"])
    known = [level for level in frequencies if level != OTHER_LEVEL]
    missing = float(reference["missing"])
    expected_levels = np.array([frequencies[level] for level in known] + [frequencies.get(OTHER_LEVEL, 0.0)])
    expected = np.append((1.0 - missing) * expected_levels, missing)
    levels = category_levels(_series(values))
    if levels.size == 0:
        return expected, None
    present = pd.Series(levels[levels != None], dtype=object)  # noqa: E711
    counts = present.value_counts()
    known_counts = np.array([counts.get(level, 0) for level in known], dtype=np.float64)
    other = present.size - known_counts.sum()
    actual = np.append(np.append(known_counts, other), levels.size - present.size) / levels.size
    return expected, actual


def _bin_shares(finite: np.ndarray, edges: np.ndarray) -> np.ndarray:
    bins = np.searchsorted(edges, finite, side="left")  # x == edge falls in the bin the edge closes
    return np.bincount(bins, minlength=edges.size + 1) / finite.size


def _series(values: Iterable[Any]) -> pd.Series:
    if isinstance(values, pd.Series):
        return values
    return pd.Series(values if isinstance(values, np.ndarray) else list(values))


def _numbers(values: Iterable[Any]) -> np.ndarray:
    """Values as float64; anything that is not a number becomes NaN (drift statistics never raise on data)."""
    series = _series(values)
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        return series.to_numpy(dtype=np.float64, na_value=math.nan)
    return pd.to_numeric(series.astype(object), errors="coerce").to_numpy(dtype=np.float64, na_value=math.nan)
