"""New labelled data (a folder of class folders, or a CSV with the target column) encoded with an exported
learner's own preprocessing and vocabulary: what interpretation, fine-tuning and evaluation of a bundle read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
    dls = learn.dls
    if dls.input_kind == "image":
        files, labels = labelled_image_files(data)
        unknown = sorted(set(labels) - set(dls.vocab))
        if unknown:
            raise DataError(f"{data}: labels the model does not know: {', '.join(unknown[:10])}")
        inputs = dls.encode_items(files)
        targets = torch.tensor([dls.vocab.index(label) for label in labels])
        return DataLoader(TensorDataset(*inputs, targets), batch_size=bs)
    target = dls.target_names[0]
    df = read_csv(data)
    if target not in df.columns:
        raise DataError(f"{data}: no target column {target!r}")
    df = df.dropna(subset=[target])
    inputs = dls.encode_items(df)
    if dls.task == "classification":
        targets, _ = class_targets(df[target], target, dls.vocab)  # the loader's own label rule
    else:
        values = df[target].to_numpy(dtype=np.float32)
        targets = torch.tensor(np.log(values) if dls.log_target else values).reshape(len(df), -1)
    return DataLoader(TensorDataset(*inputs, targets), batch_size=bs)
