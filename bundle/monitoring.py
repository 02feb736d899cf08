"""Monitoring math written once for both halves: image summaries, the out-of-domain score, calibration.

Export *fits* (a threshold on validation scores, a confidence calibration on
validation predictions) and records plain numbers in the manifest; the service only
*applies* them to live traffic, in the style of scikit-learn's fit/transform.
numpy only: the service imports this without torch.

* Image summaries: brightness, contrast and saturation of the pixels the
  model sees (after the deterministic resize), and the width, height and
  aspect of the decoded image. Export computes the reference with the same
  function, so reference-like traffic scores a PSI near zero.
* Model-based out-of-domain score, higher meaning further out of domain.
  By default the *Mahalanobis distance* of the model's penultimate features (the input of its
  last Linear layer, a second graph output) to the nearest class mean, with one covariance shared
  by the classes (Lee et al., "A simple unified framework for detecting out-of-distribution
  samples and adversarial attacks", NeurIPS 2018): :class:`FeatureSpace`, fitted at export on the
  training items' features. It reads where an input lands among the features training produced,
  so inputs the classes do not describe (noise, photographs, inverted images) are far from every
  class even where their logits are large. The fallback, and the score of bundles without the
  features output, is the *energy* ``-T * logsumexp(logits / T)`` with ``T = 1`` (Liu et al.,
  "Energy-based out-of-distribution detection", 2020), computed from the
  logits single-label classifiers export as a second ONNX output. Softmax
  forgets the logits' overall scale, which is what energy reads: an input
  none of the classes responds to strongly has small logits, hence a high
  energy, however peaked their softmax. Bundles exported before the logits
  output existed keep ``1 - max softmax probability`` (the baseline of
  Hendrycks & Gimpel), computed from the probabilities. Either way the
  threshold is the ``1 - false_alarm_rate`` quantile of the scores of
  in-domain validation items.
* Confidence calibration for estimated accuracy: an isotonic map from the
  top probability to the chance of being right, fitted on validation items.
  Its mean over recent traffic estimates the current accuracy before any
  label arrives (confidence-based performance estimation, as NannyML's CBPE).
  It is only as good as the errors it saw: with fewer than
  :data:`MIN_CALIBRATION_ERRORS` wrong validation items the estimate is unknown, and
  :func:`accuracy_interval` gives its uncertainty from the calibration set's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SUMMARY_KEYS = ("brightness", "contrast", "saturation", "width", "height", "aspect")
SUMMARY_GRID = 32  # pixel statistics are taken on at most about this many rows and columns
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0  # gray level in [0, 1]


def summary_matrix(pixels: np.ndarray, sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """float64 [N, 6]: the summaries of ``SUMMARY_KEYS`` of uint8 [N, 3, H, W] model pixels.

    ``sizes`` are the decoded (width, height) of each image. The pixel statistics are taken on a
    regular grid of at most about 32 x 32 pixels (every k-th row and column), so they cost the same
    small amount at any input size; export and service both call this function, so the reference
    and live traffic are measured alike. Written with few numpy calls, in float32: it runs on the
    request path. :func:`summary_matrix_by_image` is the plain reference it agrees with (to float32
    rounding).
    """
    n, _, height, width = pixels.shape
    step = max(1, max(height, width) // SUMMARY_GRID)
    x = pixels[:, :, ::step, ::step].reshape(n, 3, -1).astype(np.float32)
    count = x.shape[2]
    gray = np.matmul(GRAY_WEIGHTS, x)  # [N, P], gray level in [0, 1]
    mean = gray.sum(axis=1) / count
    variance = np.einsum("np,np->n", gray, gray) / count - mean * mean
    high = x.max(axis=1)
    # HSV saturation, (max - min) / max; 0 for black pixels (max 0 -> 0 / 1)
    saturation = ((high - x.min(axis=1)) / np.maximum(high, 1.0)).sum(axis=1) / count
    out = np.empty((n, 6), dtype=np.float64)
    out[:, 0] = mean
    out[:, 1] = np.sqrt(np.maximum(variance, 0.0))
    out[:, 2] = saturation
    out[:, 3:5] = np.asarray(sizes, dtype=np.float64).reshape(n, 2)
    out[:, 5] = out[:, 3] / np.maximum(out[:, 4], 1.0)
    return out


def summary_matrix_by_image(pixels: np.ndarray, sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """:func:`summary_matrix` one image at a time, in float64, with the textbook formulas (the reference)."""
    n, _, height, width = pixels.shape
    step = max(1, max(height, width) // SUMMARY_GRID)
    out = np.empty((n, 6), dtype=np.float64)
    for i, (image, (w, h)) in enumerate(zip(pixels, sizes)):
        x = image[:, ::step, ::step].astype(np.float64)
        red, green, blue = x / 255.0
        gray = 0.299 * red + 0.587 * green + 0.114 * blue
        high, low = x.max(axis=0), x.min(axis=0)
        saturation = np.where(high > 0, (high - low) / np.maximum(high, 1.0), 0.0)  # HSV's S; 0 for black
        out[i] = [gray.mean(), gray.std(), saturation.mean(), w, h, w / max(h, 1)]
    return out


def pixel_summaries(pixels: np.ndarray, sizes: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
    """:func:`summary_matrix` as one array per summary name."""
    matrix = summary_matrix(pixels, sizes)
    return {key: matrix[:, i] for i, key in enumerate(SUMMARY_KEYS)}


OOD_SCORES = ("max_softmax", "energy", "mahalanobis")  # the names ``manifest.monitoring.ood_score`` may take
ENERGY_TEMPERATURE = 1.0  # T of the energy score; 1 as in Liu et al., whose results need no tuning of it


def max_softmax_score(probabilities: np.ndarray) -> np.ndarray:
    """``1 - max p`` per row: 0 for a certain answer, near ``1 - 1/C`` for a uniform one."""
    return 1.0 - np.asarray(probabilities, dtype=np.float64).max(axis=1)


def energy_score(logits: np.ndarray, temperature: float = ENERGY_TEMPERATURE) -> np.ndarray:
    """``-T * logsumexp(logits / T)`` per row: low (very negative) where a class responds strongly.

    Computed stably (the row maximum taken out before ``exp``), in float64.
    """
    if temperature <= 0:
        raise ValueError(f"the energy temperature must be positive, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1)
    return -temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def ood_score(
    kind: str,
    probabilities: np.ndarray,
    logits: np.ndarray | None,
    features: np.ndarray | None = None,
    space: FeatureSpace | None = None,
) -> np.ndarray:
    """The out-of-domain score ``kind`` (one of ``OOD_SCORES``) of each row; ``energy`` needs the logits,
    ``mahalanobis`` the penultimate features and their :class:`FeatureSpace`."""
    if kind == "mahalanobis":
        if features is None or space is None:
            raise ValueError("the mahalanobis score needs the model's features and their fitted statistics")
        return space.score(features)
    if kind == "energy":
        if logits is None:
            raise ValueError("the energy score needs the model's logits")
        return energy_score(logits)
    if kind == "max_softmax":
        return max_softmax_score(probabilities)
    raise ValueError(f"unknown out-of-domain score {kind!r}: use one of {', '.join(OOD_SCORES)}")


class FeatureSpace:
    """Class means and a shared whitening of the penultimate features: the Mahalanobis score, as plain data.

    ``means`` [classes, D] are the training items' mean features per class; ``whitening`` [D, D] is
    ``Sigma^(-1/2)`` of their covariance around their class means (shrunk towards a multiple of the
    identity, so that it is well conditioned with fewer items than dimensions). The score of a feature
    vector ``f`` is ``min_c |(f - means[c]) @ whitening|^2``, the squared Mahalanobis distance to the
    nearest class mean: about ``D`` for training-like items, far more for what no class describes.
    Fitting happens at export (``training.export.references``); this only applies it (the service computes the
    same inside the model's graph: ``service.monitoring.graph``).
    """

    def __init__(self, means: np.ndarray, whitening: np.ndarray, items: int = 0, shrinkage: float = 0.0) -> None:
        self.means = np.asarray(means, dtype=np.float64)
        self.whitening = np.asarray(whitening, dtype=np.float64)
        if self.means.ndim != 2 or self.whitening.shape != (self.means.shape[1],) * 2:
            raise ValueError(f"feature space: means {self.means.shape} and whitening {self.whitening.shape} disagree")
        self.items = items
        self.shrinkage = shrinkage

    @property
    def width(self) -> int:
        return int(self.means.shape[1])

    def score(self, features: np.ndarray) -> np.ndarray:
        """The squared Mahalanobis distance of each row of ``features`` [N, D] to the nearest class mean."""
        whitened = np.asarray(features, dtype=np.float64) @ self.whitening
        centres = self.means @ self.whitening
        return ((whitened[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).min(axis=1)

    def to_dict(self) -> dict[str, object]:
        return {
            "score": "mahalanobis",
            "classes": int(self.means.shape[0]),
            "width": self.width,
            "items": self.items,
            "shrinkage": self.shrinkage,
            "means": _plain(self.means),
            "whitening": _plain(self.whitening),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FeatureSpace:
        return cls(
            np.asarray(data["means"], dtype=np.float64),
            np.asarray(data["whitening"], dtype=np.float64),
            int(data.get("items") or 0),  # type: ignore[call-overload]
            float(data.get("shrinkage") or 0.0),  # type: ignore[arg-type]
        )


def _plain(matrix: np.ndarray) -> list[list[float]]:
    """Rows of float32-rounded numbers: what the graph computes with, and a third of float64's JSON."""
    return [[float(v) for v in row] for row in matrix.astype(np.float32)]


RATE_CONFIDENCE = 0.9  # the out-of-domain threshold flags at most its rate of in-domain items, this sure


def fit_ood_threshold(
    in_domain_scores: np.ndarray, false_alarm_rate: float, confidence: float = RATE_CONFIDENCE
) -> float:
    """The score above which at most ``false_alarm_rate`` of in-domain items lie, with ``confidence``.

    The plain ``1 - rate`` quantile of a few hundred validation scores is itself a sample: at a rate
    of 0.01 and 250 items it lets through more than 2 % of in-domain traffic about one time in eight
    (simulated: docs/monitoring.md). Instead the threshold leaves ``k`` validation items above it, the most whose one-sided
    Clopper-Pearson upper bound on the true rate (at ``confidence``) stays within the rate; where even
    ``k = 0`` cannot (fewer than about 230 items for 0.01), the highest validation score. Large
    calibration sets come close to the plain quantile (10,000 items at 0.05: 0.047)."""
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must be between 0 and 1, got {false_alarm_rate}")
    scores = np.sort(np.asarray(in_domain_scores, dtype=np.float64))[::-1]
    if scores.size == 0:
        raise ValueError("no in-domain scores to calibrate the out-of-domain threshold on")
    n = scores.size
    low, high = 0, n - 1  # the bound grows with k: the largest k within the rate, by bisection
    while low < high:
        k = (low + high + 1) // 2
        if _binomial_upper_bound(k, n, confidence) <= false_alarm_rate:
            low = k
        else:
            high = k - 1
    return float(scores[low])


def _binomial_upper_bound(k: int, n: int, confidence: float) -> float:
    """The one-sided Clopper-Pearson upper bound of a rate seen ``k`` times in ``n``: the ``p`` at which ``k``
    or fewer would be seen with probability ``1 - confidence`` (bisection on the binomial CDF)."""
    low, high = k / n, 1.0
    for _ in range(60):
        p = (low + high) / 2
        if _binomial_cdf(k, n, p) > 1.0 - confidence:
            low = p
        else:
            high = p
    return high


def _binomial_cdf(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0 if k < n else 1.0
    i = np.arange(k + 1, dtype=np.float64)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(n - i[:-1]) - np.log(i[1:]))])  # log C(n, i)
    terms = log_choose + i * math.log(p) + (n - i) * math.log1p(-p)
    top = float(terms.max())
    return math.exp(top) * float(np.exp(terms - top).sum())


