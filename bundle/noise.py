"""How large a feature's PSI gets by chance: its null distribution at a reference size and a window size.

A window of live items and the training reference are both samples. Even when
live traffic comes from exactly the training distribution, their PSI is not
zero: about ``(k - 1) * (1 / n_reference + 1 / n_window)`` for ``k`` bins, 0.16
for 10 bins, 60 reference items and 1,000 live ones. A fixed line (0.1, 0.2)
alone calls that drift for small samples and is needlessly blunt for large
ones. :func:`psi_null_quantile` draws both samples many times from the
reference's own bin shares, scores each pair exactly as the online PSI does
(:func:`smoothed_psi`: half an item added to every bin), and
returns a high quantile: the PSI that in-domain traffic exceeds only that
rarely. A feature's verdict is drift only above both that level and the line.
Export uses the same test to decide whether the training items' predictions
may join the validation items' in the prediction reference
(``training.export.references.prediction_references``).

The shares it draws from are the reference's, smoothed as the PSI smooths them:
a bin training never filled (the outer bins beyond its minimum and maximum,
missing values in a column that had none) gets the half item's share, about
the chance that a new value lands beyond the extremes of ``n`` training values.
The draws are seeded: the same sizes always give the same level.
"""

from __future__ import annotations

import math

import numpy as np

SMOOTHING = 0.5  # items added to every bin before shares are taken (the online PSI's: smoothed_psi)
NULL_QUANTILE = 0.999  # a feature of in-domain traffic reads above its level in one window of a thousand
NULL_DRAWS = 4_000  # pairs of samples per level: the 0.999 quantile rests on the 4 largest


def psi_null_quantile(
    expected: np.ndarray,
    reference_count: int,
    window: int,
    quantile: float = NULL_QUANTILE,
    draws: int = NULL_DRAWS,
    seed: int = 0,
) -> float:
    """The ``quantile`` of the PSI between ``reference_count`` and ``window`` items drawn from ``expected``.

    ``expected``: the reference's share of each PSI bin (summing to 1). Both sides are redrawn: the
    reference is a sample of training data as the window is of traffic."""
    k = len(expected)
    if window < 1 or k < 2:
        return 0.0
    n_ref = max(int(reference_count), 1)
    shares = (np.asarray(expected, dtype=np.float64) * n_ref + SMOOTHING) / (n_ref + SMOOTHING * k)
    shares = shares / shares.sum()
    rng = np.random.default_rng(seed)
    e = (rng.multinomial(n_ref, shares, size=draws) + SMOOTHING) / (n_ref + SMOOTHING * k)
    a = (rng.multinomial(window, shares, size=draws) + SMOOTHING) / (window + SMOOTHING * k)
    scores = np.sum((a - e) * np.log(a / e), axis=1)
    return float(np.quantile(scores, quantile))


def smoothed_psi(expected: np.ndarray, reference_count: int, actual_counts: np.ndarray) -> float:
    """The online PSI: ``actual_counts`` per bin against ``expected`` shares of ``reference_count`` items, half an
    item added to every bin on both sides (0 without any count)."""
    k = len(expected)
    n_ref = max(reference_count, 1)
    e = (np.asarray(expected, dtype=np.float64) * n_ref + SMOOTHING) / (n_ref + SMOOTHING * k)
    total = float(np.sum(actual_counts))
    if total == 0:
        return 0.0
    a = (np.asarray(actual_counts, dtype=np.float64) + SMOOTHING) / (total + SMOOTHING * k)
    return float(np.sum((a - e) * np.log(a / e)))


def grid_size(n: int) -> int:
    """``n`` rounded down to two significant digits (437 -> 430, 1,000 -> 1,000): the window sizes levels are
    computed at, so that a filling window does not cost a new level per item. Rounding down only raises the
    level a little (fewer items, more noise): a verdict never becomes easier to reach."""
    if n < 100:
        return max(n, 0)
    step = 10 ** (int(math.log10(n)) - 1)
    return n // step * step
