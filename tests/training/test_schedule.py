"""The 1cycle schedule and the LR finder's sweep, as plain lists of numbers."""

from __future__ import annotations

import math

import pytest

from training.schedule import exponential_sweep, geometric_lrs, one_cycle_schedule


def test_one_cycle_starts_at_lr_max_over_div() -> None:
    lrs, _ = one_cycle_schedule(100, lr_max=1e-2, div=25.0)
    assert lrs[0] == pytest.approx(1e-2 / 25)


def test_one_cycle_peaks_at_lr_max_after_pct_start() -> None:
    lrs, _ = one_cycle_schedule(101, lr_max=1e-2, pct_start=0.25)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert peak == 25
    assert lrs[peak] == pytest.approx(1e-2)


def test_one_cycle_ends_at_lr_max_over_div_final() -> None:
    lrs, _ = one_cycle_schedule(100, lr_max=1e-2, div_final=1e5)
    assert lrs[-1] == pytest.approx(1e-2 / 1e5)


def test_one_cycle_rises_then_falls_monotonically() -> None:
    lrs, _ = one_cycle_schedule(101, lr_max=1e-3, pct_start=0.3)
    rising, falling = lrs[:31], lrs[30:]
    assert all(a < b for a, b in zip(rising, rising[1:]))
    assert all(a > b for a, b in zip(falling, falling[1:]))


def test_one_cycle_momentum_moves_opposite_to_the_learning_rate() -> None:
    lrs, moms = one_cycle_schedule(101, lr_max=1e-2, pct_start=0.25, moms=(0.95, 0.85, 0.95))
    assert moms[0] == pytest.approx(0.95)
    assert moms[25] == pytest.approx(0.85)
    assert moms[-1] == pytest.approx(0.95)
    assert min(range(len(moms)), key=moms.__getitem__) == max(range(len(lrs)), key=lrs.__getitem__)


def test_one_cycle_follows_a_cosine_in_the_warm_up() -> None:
    lrs, _ = one_cycle_schedule(101, lr_max=1.0, div=10.0, pct_start=0.5)
    # halfway through the warm-up a cosine is halfway between start and peak
    assert lrs[25] == pytest.approx((0.1 + 1.0) / 2)


def test_one_cycle_of_a_single_step_is_the_start_value() -> None:
    lrs, moms = one_cycle_schedule(1, lr_max=1e-2)
    assert lrs == [pytest.approx(1e-2 / 25)]
    assert moms == [pytest.approx(0.95)]


def test_one_cycle_rejects_zero_steps() -> None:
    with pytest.raises(ValueError, match="at least one step"):
        one_cycle_schedule(0, lr_max=1e-2)


def test_exponential_sweep_spans_start_to_end_with_a_constant_ratio() -> None:
    lrs = exponential_sweep(1e-7, 10.0, 100)
    assert len(lrs) == 100
    assert lrs[0] == pytest.approx(1e-7)
    assert lrs[-1] == pytest.approx(10.0)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios))


def test_exponential_sweep_rejects_a_backwards_range() -> None:
    with pytest.raises(ValueError, match="start < end"):
        exponential_sweep(1.0, 1e-3, 10)


def test_geometric_lrs_spread_discriminative_rates_evenly_on_a_log_scale() -> None:
    lrs = geometric_lrs(1e-5, 1e-3, 3)
    assert lrs == [pytest.approx(1e-5), pytest.approx(1e-4), pytest.approx(1e-3)]
    assert math.isclose(geometric_lrs(1e-5, 1e-3, 1)[0], 1e-3)
