"""fastai's TabularModel: embeddings for categories, BatchNorm for continuous columns, then an MLP."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from training.models.layers import SigmoidRange, TargetScale, lin_bn_drop


def emb_sz_rule(n_categories: int) -> int:
    """fastai's rule of thumb for an embedding width given a vocabulary size (``#na#`` included)."""
    return min(600, round(1.6 * n_categories**0.56))


def get_emb_szs(cardinalities: Sequence[int]) -> list[tuple[int, int]]:
    """``(vocabulary size, embedding width)`` for each categorical column."""
    return [(n, emb_sz_rule(n)) for n in cardinalities]


class TabularModel(nn.Module):
    """``forward(x_cat int64 [B, n_cat], x_cont float32 [B, n_cont])`` -> ``[B, out_sz]``.

    Blocks are Linear-ReLU-BatchNorm-Dropout (fastai's ``lin_first=True``);
    the last layer is a plain Linear, followed by ``SigmoidRange`` when
    ``y_range`` is given. Either input may have zero columns.

    ``target_stats`` (regression: the training targets' per-column means and
    stds) starts the model at predicting the mean: without ``y_range`` a
    :class:`TargetScale` follows the last Linear, so the network learns
    standardised targets; with ``y_range`` (already an affine map of a
    sigmoid) the last bias is set so the initial output is the mean.
    """

    def __init__(
        self,
        emb_szs: Sequence[tuple[int, int]],
        n_cont: int,
        out_sz: int,
        layers: Sequence[int] = (200, 100),
        ps: float | Sequence[float] | None = None,
        embed_p: float = 0.0,
        y_range: tuple[float, float] | None = None,
        use_bn: bool = True,
        bn_cont: bool = True,
        target_stats: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        if not emb_szs and n_cont == 0:
            raise ValueError("TabularModel needs at least one categorical or continuous column")
        layers = list(layers)
        if ps is None:
            ps = [0.0] * len(layers)
        elif isinstance(ps, (int, float)):
            ps = [float(ps)] * len(layers)
        if len(ps) != len(layers):
            raise ValueError(f"ps has {len(ps)} dropout values for {len(layers)} layers")
        self.embeds = nn.ModuleList([nn.Embedding(n, width) for n, width in emb_szs])
        for embedding in self.embeds:
            nn.init.trunc_normal_(embedding.weight, std=0.01)  # fastai's embedding init
        self.emb_drop = nn.Dropout(embed_p)
        self.bn_cont = nn.BatchNorm1d(n_cont) if bn_cont and n_cont else None
        self.n_emb = sum(width for _, width in emb_szs)
        self.n_cont = n_cont
        sizes = [self.n_emb + n_cont, *layers]
        blocks: list[nn.Module] = []
        for n_in, n_out, p in zip(sizes[:-1], sizes[1:], ps):
            if use_bn:
                blocks += lin_bn_drop(n_in, n_out, p=p, act=True, lin_first=True)
            else:
                blocks += [nn.Linear(n_in, n_out), nn.ReLU(inplace=True)] + ([nn.Dropout(p)] if p else [])
        last = nn.Linear(sizes[-1], out_sz)
        blocks.append(last)
        if y_range is not None:
            blocks.append(SigmoidRange(*y_range))
            if target_stats is not None:
                _start_at_mean(last, y_range, target_stats[0])
        elif target_stats is not None:
            blocks.append(TargetScale(list(target_stats[0]), list(target_stats[1])))
        self.layers = nn.Sequential(*blocks)

    def forward(self, x_cat: torch.Tensor, x_cont: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.n_emb:
            embedded = torch.cat([embed(x_cat[:, i]) for i, embed in enumerate(self.embeds)], dim=1)
            parts.append(self.emb_drop(embedded))
        if self.n_cont:
            parts.append(self.bn_cont(x_cont) if self.bn_cont is not None else x_cont)
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return self.layers(x)


def _start_at_mean(last: nn.Linear, y_range: tuple[float, float], means: Sequence[float]) -> None:
    """Bias the last Linear so that ``SigmoidRange`` first answers the training mean, not the range's middle."""
    low, high = y_range
    with torch.no_grad():
        for j, mean in enumerate(means):
            share = min(max((mean - low) / (high - low), 1e-3), 1 - 1e-3)
            last.bias[j] = math.log(share / (1 - share))
