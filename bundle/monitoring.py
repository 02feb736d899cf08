"""Monitoring math written once for both halves: image summaries, the out-of-domain score, calibration.

Export *fits* (a threshold on validation scores, a confidence calibration on
validation predictions) and records plain numbers in the manifest; the service only
*applies* them to live traffic, in the style of scikit-learn's fit/transform.
numpy only: the service imports this without torch.

* Image summaries: brightness, contrast and saturation of the pixels the
  model sees (after the deterministic resize), and the width, height and
  aspect of the decoded image. Export computes the reference with the same
  function, so reference-like traffic scores a PSI near zero.
* Model-based out-of-domain score, higher meaning further out of domain:
  the *energy* ``-T * logsumexp(logits / T)`` with ``T = 1`` (Liu et al.,
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
"""

from __future__ import annotations

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


OOD_SCORES = ("max_softmax", "energy")  # the names ``manifest.monitoring.ood_score`` may take
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


def ood_score(kind: str, probabilities: np.ndarray, logits: np.ndarray | None) -> np.ndarray:
    """The out-of-domain score ``kind`` (one of ``OOD_SCORES``) of each row; ``energy`` needs the logits."""
    if kind == "energy":
        if logits is None:
            raise ValueError("the energy score needs the model's logits")
        return energy_score(logits)
    if kind == "max_softmax":
        return max_softmax_score(probabilities)
    raise ValueError(f"unknown out-of-domain score {kind!r}: use one of {', '.join(OOD_SCORES)}")


def fit_ood_threshold(in_domain_scores: np.ndarray, false_alarm_rate: float) -> float:
    """The score above which only ``false_alarm_rate`` of in-domain items lie."""
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must be between 0 and 1, got {false_alarm_rate}")
    scores = np.asarray(in_domain_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no in-domain scores to calibrate the out-of-domain threshold on")
    return float(np.quantile(scores, 1.0 - false_alarm_rate, method="higher"))


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
