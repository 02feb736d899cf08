"""``dls.show_batch()`` and ``learn.show_results()``: look at the data, then at what the model made of it.

Images come back as a titled grid (a matplotlib ``Figure``, drawn inline in
a notebook, saved when given a path); tables as a DataFrame of readable
rows, which a notebook shows as a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from matplotlib.figure import Figure

from training import figures

if TYPE_CHECKING:
    from training.data.core import DataLoaders
    from training.learner import Learner


def show_batch(dls: DataLoaders, max_n: int = 9, path: str | Path | None = None) -> Figure | pd.DataFrame:
    """Up to ``max_n`` training items as the model is trained on them (augmented images), with their labels."""
    if dls.train is None:
        raise ValueError("show_batch needs training data; this DataLoaders holds none (an exported learner?)")
    if dls.input_kind == "tabular":
        rows = dls.train_df_raw
        return rows.sample(n=min(max_n, len(rows)), random_state=0)
    images, labels = [], []
    for *inputs, targets in dls.train:
        for pixels, target in zip(inputs[0], targets):
            images.append(figures.image_array(pixels))
            labels.append(label_of(dls, target))
            if len(images) == max_n:
                return figures.finish(figures.image_grid(images, labels), path)
    return figures.finish(figures.image_grid(images, labels), path)


def show_results(learn: Learner, max_n: int = 9, path: str | Path | None = None) -> Figure | pd.DataFrame:
    """The first ``max_n`` validation items with actual and predicted labels (green right, red wrong).

    Tables: the raw validation rows with a ``<target>_pred`` column per target.
    """
    dls = learn.dls
    if dls.valid is None:
        raise ValueError("show_results needs validation data; this learner holds none (an exported learner?)")
    preds, targets = learn.get_preds()
    preds, targets = preds[:max_n], targets[:max_n]
    predicted = [dls.decode_prediction(row)[0] for row in preds]
    if dls.input_kind == "tabular":
        rows = dls.valid_df_raw.iloc[: len(predicted)].copy()
        for j, name in enumerate(dls.target_names if dls.task == "regression" else dls.target_names[:1]):
            rows[f"{name}_pred"] = [p[j] if isinstance(p, list) else p for p in predicted]
        return rows
    images, titles, colours = [], [], []
    for index, (guess, target) in enumerate(zip(predicted, targets)):
        actual = label_of(dls, target)
        guess = label_text(guess)
        images.append(figures.image_array(dls.valid_ds.pixels(index)))
        titles.append(f"{actual}\n{guess}")
        colours.append("green" if guess == actual else "red")
    fig = figures.image_grid(images, titles, colours)
    fig.suptitle("actual / predicted", y=1.02)
    return figures.finish(fig, path)


def label_of(dls: DataLoaders, target: torch.Tensor) -> str:
    """A target as text: the class name, the names of a multi-hot row, or the value(s)."""
    if dls.task == "classification":
        return dls.vocab[int(target)]
    if dls.task == "multilabel":
        return ";".join(name for name, on in zip(dls.vocab, target.tolist()) if on) or "(none)"
    values = target.reshape(-1).exp() if dls.log_target else target.reshape(-1)
    return ", ".join(f"{float(v):.4g}" for v in values)


def label_text(decoded: Any) -> str:
    """A decoded prediction as :func:`label_of` writes a target."""
    if isinstance(decoded, list):
        if all(isinstance(v, str) for v in decoded):
            return ";".join(decoded) or "(none)"
        return ", ".join(f"{float(v):.4g}" for v in decoded)
    if isinstance(decoded, float):
        return f"{decoded:.4g}"
    return str(decoded)
