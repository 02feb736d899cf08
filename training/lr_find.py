"""The learning-rate finder: an exponential LR sweep, fastai's suggestions, and a PNG plot.

``sweep`` trains one batch per learning rate and records the smoothed loss;
``lr_find`` wraps it so the model and optimiser come back exactly as they
were. ``suggest_lrs`` is a pure function of the recorded curve, so it can be
checked on a synthetic one.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from training import figures
from training.defaults import DEFAULT_LR_RULE
from training.progress import progress_bar
from training.schedule import exponential_sweep

if TYPE_CHECKING:
    from training.learner import Learner


LR_RULES = ("valley", "steep", "slide", "minimum", "clamped")
CLAMP = (1e-3, 1e-2)  # the course's two fixed rates: images from scratch, tables


class SuggestedLRs(NamedTuple):
    """Each rule's learning rate for one loss curve; ``suggestion.chosen`` is the default rule's."""

    valley: float  # fastai's default: a third of the way down the longest descending stretch
    steep: float  # where the loss falls fastest
    minimum: float  # a tenth of the learning rate with the lowest loss
    slide: float  # fastai's interval slide rule: the last rate before the loss curve's slope settles
    clamped: float  # ``minimum`` kept within :data:`CLAMP`: the default (docs/training.md)

    @property
    def chosen(self) -> float:
        """The rate of :data:`DEFAULT_LR_RULE`."""
        return self.rule(DEFAULT_LR_RULE)

    def rule(self, name: str) -> float:
        """The rate one rule suggests, by name (one of :data:`LR_RULES`)."""
        if name not in LR_RULES:
            raise ValueError(f"unknown learning-rate rule {name!r}: choose from {', '.join(LR_RULES)}")
        return float(getattr(self, name))


@dataclass(frozen=True)
class SweepReport:
    """What the last sweep cost (steps run of those planned, seconds, whether the loss diverged) and its curve."""

    steps: int
    planned: int
    seconds: float
    diverged: bool
    lrs: tuple[float, ...] = ()
    losses: tuple[float, ...] = ()

    def describe(self) -> str:
        end = ", stopped early: the loss diverged" if self.diverged else ""
        return f"{self.steps} of {self.planned} steps in {self.seconds:.1f} s{end}"

    def plot(self, path: str | Path | None = None, rule: str = DEFAULT_LR_RULE) -> Figure:
        """The sweep's loss curve with the rate ``rule`` chose marked; saved too when ``path`` is given."""
        return plot_lr_find(self.lrs, self.losses, suggest_lrs(self.lrs, self.losses), path, rule)


def lr_find(
    learn: Learner,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    stop_div: bool = True,
    show_plot: bool = True,
    save_path: str | Path | None = None,
) -> SuggestedLRs:
    """Sweep the learning rate, restore the weights and optimiser state, and suggest learning rates.

    The curve lands in ``learn.recorder.lrs``/``losses`` and its cost in
    ``learn.recorder.sweep`` (a :class:`SweepReport`, whose ``plot()`` draws
    it again). In a Jupyter notebook the plot is drawn inline (``show_plot``,
    as fastai); with ``save_path`` it is written there as a PNG.
    """
    if learn.dls.train is None:
        raise ValueError("lr_find needs training data; this learner holds none (an exported learner?)")
    learn.prepare_training()
    model_state = copy.deepcopy(learn.model.state_dict())
    opt_state = copy.deepcopy(learn.opt.state_dict())
    was_training = learn.model.training
    started = time.perf_counter()
    try:
        lrs, losses, diverged = sweep(learn, exponential_sweep(start_lr, end_lr, num_it), stop_div)
    finally:
        learn.model.load_state_dict(model_state)
        learn.opt.load_state_dict(opt_state)
        learn.model.train(was_training)
    learn.recorder.reset()
    learn.recorder.lrs, learn.recorder.losses = lrs, losses
    report = SweepReport(len(lrs), num_it, time.perf_counter() - started, diverged, tuple(lrs), tuple(losses))
    learn.recorder.sweep = report
    suggestion = suggest_lrs(lrs, losses)
    if save_path is not None or show_plot:
        fig = plot_lr_find(lrs, losses, suggestion, save_path)
        if show_plot:
            figures.show(fig)
    return suggestion


def sweep(
    learn: Learner, lrs: Sequence[float], stop_div: bool = True, beta: float = 0.98
) -> tuple[list[float], list[float], bool]:
    """Train one batch at each learning rate; return the rates tried, the smoothed losses, and whether it diverged.

    The loss is an exponential moving average with bias correction (fastai's
    ``SmoothenValue``); with ``stop_div`` the sweep stops once it is more than
    4x the best seen, or not finite. A progress bar shows on a terminal.
    """
    n_groups = len(learn.layer_groups())
    tried: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    learn.model.train()
    batches = _forever(learn.dls.train)
    for i, lr in enumerate(progress_bar(lrs, len(lrs), "lr_find", learn.progress)):
        learn.set_hypers([lr] * n_groups)
        loss = learn.train_step(next(batches))
        average = beta * average + (1 - beta) * loss
        smoothed = average / (1 - beta ** (i + 1))
        tried.append(float(lr))
        losses.append(smoothed)
        if stop_div and (smoothed > 4 * best or not math.isfinite(smoothed)):
            return tried, losses, True
        best = min(best, smoothed)
    return tried, losses, False


