"""The statistics behind signals an operator can trust: PSI's noise level, verdicts, the feature-space score,
the intervals of estimated and live accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from bundle import monitoring as mon
from bundle.noise import grid_size, psi_null_quantile
from service.monitoring.drift import (
    COLLECTING,
    DriftWindow,
    FeatureBins,
    overall_verdict,
    psi,
    significant_psi,
    verdict,
)

TEN_BINS = np.r_[0.0, np.full(10, 0.1), 0.0, 0.0]  # a continuous reference: outer bins and missing empty


def test_the_null_median_is_the_textbook_noise_level_of_psi() -> None:
    # (k - 1) * (1 / n_reference + 1 / n_window): 0.16 for 10 bins, 60 reference items and 1,000 live ones
    for n_ref, n in [(60, 1000), (1000, 1000), (1000, 200), (5000, 1000)]:
        median = psi_null_quantile(TEN_BINS, n_ref, n, quantile=0.5)
        assert median == pytest.approx(9 * (1 / n_ref + 1 / n), rel=0.2), (n_ref, n)


def test_in_domain_windows_rarely_pass_the_null_level_and_it_falls_with_the_window() -> None:
    rng = np.random.default_rng(3)
    level = psi_null_quantile(TEN_BINS, 800, 500)
    reference = rng.multinomial(800, TEN_BINS) / 800
    shares = (TEN_BINS * 800 + 0.5) / (800 + 0.5 * len(TEN_BINS))  # the null draws from the smoothed shares
    over = sum(psi(reference, 800, rng.multinomial(500, shares / shares.sum())) > level for _ in range(2000))
    assert over <= 10  # 0.999 of the null: about 2 in 2,000
    assert psi_null_quantile(TEN_BINS, 800, 100) > level > psi_null_quantile(TEN_BINS, 800, 5000)


def test_window_sizes_share_levels_rounded_down_to_two_digits() -> None:
    assert [grid_size(n) for n in (7, 99, 437, 1000, 12345)] == [7, 99, 430, 1000, 12000]


def test_a_verdict_needs_both_the_line_and_the_noise_level() -> None:
    assert verdict(0.3, warn=0.1, drift=0.25, noise=0.5) == "ok"  # over the line, but a sample that size does it
    assert verdict(0.3, warn=0.1, drift=0.25, noise=0.2) == "drift"
    assert verdict(0.15, warn=0.1, drift=0.25, noise=0.05) == "warn"
    assert verdict(0.05, warn=0.1, drift=0.25, noise=0.0) == "ok"  # under the line, however quiet the noise


def test_a_window_under_its_minimum_is_collecting_with_no_verdict_and_no_guardrail_reading() -> None:
    feature = FeatureBins.from_reference(
        "x", {"kind": "continuous", "edges": [0.0, 1.0], "fractions": [0, 1, 0], "missing": 0.0, "count": 1000}
    )
    window = DriftWindow([feature], capacity=1000, min_items=200)
    window.add(np.full((199, 1), 1, np.int16), None)
    table = window.table(0.1, 0.25)
    assert window.collecting and table[0]["verdict"] == COLLECTING and table[0]["noise_psi"] is None
    assert overall_verdict(table) == COLLECTING and significant_psi(table) is None
    window.add(np.full((1, 1), 1, np.int16), None)
    table = window.table(0.1, 0.25)
    assert table[0]["verdict"] == "ok" and overall_verdict(table) == "ok" and significant_psi(table) == 0.0
    window.add(np.full((800, 1), 2, np.int16), None)  # most of the window above the training maximum
    table = window.table(0.1, 0.25)
    assert table[0]["verdict"] == "drift" and significant_psi(table) == table[0]["psi"] > 1


def test_the_mahalanobis_score_is_the_whitened_distance_to_the_nearest_class_mean() -> None:
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    covariance = np.array([[4.0, 0.0], [0.0, 0.25]])
    values, vectors = np.linalg.eigh(covariance)
    space = mon.FeatureSpace(means, vectors @ np.diag(values**-0.5) @ vectors.T)
    points = np.array([[2.0, 0.0], [10.0, 1.0], [5.0, 0.0]])
    expected = [1.0, 4.0, 6.25]  # (2/2)^2; (1/0.5)^2; (5/2)^2 to either mean
    np.testing.assert_allclose(space.score(points), expected)
    assert mon.FeatureSpace.from_dict(space.to_dict()).score(points) == pytest.approx(expected, rel=1e-6)
    training = rng.multivariate_normal([0, 0], covariance, 5000)
    assert np.mean(space.score(training)) == pytest.approx(2.0, rel=0.1)  # chi-square with D = 2 degrees


def test_estimated_accuracy_is_unknown_with_too_few_validation_errors() -> None:
    assert mon.calibration_problem(359, 3) is not None and "3 wrong" in mon.calibration_problem(359, 3)
    assert mon.calibration_problem(300, 0) is not None  # 100 % validation accuracy: flat at 1.0, says nothing
    assert mon.calibration_problem(300, mon.MIN_CALIBRATION_ERRORS) is None
    assert mon.calibration_problem(0, None) is not None  # no calibration at all


def test_intervals_narrow_with_items_and_disagreement_needs_more_than_sampling() -> None:
    low, high = mon.accuracy_interval(0.9, 100)
    assert (
        low < 0.9 < high and high - low > mon.accuracy_interval(0.9, 10_000)[1] - mon.accuracy_interval(0.9, 10_000)[0]
    )
    assert mon.accuracy_interval(1.0, 60)[0] < 0.95  # 60 of 60 right does not make 100 % certain
    assert mon.estimate_interval(0.9, 300, 1000) == mon.accuracy_interval(0.9, 1 / (1 / 300 + 1 / 1000))
    assert mon.accuracies_disagree(1.0, 300, 0.28, 100)  # the page: 100 % estimated beside 28 % live
    assert not mon.accuracies_disagree(0.95, 300, 0.92, 50)  # 46 of 50 right is what 95 % gives
    assert not mon.accuracies_disagree(0.95, 300, 0.5, 0)  # no feedback, no disagreement


def test_the_out_of_domain_threshold_flags_at_most_its_rate_with_confidence_from_few_items() -> None:
    """250 validation items at a rate of 0.01: the plain quantile let 2 % or more through one time in eight."""
    from statistics import NormalDist

    rng = np.random.default_rng(0)
    rates = [NormalDist().cdf(-mon.fit_ood_threshold(rng.normal(size=250), 0.01)) for _ in range(200)]
    assert np.mean(np.array(rates) > 0.01) <= 0.15 and np.mean(np.array(rates) > 0.02) <= 0.03
    assert mon.fit_ood_threshold(np.arange(100.0), 0.01) == 99.0  # too few items for any: the highest score
