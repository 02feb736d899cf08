"""Yesterday's model, today's data: how ``finetune --from`` continues training an exported model.

One code path for the command line and for any job that fine-tunes on a
schedule (a nightly fine-tune imports :data:`FINETUNE_DEFAULTS` and
:func:`finetune_learner`), so both train the same way:

    from training import load_learner
    from training.finetune import FINETUNE_DEFAULTS, finetune_data, finetune_learner

    learn = load_learner("models/shapes/3")
    dls = finetune_data(learn, "data/today/", valid_pct=0.2, seed=42, bs=64)
    report = finetune_learner(learn, dls)          # FINETUNE_DEFAULTS; report.before/.after on today's rows
    learn.export("models/", "shapes")

The defaults were chosen by measurement on a day's shifted data
(docs/training.md): fastai's transfer-learning recipe (``fine_tune``: a
frozen epoch, then the body at 1/100 of the rate) barely moves a model that
was itself trained from scratch on a few hundred items, because its body is
not a general-purpose feature extractor that should be kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from training.data.core import DataLoaders
from training.data.images import ImageDataLoaders
from training.data.tabular import TabularDataLoaders
from training.defaults import DEFAULT_LR_RULE, default_epochs
from training.learner import Learner


@dataclass(frozen=True)
class FinetuneDefaults:
    """How to continue training an exported model on new data.

    ``lr``: the peak learning rate, or None for lr_find's ``lr_rule`` on the
    new data. ``epochs``: or None for ``base_epochs`` raised to make
    ``min_steps`` optimiser steps. ``freeze_epochs``: epochs training the
    head alone first (fastai's recipe; 0 trains everything from the start).
    ``body_lr_div``: the body trains at ``lr / body_lr_div`` (1: one rate for
    the whole model).
    """

    lr: float | None = None
    lr_rule: str = DEFAULT_LR_RULE
    epochs: int | None = None
    base_epochs: int = 3
    min_steps: int = 100
    freeze_epochs: int = 0
    body_lr_div: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FINETUNE_DEFAULTS = FinetuneDefaults()


@dataclass(frozen=True)
class FinetuneReport:
    """What a fine-tune did: the settings used, and the metrics on the new validation rows before and after."""

    lr: float
    epochs: int
    freeze_epochs: int
    body_lr_div: float
    lr_source: str  # "given" or "lr_find's <rule>"
    before: dict[str, float]
    after: dict[str, float]


def finetune_data(
    learn: Learner, data: str | Path, valid_pct: float = 0.2, seed: int = 42, bs: int = 64
) -> DataLoaders:
    """New labelled data loaded with the exported model's own preprocessing, classes and augmentation."""
    old = learn.dls
    if old.input_kind == "image":
        dls: DataLoaders = ImageDataLoaders.from_folder(
            data,
            valid_pct=valid_pct,
            seed=seed,
            size=(old.resize_spec.height, old.resize_spec.width),
            method=old.resize_spec.method,
            pad_mode=old.resize_spec.pad_mode,
            aug=getattr(old, "aug", None),
            bs=bs,
            vocab=old.vocab,
        )
    else:
        dls = TabularDataLoaders.from_csv(
            data,
            y_names=old.target_names,
            y_block={"classification": "category", "regression": "regression"}.get(old.task),
            log_target=old.log_target,
            valid_pct=valid_pct,
            seed=seed,
            bs=bs,
            processor=old.processor,
            vocab=old.vocab,
        )
        dls.y_range = old.y_range
    dls.thresholds = old.thresholds
    return dls


def finetune_learner(
    learn: Learner,
    dls: DataLoaders,
    defaults: FinetuneDefaults = FINETUNE_DEFAULTS,
    **overrides: Any,
) -> FinetuneReport:
    """Train ``learn`` on ``dls`` as ``defaults`` (with any field overridden by keyword) says; report before/after.

    The metrics before and after are on the same validation rows of the new
    data: the old version's own figures came from other rows.
    """
    settings = replace(defaults, **{k: v for k, v in overrides.items() if v is not None})
    learn.dls = dls
    before = {k: float(v) for k, v in learn.validate().items()}
    lr, source = settings.lr, "given"
    if lr is None:
        lr, source = learn.lr_find(show_plot=False).rule(settings.lr_rule), f"lr_find's {settings.lr_rule}"
    epochs = settings.epochs or default_epochs(len(dls.train), settings.base_epochs, settings.min_steps)
    body_lr = slice(lr / settings.body_lr_div, lr) if settings.body_lr_div != 1 else lr
    if settings.freeze_epochs:
        learn.freeze()
        learn.fit_one_cycle(settings.freeze_epochs, slice(lr), pct_start=0.99)
    learn.unfreeze()
    learn.fit_one_cycle(epochs, body_lr)
    after = {k: float(v) for k, v in learn.validate().items()}
    return FinetuneReport(lr, epochs, settings.freeze_epochs, settings.body_lr_div, source, before, after)
