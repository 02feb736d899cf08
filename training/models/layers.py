"""Small layers shared by the vision and tabular models.

Each is plain PyTorch that exports to ONNX as ordinary operators, so the
exported graph needs nothing outside itself.
"""

from __future__ import annotations

import torch
from torch import nn


class SigmoidRange(nn.Module):
    """Squash outputs into ``(low, high)``: regression targets stay in their known range."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        if not low < high:
            raise ValueError(f"SigmoidRange needs low < high, got ({low}, {high})")
        self.low = float(low)
        self.high = float(high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) * (self.high - self.low) + self.low

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}"


class TargetScale(nn.Module):
    """``x * std + mean``: the model learns standardised targets and answers in the target's own units.

    Fixed buffers, not parameters: they hold the training targets' statistics,
    so the exported graph un-standardises by itself.
    """

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"TargetScale needs one positive std per mean, got mean={mean} std={std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


class AdaptiveConcatPool2d(nn.Module):
    """Average and max pooling side by side: fastai's head keeps both summaries of the feature map."""

    def __init__(self, size: int = 1) -> None:
        super().__init__()
        self.avg = nn.AdaptiveAvgPool2d(size)
        self.max = nn.AdaptiveMaxPool2d(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.max(x), self.avg(x)], dim=1)


def lin_bn_drop(n_in: int, n_out: int, p: float, act: bool, lin_first: bool = False) -> list[nn.Module]:
    """fastai's LinBnDrop as a list of layers.

    ``lin_first=False`` (the vision head): BatchNorm, Dropout, Linear, ReLU.
    ``lin_first=True`` (the tabular body): Linear, ReLU, BatchNorm, Dropout.
    The Linear has no bias when a BatchNorm follows it, since the BatchNorm's
    shift would cancel it anyway.
    """
    norm: list[nn.Module] = [nn.BatchNorm1d(n_out if lin_first else n_in)]
    if p:
        norm.append(nn.Dropout(p))
    linear: list[nn.Module] = [nn.Linear(n_in, n_out, bias=not lin_first)]
    if act:
        linear.append(nn.ReLU(inplace=True))
    return linear + norm if lin_first else norm + linear


def init_linear(module: nn.Module) -> None:
    """Kaiming-normal weights and zero biases for every Linear inside ``module`` (fastai's head init)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
