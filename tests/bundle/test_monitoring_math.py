"""The monitoring math shared by export and service: summaries, the OOD threshold, calibration, binning, PSI."""

from __future__ import annotations

import numpy as np
import pytest

from bundle import monitoring as mon
from bundle.reference import categorical_reference, continuous_reference
from service.monitoring.drift import DriftWindow, FeatureBins, psi


def test_grey_images_have_no_saturation_and_sizes_come_from_the_decoded_image():
    pixels = np.full((2, 3, 4, 4), 128, np.uint8)
    pixels[1, 0] = 255  # a reddish second image
    summaries = mon.pixel_summaries(pixels, [(8, 4), (10, 10)])
    assert summaries["saturation"][0] == 0.0 and summaries["saturation"][1] > 0.4
    assert summaries["aspect"].tolist() == [2.0, 1.0] and summaries["contrast"][0] == 0.0


def test_the_threshold_lets_its_false_alarm_rate_of_in_domain_scores_through():
    scores = np.random.default_rng(0).beta(1, 8, 20_000)
    threshold = mon.fit_ood_threshold(scores[:10_000], 0.05)
    assert abs(np.mean(scores[10_000:] > threshold) - 0.05) < 0.01


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_energy_score_is_minus_logsumexp_of_the_logits_and_stable_for_large_ones():
    logits = np.array([[2.0, 0.5, -1.0], [1000.0, 999.0, 0.0], [0.1, 0.0, 0.1]])
    energy = mon.energy_score(logits)
    np.testing.assert_allclose(energy[0], -np.log(np.exp(logits[0]).sum()))
    np.testing.assert_allclose(energy[1], -(1000.0 + np.log(1.0 + np.exp(-1.0))))  # no overflow
    np.testing.assert_allclose(mon.energy_score(logits + 5.0), energy - 5.0)  # unlike softmax, it sees the scale
    assert energy[2] > energy[0]  # weak responses everywhere: further out of domain
    # the same softmax, smaller logits: max-softmax cannot tell these apart, energy can
    peaked, weak = np.array([[4.0, 0.0, 0.0]]), np.array([[4.0, 0.0, 0.0]]) - 3.0
    np.testing.assert_allclose(mon.max_softmax_score(softmax(peaked)), mon.max_softmax_score(softmax(weak)))
    assert mon.energy_score(weak)[0] > mon.energy_score(peaked)[0]


def test_the_ood_score_is_the_one_the_manifest_names():
    logits = np.array([[3.0, 1.0], [0.2, 0.1]])
    probabilities = softmax(logits)
    np.testing.assert_allclose(mon.ood_score("energy", probabilities, logits), mon.energy_score(logits))
    np.testing.assert_allclose(mon.ood_score("max_softmax", probabilities, None), 1 - probabilities.max(axis=1))
    with pytest.raises(ValueError, match="needs the model's logits"):
        mon.ood_score("energy", probabilities, None)
    with pytest.raises(ValueError, match="unknown out-of-domain score"):
        mon.ood_score("entropy", probabilities, logits)


def test_isotonic_calibration_is_monotone_and_keeps_the_validation_accuracy():
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.3, 1.0, 2_000)
    correct = rng.random(2_000) < confidence**2  # over-confident model
    knots_x, knots_y = mon.fit_confidence_calibration(confidence, correct)
    assert np.all(np.diff(knots_y) >= 0) and np.all(np.diff(knots_x) >= 0)
    estimated = mon.estimated_correct(confidence, knots_x, knots_y)
    assert abs(estimated.mean() - correct.mean()) < 1e-9
    assert abs(mon.estimated_correct(np.array([0.5]), knots_x, knots_y)[0] - 0.25) < 0.1


def test_unseen_levels_get_their_own_bin_outside_the_psi():
    feature = FeatureBins.from_reference("color", categorical_reference(["red", "blue"] * 50), ["#na#", "blue", "red"])
    bins = feature.bins(["red", "blue", "purple", None])
    assert bins.tolist() == [feature.levels["red"], feature.levels["blue"], feature.unseen_bin, feature.missing_bin]


def test_psi_is_finite_and_small_for_the_reference_itself_and_large_for_a_shift():
    values = np.random.default_rng(2).normal(0, 1, 5_000)
    feature = FeatureBins.from_reference("x", continuous_reference(values))
    window = DriftWindow([feature], capacity=2_000)
    window.add(feature.bins(values[:2_000])[:, None], None)
    assert window.table(0.1, 0.25)[0]["psi"] < 0.02
    shifted = np.bincount(feature.bins(values[:2_000] + 1.0), minlength=feature.n_bins)[: feature.unseen_bin]
    assert 0.25 < psi(feature.expected, feature.reference_count, shifted) < 10


def test_a_window_counts_every_item_it_was_given_also_those_that_fell_out_at_once():
    feature = FeatureBins.from_reference("x", continuous_reference(np.arange(100.0)))
    window = DriftWindow([feature], capacity=10)
    window.add(feature.bins(np.arange(25.0))[:, None], None)  # more at once than the window holds
    window.add(feature.bins(np.arange(3.0))[:, None], None)
    assert (window.size, window.total) == (10, 28)
    # a ring: the 3 newest overwrote the oldest 3 of the last 10 of the 25
    assert window.bins[:, 0].tolist() == feature.bins(np.r_[np.arange(3.0), np.arange(18.0, 25.0)]).tolist()
