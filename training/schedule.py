"""Per-step hyper-parameter schedules: the 1cycle policy and the LR finder's exponential sweep.

Plain functions returning plain lists, one value per optimiser step, so a
schedule can be printed, plotted and tested without running any training.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class OneCycle(NamedTuple):
    lrs: list[float]
    moms: list[float]


def cos_anneal(start: float, end: float, pct: float) -> float:
    """Cosine interpolation from ``start`` (pct=0) to ``end`` (pct=1)."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))


def one_cycle_schedule(
    n_steps: int,
    lr_max: float,
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
) -> OneCycle:
    """Leslie Smith's 1cycle, as fastai: warm up then anneal, momentum doing the opposite.

    The learning rate rises from ``lr_max / div`` to ``lr_max`` over the first
    ``pct_start`` of the steps, then falls to ``lr_max / div_final``; both
    phases are cosine. Momentum goes ``moms[0] -> moms[1] -> moms[2]`` over
    the same phases. The first step uses the start values and the last step
    the end values exactly.
    """
    if n_steps < 1:
        raise ValueError(f"a schedule needs at least one step, got {n_steps}")
    if not 0.0 <= pct_start <= 1.0:
        raise ValueError(f"pct_start must be within [0, 1], got {pct_start}")
    lr_start, lr_end = lr_max / div, lr_max / div_final
    lrs, moms_out = [], []
    for step in range(n_steps):
        pos = step / (n_steps - 1) if n_steps > 1 else 0.0
        if pos < pct_start or pct_start == 1.0:
            pct = pos / pct_start if pct_start else 1.0
            lrs.append(cos_anneal(lr_start, lr_max, pct))
            moms_out.append(cos_anneal(moms[0], moms[1], pct))
        else:
            pct = (pos - pct_start) / (1.0 - pct_start)
            lrs.append(cos_anneal(lr_max, lr_end, pct))
            moms_out.append(cos_anneal(moms[1], moms[2], pct))
    return OneCycle(lrs, moms_out)


def exponential_sweep(start: float, end: float, n: int) -> list[float]:
    """``n`` learning rates from ``start`` to ``end`` inclusive, evenly spaced on a log scale."""
    if n < 2:
        raise ValueError(f"a sweep needs at least two points, got {n}")
    if not 0 < start < end:
        raise ValueError(f"a sweep needs 0 < start < end, got start={start} end={end}")
    return [start * (end / start) ** (i / (n - 1)) for i in range(n)]


def geometric_lrs(low: float, high: float, n: int) -> list[float]:
    """``n`` learning rates from ``low`` to ``high`` spaced geometrically (fastai's ``even_mults``)."""
    if n == 1:
        return [high]
    return [low * (high / low) ** (i / (n - 1)) for i in range(n)]
