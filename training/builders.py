"""fastai's two front doors: ``vision_learner`` and ``tabular_learner``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from training.data.core import DataLoaders
from training.learner import Learner
from training.metrics import accuracy_multi, error_rate, rmse
from training.models.tabular import TabularModel
from training.models.vision import create_vision_model, splitter_for

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_metrics(task: str) -> list[Any]:
    return {"classification": [error_rate], "multilabel": [accuracy_multi()], "regression": [rmse]}[task]


def vision_learner(
    dls: DataLoaders,
    arch: str = "resnet34",
    pretrained: str | Path | None = None,
    metrics: Sequence[Any] | None = None,
    y_range: tuple[float, float] | None = None,
    **learner_kwargs: Any,
) -> Learner:
    """A torchvision body with fastai's head; ImageNet statistics when starting from pretrained weights.

    Starting from pretrained weights the body is frozen, as in fastai, so that
    ``fine_tune`` first trains the head alone.
    """
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if pretrained else dls.stats()
    if dls.task == "regression":
        dls.y_range = y_range
    model = create_vision_model(arch, dls.n_out, mean=mean, std=std, pretrained=pretrained, y_range=y_range)
    learn = Learner(
        dls,
        model,
        metrics=default_metrics(dls.task) if metrics is None else list(metrics),
        splitter=splitter_for(arch),
        **learner_kwargs,
    )
    learn.arch = arch
    if pretrained:
        learn.freeze()
    return learn


def tabular_learner(
    dls: DataLoaders,
    layers: Sequence[int] = (200, 100),
    y_range: tuple[float, float] | None = None,
    metrics: Sequence[Any] | None = None,
    ps: Sequence[float] | None = None,
    embed_p: float = 0.0,
    **learner_kwargs: Any,
) -> Learner:
    """fastai's TabularModel over the fitted processors of ``dls``."""
    dls.y_range = y_range
    model = TabularModel(
        dls.emb_szs(),
        len(dls.processor.cont_names),
        dls.n_out,
        layers=list(layers),
        ps=list(ps) if ps is not None else None,
        embed_p=embed_p,
        y_range=y_range,
    )
    learn = Learner(
        dls, model, metrics=default_metrics(dls.task) if metrics is None else list(metrics), **learner_kwargs
    )
    learn.arch = "tabular"
    return learn
