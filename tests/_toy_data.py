"""Small real DataLoaders for the learner tests: sklearn's 8x8 digits as images, and a synthetic table.

Both follow the batch conventions of ``training.data.core`` and implement
``encode_items``, so the Learner sees exactly what the real image and
tabular DataLoaders give it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from training.data.core import DataLoaders


def _loaders(tensors: Sequence[torch.Tensor], n_train: int, bs: int) -> tuple[DataLoader, DataLoader]:
    train = TensorDataset(*(t[:n_train] for t in tensors))
    valid = TensorDataset(*(t[n_train:] for t in tensors))
    # drop_last: a final batch of one row would break BatchNorm in training mode
    return DataLoader(train, batch_size=bs, shuffle=True, drop_last=True), DataLoader(valid, batch_size=bs)


class DigitsDataLoaders(DataLoaders):
    """sklearn digits as uint8 RGB pixels [B, 3, 8, 8]; items are raw 8x8 digit arrays (values 0..16)."""

    input_kind = "image"

    def __init__(self, n_train: int = 320, n_valid: int = 80, bs: int = 32) -> None:
        digits = load_digits()
        pixels = self.to_pixels(digits.images[: n_train + n_valid])
        targets = torch.as_tensor(digits.target[: n_train + n_valid], dtype=torch.int64)
        train, valid = _loaders((pixels, targets), n_train, bs)
        super().__init__(train, valid, "classification", vocab=[str(d) for d in range(10)])
        self.raw_images = digits.images[n_train : n_train + n_valid]
        self.raw_targets = digits.target[n_train : n_train + n_valid]

    @staticmethod
    def to_pixels(images: np.ndarray) -> torch.Tensor:
        grey = torch.as_tensor(np.asarray(images) * 15, dtype=torch.uint8)  # 0..16 -> 0..240
        return grey.reshape(-1, 1, 8, 8).expand(-1, 3, -1, -1).contiguous()

    def encode_items(self, items: Sequence[Any]) -> tuple[torch.Tensor, ...]:
        return (self.to_pixels(np.stack([np.asarray(item) for item in items])),)


class ToyTableDataLoaders(DataLoaders):
    """A synthetic table with learnable targets; items are ``{"cat": [codes], "cont": [floats]}``.

    ``cardinalities`` are vocabulary sizes (``#na#`` included) of the
    categorical columns; either kind of column may be absent.
    """

    input_kind = "tabular"

    def __init__(
        self,
        task: str = "classification",
        n_rows: int = 256,
        cardinalities: Sequence[int] = (4, 3),
        n_cont: int = 3,
        bs: int = 32,
        seed: int = 0,
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.cardinalities = list(cardinalities)
        self.n_cont = n_cont
        x_cat = (
            torch.stack([torch.randint(1, n, (n_rows,), generator=gen) for n in cardinalities], dim=1)
            if cardinalities
            else torch.zeros(n_rows, 0, dtype=torch.int64)
        )
        x_cont = torch.randn(n_rows, n_cont, generator=gen)
        signal = x_cont.sum(dim=1) if n_cont else torch.zeros(n_rows)
        if cardinalities:
            signal = signal + (x_cat[:, 0] % 2).float() * 2 - 1
        if task == "classification":
            target, vocab, n_out = (signal > 0).long(), ["no", "yes"], None
        elif task == "multilabel":
            target = torch.stack([signal > 0, signal > 1, signal < -1], dim=1).float()
            vocab, n_out = ["pos", "high", "low"], None
        else:
            target, vocab, n_out = (signal + 0.1 * torch.randn(n_rows, generator=gen)).reshape(-1, 1), None, 1
        train, valid = _loaders((x_cat, x_cont, target), n_rows * 3 // 4, bs)
        super().__init__(train, valid, task, vocab=vocab, n_out=n_out, target_names=["y"])

    def emb_szs(self) -> list[tuple[int, int]]:
        return [(n, 3) for n in self.cardinalities]

    def encode_items(self, items: Sequence[Any]) -> tuple[torch.Tensor, ...]:
        x_cat = torch.tensor([list(item.get("cat", [])) for item in items], dtype=torch.int64)
        x_cont = torch.tensor([list(item.get("cont", [])) for item in items], dtype=torch.float32)
        return x_cat.reshape(len(items), -1), x_cont.reshape(len(items), -1)
