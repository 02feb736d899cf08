"""The nightly's gates: forgetting on the original validation set, improvement on the new held-out share."""

from __future__ import annotations

import pytest

from training.loop.gates import forgetting_gate, improvement_gate


def test_forgetting_allows_the_margin_in_error_rate_points_and_no_more() -> None:
    assert forgetting_gate({"error_rate": 0.10}, {"error_rate": 0.119}, margin=0.02).passed
    refused = forgetting_gate({"error_rate": 0.10}, {"error_rate": 0.13}, margin=0.02)
    assert not refused.passed and refused.allowed == pytest.approx(0.12) and "forgot" in refused.reason


def test_forgetting_in_regression_is_a_share_of_stables_rmse() -> None:
    assert forgetting_gate({"rmse": 100.0}, {"rmse": 101.9}, margin=0.02).passed
    assert not forgetting_gate({"rmse": 100.0}, {"rmse": 102.5}, margin=0.02).passed


def test_accuracy_is_higher_is_better() -> None:
    assert forgetting_gate({"accuracy": 0.90}, {"accuracy": 0.89}, margin=0.02).passed
    assert not improvement_gate({"accuracy": 0.90}, {"accuracy": 0.90}).passed


def test_improvement_needs_a_strictly_better_new_model() -> None:
    assert improvement_gate({"error_rate": 0.30}, {"error_rate": 0.10}).passed
    tie = improvement_gate({"error_rate": 0.30}, {"error_rate": 0.30})
    assert not tie.passed and "not better" in tie.reason
