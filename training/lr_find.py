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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple, Sequence

import numpy as np
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from training.progress import progress_bar
from training.schedule import exponential_sweep

if TYPE_CHECKING:
    from training.learner import Learner


class SuggestedLRs(NamedTuple):
    valley: float  # fastai's default: the middle of the longest descending stretch
    steep: float  # where the loss falls fastest
    minimum: float  # a tenth of the learning rate with the lowest loss


@dataclass(frozen=True)
class SweepReport:
    """What the last sweep cost: steps run of those planned, seconds, and whether the loss diverged."""

    steps: int
    planned: int
    seconds: float
    diverged: bool

    def describe(self) -> str:
        end = ", stopped early: the loss diverged" if self.diverged else ""
        return f"{self.steps} of {self.planned} steps in {self.seconds:.1f} s{end}"


def lr_find(
    learn: Learner,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    stop_div: bool = True,
    show_plot: bool = False,
    save_path: str | Path | None = None,
) -> SuggestedLRs:
    """Sweep the learning rate, restore the weights and optimiser state, and suggest learning rates.

    The curve lands in ``learn.recorder.lrs``/``losses`` and its cost in
    ``learn.recorder.sweep`` (a :class:`SweepReport`). With ``save_path``
    the plot is written there; ``show_plot`` without a path writes it to
    ``learn.path / "lr_find.png"`` (training runs headless, so "showing" means a file).
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
    learn.recorder.sweep = SweepReport(len(lrs), num_it, time.perf_counter() - started, diverged)
    suggestion = suggest_lrs(lrs, losses)
    if save_path is not None or show_plot:
        plot_lr_find(lrs, losses, suggestion, Path(save_path) if save_path else Path(learn.path) / "lr_find.png")
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
    """fastai's ``valley``, ``steep`` and ``minimum`` suggestions from a (smoothed) loss curve.

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
    return SuggestedLRs(
        valley=float(lr_arr[valley_index(loss_arr)]),
        steep=float(lr_arr[int(np.nanargmin(grads))]),
        minimum=float(lr_arr[int(np.nanargmin(loss_arr))] / 10),
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


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], suggestion: SuggestedLRs, path: Path) -> Path:
    """Loss against learning rate (log scale) with the valley and steep points marked, as a PNG."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(lrs, losses)
    for name, value, marker in (("valley", suggestion.valley, "o"), ("steep", suggestion.steep, "^")):
        index = int(np.argmin(np.abs(np.log(np.asarray(lrs)) - math.log(value))))
        ax.plot(lrs[index], losses[index], marker, label=f"{name}: {value:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _forever(dl: DataLoader) -> Iterator:
    """Batches from ``dl``, starting a new epoch whenever one ends (a sweep may outlast an epoch)."""
    if len(dl) == 0:
        raise ValueError("the training loader is empty")
    while True:
        yield from dl
