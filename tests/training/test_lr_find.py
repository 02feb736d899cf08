"""The LR finder: suggestions from a loss curve, and a sweep that leaves the learner as it found it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests._toy_data import ToyTableDataLoaders
from training.defaults import DEFAULT_LR_RULE
from training.learner import Learner
from training.lr_find import loss_at, plot_lr_find, suggest_lrs, valley_index
from training.models.tabular import TabularModel
from training.schedule import exponential_sweep


def synthetic_curve() -> tuple[list[float], list[float]]:
    """Flat at 2.0 up to 1e-5, a cosine descent to 0.5 at 1e-1 (steepest at 1e-3), then a blow-up."""
    lrs = exponential_sweep(1e-7, 10.0, 100)
    losses = []
    for lr in lrs:
        x = math.log10(lr)
        if x < -5:
            losses.append(2.0)
        elif x <= -1:
            t = (x + 5) / 4
            losses.append(2.0 - 1.5 * (1 - math.cos(math.pi * t)) / 2)
        else:
            losses.append(0.5 + 3 * (x + 1) ** 2)
    return lrs, losses


def small_learner(seed: int = 0) -> Learner:
    dls = ToyTableDataLoaders("classification", n_rows=128)
    model = TabularModel(dls.emb_szs(), dls.n_cont, dls.n_out, layers=(16,))
    learn = Learner(dls, model, seed=seed)
    learn.show_table = False
    return learn


def test_steep_is_where_the_loss_falls_fastest() -> None:
    suggestion = suggest_lrs(*synthetic_curve())
    assert suggestion.steep == pytest.approx(1e-3, rel=0.25)


def test_valley_lies_inside_the_descent_towards_its_middle() -> None:
    suggestion = suggest_lrs(*synthetic_curve())
    assert 1e-4 < suggestion.valley < 1e-2


def test_minimum_is_a_tenth_of_the_lowest_loss_rate() -> None:
    suggestion = suggest_lrs(*synthetic_curve())
    assert suggestion.minimum == pytest.approx(1e-2, rel=0.25)


def test_valley_index_follows_the_longest_strictly_decreasing_run() -> None:
    losses = [9.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 5.0, 9.0]
    index = valley_index(losses)
    assert 1 <= index <= 9
    assert losses[index] < losses[1]


def test_suggest_lrs_rejects_curves_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="learning rates but"):
        suggest_lrs([1e-3, 1e-2, 1e-1], [1.0, 0.5])


def test_lr_find_restores_weights_and_optimiser_state() -> None:
    learn = small_learner()
    learn.fit(1, lr=1e-3)  # give the optimiser some state worth restoring
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    exp_avg = {i: s["exp_avg"].clone() for i, s in learn.opt.state_dict()["state"].items()}
    learn.lr_find(num_it=20)
    for key, value in learn.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    for i, state in learn.opt.state_dict()["state"].items():
        assert torch.equal(state["exp_avg"], exp_avg[i])


def test_lr_find_records_the_sweep_and_suggests_rates_within_it() -> None:
    learn = small_learner()
    suggestion = learn.lr_find(start_lr=1e-5, end_lr=1.0, num_it=30, stop_div=False)
    assert len(learn.recorder.lrs) == 30
    assert learn.recorder.lrs[0] == pytest.approx(1e-5)
    assert 1e-5 <= suggestion.valley <= 1.0
    assert 1e-5 <= suggestion.steep <= 1.0


def test_lr_find_stops_early_once_the_loss_diverges() -> None:
    learn = small_learner()
    learn.lr_find(start_lr=1e-4, end_lr=1e4, num_it=60, stop_div=True)
    assert len(learn.recorder.lrs) < 60


def test_lr_find_writes_a_png_plot(tmp_path: Path) -> None:
    learn = small_learner()
    out = tmp_path / "plots" / "lr_find.png"
    learn.lr_find(num_it=25, save_path=out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_slide_suggests_a_rate_inside_the_descent_before_the_blow_up() -> None:
    suggestion = suggest_lrs(*synthetic_curve())
    assert 1e-4 < suggestion.slide < 1e-1


def test_chosen_is_the_default_rules_rate() -> None:
    suggestion = suggest_lrs(*synthetic_curve())
    assert suggestion.chosen == suggestion.rule(DEFAULT_LR_RULE)
    with pytest.raises(ValueError, match="unknown learning-rate rule"):
        suggestion.rule("median")


def test_the_plot_marks_the_chosen_rate_on_the_curve() -> None:
    lrs, losses = synthetic_curve()
    suggestion = suggest_lrs(lrs, losses)
    fig = plot_lr_find(lrs, losses, suggestion)
    marker = next(line for line in fig.axes[0].lines if line.get_label().startswith("chosen"))
    (x,), (y,) = marker.get_data()
    assert x == suggestion.chosen
    assert y == pytest.approx(loss_at(lrs, losses, suggestion.chosen))
    assert min(losses) <= y <= max(losses)


def test_lr_find_without_a_path_writes_no_file_and_keeps_the_curve_to_plot(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    learn = small_learner()
    learn.path = tmp_path
    learn.lr_find(num_it=25)
    assert list(tmp_path.iterdir()) == []
    assert len(learn.recorder.sweep.plot().axes[0].lines[0].get_xdata()) == 25


def test_clamped_keeps_minimum_within_the_courses_two_rates() -> None:
    lrs = exponential_sweep(1e-7, 10.0, 100)
    low = [1.0 - 0.1 * (lr < 1e-5) for lr in lrs]  # lowest loss at 1e-5: minimum 1e-6, clamped up to 1e-3
    high = [1.0 - 0.1 * (lr > 0.3) for lr in lrs[:-6]] + [9.0] * 6  # lowest near 1: minimum ~0.1, clamped to 1e-2
    assert suggest_lrs(lrs, low).clamped == 1e-3
    assert suggest_lrs(lrs, high).clamped == 1e-2
    middle = suggest_lrs(*synthetic_curve())
    assert middle.clamped == middle.minimum  # inside 1e-3..1e-2: minimum as it is
