"""Where a classifier goes wrong: confusion matrix, most confused pairs and top losses, as numbers and PNGs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader

from training import figures
from training.figures import image_array

if TYPE_CHECKING:
    from training.learner import Learner


class ClassificationInterpretation:
    """Predictions, targets and per-item losses of a single-label classifier over one loader.

    ``preds`` are probabilities [N, C], ``targets`` class indices [N],
    ``losses`` per-item losses [N]. ``dl`` (unshuffled, the one the
    predictions came from) supplies the inputs shown by :meth:`plot_top_losses`;
    ``processor`` (tabular) turns codes back into readable values.
    """

    def __init__(
        self,
        vocab: Sequence[str],
        preds: torch.Tensor,
        targets: torch.Tensor,
        losses: torch.Tensor,
        dl: DataLoader | None = None,
        processor: Any = None,
    ) -> None:
        if not (len(preds) == len(targets) == len(losses)):
            raise ValueError(
                f"{len(preds)} predictions, {len(targets)} targets and {len(losses)} losses differ in length"
            )
        self.vocab = list(vocab)
        self.preds = preds
        self.targets = targets.long()
        self.losses = losses
        self.dl = dl
        self.processor = processor

    @classmethod
    def from_learner(cls, learn: Learner, dl: DataLoader | None = None) -> ClassificationInterpretation:
        """Run ``learn`` over ``dl`` (the validation set by default) and keep what interpretation needs."""
        if learn.dls.task != "classification":
            raise ValueError(
                f"ClassificationInterpretation is for single-label classification; this model is {learn.dls.task}"
            )
        dl = dl if dl is not None else learn.dls.valid
        preds, targets, losses = learn.get_preds(dl, with_loss=True)
        return cls(learn.dls.vocab, preds, targets, losses, dl, getattr(learn.dls, "processor", None))

    def confusion_matrix(self) -> np.ndarray:
        """Counts ``[actual, predicted]`` over the vocabulary."""
        n = len(self.vocab)
        predicted = self.preds.argmax(dim=1)
        flat = self.targets * n + predicted
        return torch.bincount(flat, minlength=n * n).reshape(n, n).numpy()

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """Off-diagonal ``(actual, predicted, count)`` with ``count >= min_val``, most frequent first."""
        matrix = self.confusion_matrix()
        pairs = [
            (self.vocab[a], self.vocab[p], int(matrix[a, p]))
            for a in range(len(self.vocab))
            for p in range(len(self.vocab))
            if a != p and matrix[a, p] >= min_val
        ]
        return sorted(pairs, key=lambda pair: -pair[2])  # stable: ties keep vocabulary order

    def top_losses(self, k: int | None = None, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` largest (or smallest) losses and their row indices."""
        k = len(self.losses) if k is None else min(k, len(self.losses))
        return torch.topk(self.losses, k, largest=largest)

    def plot_confusion_matrix(self, path: str | Path | None = None, normalize: bool = False) -> Figure:
        """The confusion matrix, counts (or row shares with ``normalize``) in each cell; saved as a PNG when given a path."""
        matrix = self.confusion_matrix().astype(np.float64)
        if normalize:
            matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        n = len(self.vocab)
        size = max(4.0, 0.5 * n + 2)
        fig = Figure(figsize=(size, size))
        ax = fig.add_subplot()
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(n), self.vocab, rotation=90)
        ax.set_yticks(range(n), self.vocab)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title("confusion matrix")
        threshold = matrix.max() / 2
        for a in range(n):
            for p in range(n):
                text = f"{matrix[a, p]:.2f}" if normalize else str(int(matrix[a, p]))
                ax.text(p, a, text, ha="center", va="center", color="white" if matrix[a, p] > threshold else "black")
        return figures.finish(fig, path)

    def plot_top_losses(self, k: int = 9, path: str | Path | None = None) -> Figure:
        """The ``k`` worst predictions in a grid titled prediction / actual, loss / probability of the actual class.

        Images are drawn; table rows are written out as text. Saved as a PNG
        when given a path.
        """
        if self.dl is None:
            raise ValueError("plot_top_losses needs the loader the predictions came from (dl)")
        losses, indices = self.top_losses(k)
        inputs = inputs_at(self.dl, indices.tolist())
        cols = max(1, math.ceil(math.sqrt(len(indices))))
        rows = max(1, math.ceil(len(indices) / cols))
        fig = Figure(figsize=(3 * cols, 3 * rows))
        for slot, (index, loss) in enumerate(zip(indices.tolist(), losses.tolist())):
            ax = fig.add_subplot(rows, cols, slot + 1)
            ax.axis("off")
            actual = int(self.targets[index])
            predicted = int(self.preds[index].argmax())
            probability = float(self.preds[index, actual])
            title = f"{self.vocab[predicted]} / {self.vocab[actual]}\n{loss:.2f} / p({self.vocab[actual]})={probability:.2f}"
            ax.set_title(title, fontsize=9)
            item = inputs[index]
            if is_image(item):
                ax.imshow(image_array(item[0]))
            else:
                ax.text(
                    0,
                    1,
                    describe_row(item, self.processor),
                    va="top",
                    family="monospace",
                    fontsize=7,
                    transform=ax.transAxes,
                )
        fig.suptitle("prediction / actual, loss / probability of the actual class")
        return figures.finish(fig, path)


