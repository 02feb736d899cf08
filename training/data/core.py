"""What every kind of data gives the Learner: two loaders plus the metadata export needs.

A batch is a tuple ``(*inputs, target)``; the model is called as
``model(*inputs)``. Image batches are ``(pixels uint8 [B,3,H,W], y)``; tabular
batches are ``(x_cat int64 [B,n_cat], x_cont float32 [B,n_cont], y)``.
Targets: int64 class indices (classification), float32 multi-hot [B,C]
(multilabel), float32 [B,n_targets] (regression, log-transformed when
``log_target``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader

TASKS = ("classification", "multilabel", "regression")


class DataError(ValueError):
    """Input data that cannot be trained on; the message names the problem.

    ``cli_message``, when given, says the same with the command line's flags
    in place of the Python arguments the message suggests (``--task
    classification`` for ``y_block='category'``); ``python -m training``
    prints it instead.
    """

    def __init__(self, message: str, cli_message: str | None = None) -> None:
        super().__init__(message)
        self.cli_message = cli_message or message


def read_csv(path: Any) -> pd.DataFrame:
    """A CSV as a DataFrame, or a DataError naming the file (missing, unreadable, empty, malformed)."""
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and pandas' parser errors are ValueErrors
        raise DataError(f"{path}: cannot read CSV ({exc})") from exc


class DataLoaders:
    """Train and validation loaders plus what is needed to encode new items and decode outputs.

    Subclasses (image, tabular) implement :meth:`encode_items` and keep their
    fitted preprocessing as plain attributes so that :meth:`new_empty` can drop
    the data and the rest still pickles into ``learner.pkl``.
    """

    input_kind: str = ""

    def __init__(
        self,
        train: DataLoader | None,
        valid: DataLoader | None,
        task: str,
        vocab: list[str] | None = None,
        n_out: int | None = None,
        target_names: Sequence[str] = (),
    ) -> None:
        if task not in TASKS:
            raise DataError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
        self.train = train
        self.valid = valid
        self.task = task
        self.vocab = list(vocab) if vocab is not None else None
        self.n_out = n_out if n_out is not None else (len(self.vocab) if self.vocab else 1)
        self.target_names = list(target_names)
        self.thresholds: list[float] | None = None  # multilabel: tuned per class, else 0.5
        self.y_range: tuple[float, float] | None = None
        self.log_target = False
        # regression: per-target (mean, std) of the training targets (log ones with log_target), or None
        self.target_stats: tuple[list[float], list[float]] | None = None

    @property
    def c(self) -> int:
        return self.n_out

    def one_batch(self) -> tuple[torch.Tensor, ...]:
        assert self.train is not None, "this DataLoaders holds no data (exported learner)"
        return next(iter(self.train))

    def show_batch(self, max_n: int = 9, path: Any = None) -> Any:
        """Up to ``max_n`` training items with their labels: a figure of images, or a DataFrame of rows.

        The figure is drawn inline in a notebook and saved when given a path.
        """
        from training.show import show_batch

        return show_batch(self, max_n, path)

    def new_empty(self) -> DataLoaders:
        """A copy with the data dropped: what an exported learner keeps."""
        empty = copy.copy(self)
        empty.train = None
        empty.valid = None
        return empty

    def encode_items(self, items: Sequence[Any]) -> tuple[torch.Tensor, ...]:
        """Raw items (image paths/bytes/arrays, or table rows) -> model inputs, no target."""
        raise NotImplementedError

    def decode_prediction(self, output: torch.Tensor) -> tuple[Any, Any, torch.Tensor]:
        """One activated output row -> fastai's ``(decoded, index, probabilities)``."""
        if self.task == "classification":
            index = int(output.argmax())
            return self.vocab[index], index, output
        if self.task == "multilabel":
            thresholds = torch.tensor(self.thresholds or [0.5] * len(self.vocab))
            mask = output >= thresholds
            labels = [v for v, m in zip(self.vocab, mask.tolist()) if m]
            return labels, mask, output
        value = output.clone()
        if self.log_target:
            value = torch.exp(value)
        decoded = float(value[0]) if value.numel() == 1 else value.tolist()
        return decoded, None, output
