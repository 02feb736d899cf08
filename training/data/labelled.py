"""New labelled data (a folder of class folders, or a CSV with the target column) encoded with an exported
learner's own preprocessing and vocabulary: what interpretation, fine-tuning and evaluation of a bundle read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from training.data.core import DataError, read_csv
from training.data.image_files import IMAGE_EXTENSIONS
from training.data.tabular import class_targets
from training.learner import Learner


def labelled_image_files(folder: Path) -> tuple[list[Path], list[str]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"{folder}: no image files found")
    return files, [p.parent.name for p in files]


def encoded_loader(learn: Learner, data: Path, bs: int = 64) -> DataLoader:
    """New labelled data encoded with the exported learner's own preprocessing."""
    if learn.dls.input_kind == "image":
        files, labels = labelled_image_files(data)
        return image_loader(learn, files, labels, bs, where=str(data))
    return table_loader(learn, read_csv(data), bs, where=str(data))


def image_loader(learn: Learner, files: list[Path], labels: list[str], bs: int = 64, where: str = "") -> DataLoader:
    """Image files with their class names, as the learner encodes them; ``where`` prefixes errors."""
    dls = learn.dls
    unknown = sorted(set(labels) - set(dls.vocab))
    if unknown:
        raise DataError(f"{where + ': ' if where else ''}labels the model does not know: {', '.join(unknown[:10])}")
    inputs = dls.encode_items(files)
    targets = torch.tensor([dls.vocab.index(label) for label in labels])
    return DataLoader(TensorDataset(*inputs, targets), batch_size=bs)


def table_loader(
    learn: Learner, frame: pd.DataFrame, bs: int = 64, where: str = "", ignore: tuple[str, ...] = ()
) -> DataLoader:
    """Rows with the target column, as the learner encodes them (``ignore``: columns left out of the inputs)."""
    dls = learn.dls
    target = dls.target_names[0]
    if target not in frame.columns:
        raise DataError(f"{where + ': ' if where else ''}no target column {target!r}")
    frame = frame.dropna(subset=[target])
    inputs = dls.encode_items(frame.drop(columns=list(ignore), errors="ignore"))
    if dls.task == "classification":
        targets, _ = class_targets(frame[target], target, dls.vocab)  # the loader's own label rule
    else:
        values = frame[target].to_numpy(dtype=np.float32)
        targets = torch.tensor(np.log(values) if dls.log_target else values).reshape(len(frame), -1)
    return DataLoader(TensorDataset(*inputs, targets), batch_size=bs)