def inputs_at(dl: DataLoader, indices: Sequence[int]) -> dict[int, tuple[torch.Tensor, ...]]:
    """The inputs (target dropped) of the rows at ``indices``, walking ``dl`` in order once."""
    wanted = set(indices)
    found: dict[int, tuple[torch.Tensor, ...]] = {}
    offset = 0
    for batch in dl:
        size = len(batch[0])
        for row in wanted.intersection(range(offset, offset + size)):
            found[row] = tuple(t[row - offset].cpu() for t in batch[:-1])
        offset += size
        if len(found) == len(wanted):
            break
    return found


def is_image(item: tuple[torch.Tensor, ...]) -> bool:
    """One input shaped [C, H, W] with 1 or 3 channels: an image batch row."""
    return len(item) == 1 and item[0].ndim == 3 and item[0].shape[0] in (1, 3)


def describe_row(item: tuple[torch.Tensor, ...], processor: Any = None) -> str:
    """``name: value`` lines for a tabular row ``(x_cat, x_cont)``, decoded when a fitted processor is known."""
    x_cat, x_cont = (item + (torch.zeros(0), torch.zeros(0)))[:2]
    cat_names = list(getattr(processor, "cat_names", None) or [f"cat_{i}" for i in range(len(x_cat))])
    cont_names = list(getattr(processor, "cont_names", None) or [f"cont_{i}" for i in range(len(x_cont))])
    categorify = getattr(processor, "categorify", None)
    normalize = getattr(processor, "normalize", None)
    lines = []
    for name, code in zip(cat_names, x_cat.tolist()):
        vocab = getattr(categorify, "vocab", {}).get(name)
        lines.append(f"{name}: {vocab[int(code)] if vocab and 0 <= int(code) < len(vocab) else code}")
    for name, value in zip(cont_names, x_cont.tolist()):
        if normalize is not None and name in getattr(normalize, "means", {}):
            value = value * normalize.stds[name] + normalize.means[name]  # back to the column's own units
        lines.append(f"{name}: {value:.4g}")
    return "\n".join(lines)


def write_interpretation(learn: Learner, out: Path, dl: DataLoader | None = None, k: int = 9) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    interp = ClassificationInterpretation.from_learner(learn, dl)
    interp.plot_confusion_matrix(out / "confusion_matrix.png")
    interp.plot_top_losses(k, out / "top_losses.png")
    matrix = interp.confusion_matrix()
    return {
        "accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)),
        "items": int(matrix.sum()),
        "most_confused": interp.most_confused(min_val=1)[:10],
        "confusion_matrix": str(out / "confusion_matrix.png"),
        "top_losses": str(out / "top_losses.png"),
    }
