"""fastai's two front doors: ``vision_learner`` and ``tabular_learner``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.data.core import DataLoaders
from training.learner import Learner, StandardizedMSELoss, set_seed
from training.metrics import accuracy_multi, error_rate, rmse, rmse_exp, rmse_log
from training.models.tabular import TabularModel
from training.models.vision import create_vision_model, resolve_pretrained, splitter_for

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_metrics(task: str, log_target: bool = False) -> list[Any]:
    """By task; a log-target regression reports ``rmse_log`` (log units) and ``rmse`` (the target's units)."""
    if task == "regression":
        return [rmse_log, rmse_exp] if log_target else [rmse]
    return {"classification": [error_rate], "multilabel": [accuracy_multi()]}[task]


def vision_learner(
    dls: DataLoaders,
    arch: str = "resnet34",
    pretrained: bool | str | Path | None = True,
    metrics: Sequence[Any] | None = None,
    y_range: tuple[float, float] | None = None,
    channels: Sequence[int] | None = None,
    **learner_kwargs: Any,
) -> Learner:
    """A torchvision body with fastai's head; ImageNet statistics when starting from pretrained weights.

    ``pretrained=True`` (fastai's default) loads torchvision's ImageNet
    weights through its weights API (the torch cache, else one download); a
    path loads a local state dict; False trains from scratch (use
    ``arch="small_resnet"`` for that; the from-scratch archs read True as False). Starting from pretrained weights the
    body is frozen, as in fastai, so that ``fine_tune`` first trains the head
    alone. ``channels``: the block widths of the from-scratch archs
    (``simple_cnn``, ``small_resnet``; default 32, 64, 128, 256).
    """
    if learner_kwargs.get("seed") is not None:
        set_seed(learner_kwargs["seed"])  # before the head's (and a from-scratch body's) random init
    pretrained = resolve_pretrained(arch, pretrained)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if pretrained else dls.stats()
    if dls.task == "regression":
        dls.y_range = y_range
    model = create_vision_model(
        arch, dls.n_out, mean=mean, std=std, pretrained=pretrained, y_range=y_range, channels=channels
    )
    learn = Learner(
        dls,
        model,
        metrics=default_metrics(dls.task, dls.log_target) if metrics is None else list(metrics),
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
    standardize_target: bool = True,
    **learner_kwargs: Any,
) -> Learner:
    """fastai's TabularModel over the fitted processors of ``dls``.

    Regression with ``standardize_target`` (the default) trains on
    standardised targets whatever their scale: the model starts at the
    training mean and un-standardises its own output (so the ONNX graph
    does too), and the loss is MSE in standard deviations.
    """
    if learner_kwargs.get("seed") is not None:
        set_seed(learner_kwargs["seed"])  # before the model's random init: the same seed, the same weights
    dls.y_range = y_range
    stats = dls.target_stats if dls.task == "regression" and standardize_target else None
    if stats is not None and "loss_func" not in learner_kwargs:
        learner_kwargs["loss_func"] = StandardizedMSELoss(stats[1])
    model = TabularModel(
        dls.emb_szs(),
        len(dls.processor.cont_names),
        dls.n_out,
        layers=list(layers),
        ps=list(ps) if ps is not None else None,
        embed_p=embed_p,
        y_range=y_range,
        target_stats=stats,
    )
    metrics = default_metrics(dls.task, dls.log_target) if metrics is None else list(metrics)
    learn = Learner(dls, model, metrics=metrics, **learner_kwargs)
    learn.arch = "tabular"
    return learn
