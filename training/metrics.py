"""Validation metrics: picklable callables ``metric(raw_outputs, targets) -> float`` with a ``name``.

They see the whole validation set at once: raw model outputs (logits, or
values for regression) and the targets as the DataLoaders produce them.
Classes rather than lambdas so a learner holding them pickles into
``learner.pkl``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Metric:
    """Base class: subclasses set ``name`` and implement ``__call__``."""

    name = "metric"

    def __call__(self, preds: torch.Tensor, targets: torch.Tensor) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class Accuracy(Metric):
    """Share of rows whose arg-max output is the target class."""

    name = "accuracy"

    def __call__(self, preds: torch.Tensor, targets: torch.Tensor) -> float:
        return float((preds.argmax(dim=-1) == targets).float().mean())


class ErrorRate(Metric):
    """1 - accuracy."""

    name = "error_rate"

    def __call__(self, preds: torch.Tensor, targets: torch.Tensor) -> float:
        return 1.0 - Accuracy()(preds, targets)


class RMSE(Metric):
    """Root mean squared error in the units the model predicts in.

    With a log target that is log units: name it ``rmse_log`` (see
    :data:`rmse_log`) and report :data:`rmse_exp` beside it, whose name is
    plain ``rmse`` because it is in the target's own units.
    """

    name = "rmse"

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            self.name = name

    def __call__(self, preds: torch.Tensor, targets: torch.Tensor) -> float:
        preds, targets = _flat_pair(preds, targets)
        return float(torch.sqrt(torch.mean((preds.double() - targets.double()) ** 2)))


class ExpRMSE(Metric):
    """RMSE of ``exp(prediction)`` against ``exp(target)``: a log-target model's error in the target's units."""

    name = "rmse"

    def __call__(self, preds: torch.Tensor, targets: torch.Tensor) -> float:
        preds, targets = _flat_pair(preds, targets)
        return float(torch.sqrt(torch.mean((preds.double().exp() - targets.double().exp()) ** 2)))


class MAE(Metric):
    """Mean absolute error."""

    name = "mae"

    def __call__(self, preds: torch.Tensor, targets: torch.Tensor) -> float:
        preds, targets = _flat_pair(preds, targets)
        return float(torch.mean(torch.abs(preds - targets)))


class AccuracyMulti(Metric):
    """Multilabel accuracy: share of (row, class) cells where ``prob > thresh`` matches the multi-hot target.

    ``thresh`` is one number or one per class; ``sigmoid=False`` when the
    outputs are already probabilities.
    """

    name = "accuracy_multi"

    def __init__(self, thresh: float | Sequence[float] = 0.5, sigmoid: bool = True) -> None:
        self.thresh = float(thresh) if isinstance(thresh, (int, float)) else [float(t) for t in thresh]
        self.sigmoid = sigmoid

    def __call__(self, preds: torch.Tensor, targets: torch.Tensor) -> float:
        probs = torch.sigmoid(preds) if self.sigmoid else preds
        thresh = torch.as_tensor(self.thresh, dtype=probs.dtype, device=probs.device)
        return float(((probs > thresh) == targets.bool()).float().mean())


def accuracy_multi(thresh: float | Sequence[float] = 0.5, sigmoid: bool = True) -> AccuracyMulti:
    """Make a multilabel accuracy metric: ``metrics=[accuracy_multi()]`` or ``accuracy_multi(thresh=0.3)``."""
    if isinstance(thresh, torch.Tensor):
        raise TypeError("accuracy_multi makes a metric: pass accuracy_multi() (called), not accuracy_multi")
    return AccuracyMulti(thresh, sigmoid)


def _flat_pair(preds: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression outputs [N, k] against targets [N, k] or [N] (k == 1): compare element by element."""
    if preds.numel() != targets.numel():
        raise ValueError(f"predictions {tuple(preds.shape)} and targets {tuple(targets.shape)} do not match")
    return preds.reshape(-1).float(), targets.reshape(-1).float()


accuracy = Accuracy()
error_rate = ErrorRate()
rmse = RMSE()
rmse_log = RMSE("rmse_log")  # a log-target model's RMSE, in log units
rmse_exp = ExpRMSE()  # the same model's RMSE in the target's units, named plain "rmse"
mae = MAE()