def suggest_lrs(lrs: Sequence[float], losses: Sequence[float]) -> SuggestedLRs:
    """fastai's ``valley``, ``steep``, ``minimum`` and ``slide`` suggestions, and ``clamped``, from a loss curve.

    ``clamped`` is ``minimum`` kept within :data:`CLAMP` (1e-3..1e-2): the
    rule that did best across tables and from-scratch images
    (docs/training.md). ``minimum`` alone was best on tables but, on images
    whose loss barely moves in a 100-step sweep, suggested 1e-4 and left the
    model at chance; on some tables it suggested 5e-2.

    Like fastai, the first tenth of the curve (the average is still warming
    up) and the last five points (divergence) are ignored when the curve is
    long enough.
    """
    if len(lrs) != len(losses):
        raise ValueError(f"{len(lrs)} learning rates but {len(losses)} losses")
    if len(lrs) < 3:
        raise ValueError(f"need at least 3 points on the loss curve to suggest a learning rate, got {len(lrs)}")
    n = len(lrs)
    lo, hi = (n // 10, n - 5) if n >= 20 else (0, n)
    lr_arr = np.asarray(lrs[lo:hi], dtype=np.float64)
    loss_arr = np.asarray(losses[lo:hi], dtype=np.float64)
    if not np.isfinite(loss_arr).any():
        raise ValueError("the loss curve has no finite values: training diverged from the first step")
    grads = np.diff(loss_arr) / np.diff(np.log(lr_arr))
    finite = np.isfinite(loss_arr)
    if not finite.all():  # a NaN ends the usable curve (fastai drops everything from the first one)
        cut = int(np.argmin(finite))
        lr_arr, loss_arr, grads = lr_arr[:cut], loss_arr[:cut], grads[: max(cut - 1, 0)]
    minimum = float(lr_arr[int(np.nanargmin(loss_arr))] / 10)
    return SuggestedLRs(
        valley=float(lr_arr[valley_index(loss_arr)]),
        steep=float(lr_arr[int(np.nanargmin(grads))]) if len(grads) else float(lr_arr[0]),
        minimum=minimum,
        slide=float(lr_arr[slide_index(loss_arr)]),
        clamped=float(min(max(minimum, CLAMP[0]), CLAMP[1])),
    )


def valley_index(losses: Sequence[float]) -> int:
    """Index in the longest descending stretch of the curve, as fastai's ``valley``.

    The stretch is the longest strictly decreasing subsequence; fastai then
    steps ``1/3 + 1/6`` of its length in from its start.
    """
    n = len(losses)
    lengths = [1] * n  # lengths[i]: longest decreasing run ending at i
    start, end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lengths[i] < lengths[j] + 1:
                lengths[i] = lengths[j] + 1
            if lengths[end] < lengths[i]:
                end = i
                start = end - lengths[end]
    sections = (end - start) / 3
    return start + int(sections) + int(sections / 2)


def slide_index(losses: Sequence[float], lr_diff: int = 15, thresh: float = 0.005) -> int:
    """Index of fastai's ``slide`` suggestion: walking left from the end, the last point before the slope settles.

    Two points ``lr_diff`` apart whose slopes (per step) differ by more than
    ``thresh`` mean the curve is still bending; the rule stops at the first
    pair that agrees, a flat stretch, and suggests the left point of the pair
    before it.
    """
    n = len(losses)
    if n <= lr_diff:
        return 0
    grad = np.gradient(np.asarray(losses, dtype=np.float64))
    right = n - 1
    left = right - lr_diff
    index = left
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        index = left
        right -= 1
        left -= 1
    return index


def plot_lr_find(
    lrs: Sequence[float],
    losses: Sequence[float],
    suggestion: SuggestedLRs,
    path: str | Path | None = None,
    rule: str = DEFAULT_LR_RULE,
) -> Figure:
    """Loss against learning rate (log scale), the chosen rate marked on the curve and the other rules' rates as ticks.

    The marker's height is the curve interpolated at the chosen rate (in log
    rate), so it sits on the line even for a rate between two sweep points
    (``minimum`` is a tenth of one). Saved as a PNG when ``path`` is given.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(lrs, losses, color="tab:blue")
    chosen = suggestion.rule(rule)
    ax.plot(
        [chosen],
        [loss_at(lrs, losses, chosen)],
        "o",
        color="tab:red",
        markersize=8,
        label=f"chosen ({rule}): {chosen:.2e}",
    )
    for name, marker in zip((r for r in LR_RULES if r != rule), ("^", "v", "s", "D")):
        value = suggestion.rule(name)
        ax.plot([value], [loss_at(lrs, losses, value)], marker, color="gray", alpha=0.7, label=f"{name}: {value:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.legend(fontsize=8)
    return figures.finish(fig, path)


def loss_at(lrs: Sequence[float], losses: Sequence[float], lr: float) -> float:
    """The curve's loss at ``lr``, interpolated linearly in log(lr) and clamped to the swept range."""
    return float(np.interp(math.log(lr), np.log(np.asarray(lrs, dtype=np.float64)), np.asarray(losses)))


def _forever(dl: DataLoader) -> Iterator:
    """Batches from ``dl``, starting a new epoch whenever one ends (a sweep may outlast an epoch)."""
    if len(dl) == 0:
        raise ValueError("the training loader is empty")
    while True:
        yield from dl