def fit_confidence_calibration(confidence: np.ndarray, correct: np.ndarray) -> tuple[list[float], list[float]]:
    """Isotonic map from confidence to the probability of being right (pool-adjacent-violators).

    Returns the knots ``(confidences, accuracies)`` of a non-decreasing
    piecewise-linear function; :func:`estimated_correct` applies it. On the
    items it was fitted on, its mean equals their accuracy.
    """
    x = np.asarray(confidence, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError("fit_confidence_calibration needs two 1-d arrays of the same, non-zero length")
    order = np.argsort(x, kind="stable")
    blocks: list[list[float]] = []  # [sum of y, weight, lowest x, highest x]
    for xi, yi in zip(x[order], y[order]):
        blocks.append([yi, 1.0, xi, xi])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            total, weight, _, high = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += weight
            blocks[-1][3] = high
    knots_x: list[float] = []
    knots_y: list[float] = []
    for total, weight, low, high in blocks:
        for knot in (low, high) if high > low else (low,):
            knots_x.append(float(knot))
            knots_y.append(float(total / weight))
    return knots_x, knots_y


def estimated_correct(confidence: np.ndarray, knots_x: Sequence[float], knots_y: Sequence[float]) -> np.ndarray:
    """The calibrated probability that each prediction is right (flat beyond the outer knots)."""
    return np.interp(np.asarray(confidence, dtype=np.float64), knots_x, knots_y)


MIN_CALIBRATION_ERRORS = 5  # fewer wrong validation items than this: estimated accuracy is unknown
INTERVAL_Z = 1.96  # the intervals are 95 %


def calibration_problem(items: int, errors: int | None) -> str | None:
    """Why a confidence calibration of ``items`` validation items with ``errors`` wrong ones cannot estimate
    accuracy, or None where it can.

    Isotonic calibration learns where the model goes wrong from the wrong items it saw; with none or a
    couple of them it maps nearly every confidence to 1.0 and would report a model that is now wrong most
    of the time as 100 % accurate. Five is the usual least expected count for a binomial proportion's
    normal approximation (``n * p >= 5``), which the interval rests on."""
    if not items:
        return "the bundle has no confidence calibration"
    if errors is None:
        return None
    if errors < MIN_CALIBRATION_ERRORS:
        return (
            f"validation had {errors} wrong item(s) of {items}: too few to calibrate confidences "
            f"(at least {MIN_CALIBRATION_ERRORS} needed)"
        )
    return None


def accuracy_interval(accuracy: float, n: float, z: float = INTERVAL_Z) -> tuple[float, float]:
    """The Wilson score interval of an accuracy measured on ``n`` items (``n`` may be an effective size)."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(accuracy, 0.0), 1.0)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def estimate_interval(estimate: float, calibration_items: int, window_items: int) -> tuple[float, float]:
    """The interval of an estimated accuracy: the calibration set's size bounds what it knows, and the window
    is itself a sample of traffic, so the two sizes add as variances (``1/n = 1/n_cal + 1/n_window``)."""
    if calibration_items <= 0 or window_items <= 0:
        return 0.0, 1.0
    return accuracy_interval(estimate, 1.0 / (1.0 / calibration_items + 1.0 / window_items))


def accuracies_disagree(
    estimate: float, estimate_items: float, live: float, live_items: int, z: float = INTERVAL_Z
) -> bool:
    """Whether live accuracy (``live_items`` answers) and an estimate (effective size ``estimate_items``) differ
    by more than their sampling allows: ``|live - estimate| > z * sqrt(se_live^2 + se_estimate^2)``."""
    if live_items <= 0 or estimate_items <= 0:
        return False
    p = (estimate * estimate_items + live * live_items) / (estimate_items + live_items)  # pooled: a two-sample test
    variance = p * (1 - p) * (1 / estimate_items + 1 / live_items)
    return abs(live - estimate) > z * float(np.sqrt(variance))


def encoded_size(data: bytes) -> tuple[int, int]:
    """(width, height) from an encoded image's header, without decoding pixels ((0, 0) when unreadable).

    A PNG's size is read from its IHDR chunk directly, without Pillow's open
    (the digits requests are PNGs; figures in docs/performance.md); every other
    image takes :func:`encoded_size_by_pillow`, the reference the PNG path
    agrees with on every PNG Pillow can open.
    """
    if len(data) >= 24 and data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return encoded_size_by_pillow(data)


def encoded_size_by_pillow(data: bytes) -> tuple[int, int]:
    """:func:`encoded_size` of any image Pillow can open, from the header it reads ((0, 0) when it cannot)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # the decoder already refused or accepted it; a size is only a statistic
        return 0, 0
