"""The nightly run's data: the day's items split into training and a held-out share, and the slices it scores.

The split is by a hash of each item's request id, so a rerun over the same
answers holds out the same items, and an item never moves from the held-out
share into training because more answers arrived.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from training.data.core import DataError, DataLoaders, read_csv
from training.data.images import IMAGE_EXTENSIONS, ImageDataLoaders
from training.data.labelled import image_loader, table_loader
from training.data.tabular import TabularDataLoaders
from training.learner import Learner
from training.loop.dataset import TABLE_FILE, Dataset

HOLDOUT_COLUMN = "_nightly_holdout"


def held_out(dataset: Dataset, share: float) -> list[bool]:
    """Which items are held out: a stable ``share`` of them, chosen by a hash of request id and item."""
    marks = []
    for item in dataset.items:
        digest = hashlib.sha256(f"{item.request_id}/{item.item}".encode()).digest()
        marks.append(int.from_bytes(digest[:8], "big") / 2**64 < share)
    if all(marks) or not any(marks):  # too few items for the share to fall on both sides: hold out one in five
        marks = [i % 5 == 4 for i in range(len(marks))]
    if not any(marks) or all(marks):
        raise DataError(f"{len(marks)} labelled item(s): too few to hold any out and still train on the rest")
    return marks


def loop_dataloaders(learn: Learner, dataset: Dataset, holdout: list[bool], work: Path, bs: int = 64) -> DataLoaders:
    """The day's data with the model's own preprocessing, vocabulary and augmentation; valid = the held-out share.

    Mirrors ``training.finetune.finetune_data``, with the split chosen here rather than at random.
    """
    old = learn.dls
    if old.input_kind == "image":
        root = work / "split"
        if root.exists():
            shutil.rmtree(root)
        for name, out in zip(dataset.files, holdout):
            target = root / ("valid" if out else "train") / name
            target.parent.mkdir(parents=True, exist_ok=True)
            _link(dataset.folder / name, target)
        dls: DataLoaders = ImageDataLoaders.from_folder(
            root,
            size=(old.resize_spec.height, old.resize_spec.width),
            method=old.resize_spec.method,
            pad_mode=old.resize_spec.pad_mode,
            aug=getattr(old, "aug", None),
            bs=bs,
            vocab=old.vocab,
        )
    else:
        frame = read_csv(dataset.folder / TABLE_FILE).assign(**{HOLDOUT_COLUMN: holdout})
        dls = TabularDataLoaders.from_df(
            frame,
            y_names=old.target_names,
            y_block={"classification": "category", "regression": "regression"}.get(old.task),
            log_target=old.log_target,
            valid_col=HOLDOUT_COLUMN,
            bs=bs,
            processor=old.processor,
            vocab=old.vocab,
        )
        dls.y_range = old.y_range
    dls.thresholds = old.thresholds
    return dls


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def labelled_loader(learn: Learner, data: Path, bs: int = 64) -> DataLoader:
    """Labelled data encoded with the learner's own preprocessing: an image folder (class = parent folder) or
    a CSV with the target column."""
    dls = learn.dls
    if dls.input_kind == "image":
        files = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise DataError(f"{data}: no image files found")
        return image_loader(learn, files, [p.parent.name for p in files], bs)
    frame = read_csv(data)
    return table_loader(learn, frame, bs, ignore=(HOLDOUT_COLUMN,))


def subset_loader(learn: Learner, dataset: Dataset, keep: list[bool], bs: int = 64) -> DataLoader | None:
    """The dataset's items where ``keep`` is true, encoded for ``learn``; None when there are none."""
    if not any(keep):
        return None
    if learn.dls.input_kind == "image":
        chosen = [(dataset.folder / f, str(i.answer)) for f, i, k in zip(dataset.files, dataset.items, keep) if k]
        return image_loader(learn, [f for f, _ in chosen], [label for _, label in chosen])
    frame = read_csv(dataset.folder / TABLE_FILE)
    return table_loader(learn, frame[np.asarray(keep)], ignore=(HOLDOUT_COLUMN,))


def scores(learn: Learner, dl: DataLoader | None) -> dict[str, float] | None:
    return None if dl is None else {k: round(float(v), 6) for k, v in learn.validate(dl).items()}
