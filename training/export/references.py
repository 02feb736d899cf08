"""Export-time fitting for monitoring: what the service needs to judge live traffic, as plain data.

Called by :func:`training.export.export_learner`:

* :func:`image_feature_references` -- the reference bins of the per-image
  summaries (``bundle.monitoring.pixel_summaries`` of the training images as
  validation preprocesses them), the same function the service applies;
* :func:`reference_sample` -- a capped sample (``REFERENCE_SAMPLE_SIZE`` rows)
  of raw training rows, or of training image summaries, stored in
  ``reference.json`` for ``python -m training drift-report``;
* :func:`model_outputs` -- the model's raw outputs, and the features its last
  Linear layer reads, on the training items (as validation preprocesses them,
  without augmentation) and on the validation items;
* :func:`fit_feature_space` -- on the training features: the class means and
  shared whitening of the Mahalanobis out-of-domain score
  (``bundle.monitoring.FeatureSpace``);
* :func:`fit_monitoring` -- on the validation set: the out-of-domain
  thresholds at a chosen in-domain false-alarm rate (on the Mahalanobis
  distance of the validation features, the energy of their logits and
  ``1 - max probability``), and the isotonic map that calibrates confidences
  for estimated accuracy (classification only);
* :func:`prediction_references` -- the reference bins of the predicted class
  and confidence (or value), over the training and validation items together
  where the training items' predictions are like the validation items' (the
  validation set alone is often too small: 60 items read as drift on any
  traffic), over the validation items where they are not.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, Subset

from bundle import monitoring as mon
from bundle import reference as ref
from bundle.manifest import FEATURES_OUTPUT, Monitoring, OodScore
from bundle.noise import psi_null_quantile, smoothed_psi
from training.learner import Learner, activation_for, model_device

REFERENCE_SAMPLE_SIZE = 1_000  # rows kept for the classifier drift report; documented in docs/monitoring.md
DEFAULT_FALSE_ALARM_RATE = 0.01  # share of in-domain validation items the out-of-domain threshold flags
MAX_FIT_ITEMS = 20_000  # training items the feature statistics and the prediction reference are taken on


@dataclass
class ModelOutputs:
    """Raw outputs, targets and (where the model has them) last-Linear features of one split, in float32 numpy."""

    raw: np.ndarray
    targets: np.ndarray
    features: np.ndarray | None


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The model's last ``nn.Linear`` (in registration order, which is the order they run in every model
    ``training.models`` builds); None without one."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@contextmanager
def tap_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, each forward pass of ``model`` appends the input of its last Linear layer to the list it
    yields (nothing where it has none). The export graph uses the same hook, so ONNX and PyTorch agree."""
    taken: list[torch.Tensor] = []
    layer = last_linear(model)
    handle = layer.register_forward_hook(lambda _m, inputs, _o: taken.append(inputs[0])) if layer else None
    try:
        yield taken
    finally:
        if handle is not None:
            handle.remove()


def exports_features(learn: Learner) -> bool:
    """Single-label classifiers whose last Linear reads a ``[batch, D]`` input and makes the logits."""
    layer = last_linear(learn.model)
    return learn.dls.task == "classification" and layer is not None and layer.out_features == learn.dls.n_out


def training_loader(dls: Any, limit: int = MAX_FIT_ITEMS, seed: int = 0) -> Any:
    """The training items as validation preprocesses them (no augmentation, no shuffling), at most ``limit``
    of them (a seeded random subset beyond it); the training loader itself for other kinds of loaders."""
    if getattr(dls, "input_kind", None) == "image" and getattr(dls, "train_ds", None) is not None:
        dataset = copy.copy(dls.train_ds)
        dataset.train, dataset.aug = False, None
        return DataLoader(_subset(dataset, limit, seed), batch_size=dls.bs, shuffle=False)
    dataset = getattr(dls.train, "dataset", None)
    if getattr(dls, "input_kind", None) == "tabular" and dataset is not None:
        subset = _subset(dataset, limit, seed)
        sampler = BatchSampler(SequentialSampler(subset), getattr(dls, "bs", 64), drop_last=False)
        return DataLoader(subset, sampler=sampler, batch_size=None, collate_fn=_stack_rows)
    return dls.train


def _subset(dataset: Any, limit: int, seed: int) -> Any:
    if len(dataset) <= limit:
        return dataset
    keep = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:limit])
    return Subset(dataset, keep.tolist())


def _stack_rows(rows: Any) -> tuple[torch.Tensor, ...]:
    """A batch of a tabular dataset indexed whole (a list of indices gives tensors) or row by row."""
    if isinstance(rows, tuple):
        return rows
    return tuple(torch.stack(column) for column in zip(*rows))


def model_outputs(learn: Learner, loader: Any, features: bool) -> ModelOutputs:
    """The model's raw outputs (and, with ``features``, its last Linear's inputs) and targets over ``loader``,
    in eval mode."""
    model = learn.model
    device = model_device(model, learn.device)
    model.eval()
    raws, targets, taps = [], [], []
    with torch.no_grad(), tap_features(model) as taken:
        for batch in loader:
            *inputs, target = (t.to(device) for t in batch)
            taken.clear()
            raws.append(model(*inputs).float().cpu())
            targets.append(target.cpu())
            if features:
                taps.append(taken[-1].float().cpu())
    if not raws:
        raise ValueError("the loader is empty: nothing to fit monitoring on")
    return ModelOutputs(
        torch.cat(raws).numpy(),
        torch.cat(targets).numpy(),
        torch.cat(taps).flatten(1).numpy() if features else None,
    )


def fit_feature_space(features: np.ndarray, targets: np.ndarray, n_classes: int) -> mon.FeatureSpace:
    """Class means and the shared whitening of ``features`` [N, D] (the training items'): Ledoit-Wolf shrinkage
    keeps the covariance invertible with fewer items than dimensions; a class training lacks gets the
    overall mean (it cannot be told apart, but it is not far either)."""
    from sklearn.covariance import ledoit_wolf

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets).reshape(-1).astype(np.int64)
    overall = x.mean(axis=0)
    means = np.stack([x[y == c].mean(axis=0) if np.any(y == c) else overall for c in range(n_classes)])
    covariance, shrinkage = ledoit_wolf(x - means[y])
    values, vectors = np.linalg.eigh(covariance)
    floor = max(float(values.max()), 1e-12) * 1e-9  # a constant feature must not divide by zero
    whitening = vectors @ np.diag(1.0 / np.sqrt(np.maximum(values, floor))) @ vectors.T
    return mon.FeatureSpace(means, whitening, items=len(x), shrinkage=float(shrinkage))


def prediction_references(
    task: str, vocab: list[str] | None, train: np.ndarray, valid: np.ndarray
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reference bins of what the model answers (activated outputs ``train`` and ``valid``, [N, k]), and where each
    came from.

    A feature's reference is binned over the training and validation items together where the training items'
    values are like the validation items' (their PSI against the validation bins within its noise at those
    sizes, the null's 0.99 quantile: ``bundle.noise``), else over the validation items alone: a model is often
    surer of what it trained on (a confidence of 0.9999 on training items against 0.999 on unseen ones), and
    live traffic is unseen. The predicted class usually joins; the confidence of a model that fits its training
    data closely does not."""
    references: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    for name, (kind, train_values, valid_values) in _prediction_values(task, vocab, train, valid).items():
        fit = ref.categorical_reference if kind == "categorical" else ref.continuous_reference
        alone = fit(valid_values)
        expected = ref.expected_shares(alone)
        counts = ref.bin_shares(alone, train_values) * len(train_values)
        training_psi = smoothed_psi(expected, len(valid_values), counts)
        level = psi_null_quantile(expected, len(valid_values), len(train_values), quantile=0.99)
        if training_psi <= level:
            references[name] = fit(np.concatenate([train_values, valid_values]))
            sources[name] = {"train": len(train_values), "valid": len(valid_values)}
        else:
            references[name] = alone
            sources[name] = {
                "train": 0,
                "valid": len(valid_values),
                "training_psi": round(training_psi, 4),
                "noise": round(level, 4),
            }
    return references, sources


def _prediction_values(
    task: str, vocab: list[str] | None, train: np.ndarray, valid: np.ndarray
) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """Each prediction feature's kind and its values on the training and validation items."""
    if task == "classification":
        labels = np.array(vocab, dtype=object)
        return {
            "label": ("categorical", labels[train.argmax(axis=1)], labels[valid.argmax(axis=1)]),
            "confidence": ("continuous", train.max(axis=1), valid.max(axis=1)),
        }
    if task == "multilabel":
        return {"confidence": ("continuous", train.max(axis=1), valid.max(axis=1))}
    return {"value": ("continuous", train[:, 0], valid[:, 0])}


def image_summaries_of(dls: Any, split: str = "train") -> dict[str, np.ndarray]:
    """Summaries of every readable image of a split, as the service computes them for live images."""
    ds = dls._dataset(split)
    pixels, sizes = [], []
    for i in range(len(ds)):
        try:
            pixels.append(np.asarray(ds.pixels(i)))
        except Exception:  # unreadable: training skipped it too
            continue
        sizes.append(_decoded_size(ds.items[i]))
    if not pixels:
        return {key: np.array([]) for key in mon.SUMMARY_KEYS}
    return mon.pixel_summaries(np.stack(pixels), sizes)


def image_feature_references(summaries: dict[str, np.ndarray]) -> dict[str, Any]:
    return {f"image.{key}": ref.continuous_reference(values) for key, values in summaries.items()}


def reference_sample(dls: Any, summaries: dict[str, np.ndarray] | None, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``REFERENCE_SAMPLE_SIZE`` training rows (tabular: raw columns; images: their summaries)."""
    rng = np.random.default_rng(seed)
    if dls.input_kind == "image":
        if not summaries:
            return []
        n = len(next(iter(summaries.values())))
        keep = np.sort(rng.permutation(n)[:REFERENCE_SAMPLE_SIZE])
        return [{key: float(summaries[key][i]) for key in summaries} for i in keep]
    frame = dls.train_df_raw
    processor = dls.processor
    columns = [c for c in [*processor.raw_cat_names, *processor.raw_cont_names] if c in frame.columns]
    keep = np.sort(rng.permutation(len(frame))[:REFERENCE_SAMPLE_SIZE])
    rows = frame.iloc[keep][columns].to_dict(orient="records")
    return [{k: _plain(v) for k, v in row.items()} for row in rows]


def fit_monitoring(
    learn: Learner,
    false_alarm_rate: float,
    sample_size: int,
    ood_score: OodScore = "energy",
    valid: ModelOutputs | None = None,
    space: mon.FeatureSpace | None = None,
) -> Monitoring:
    """Calibrate on the validation set: OOD thresholds and confidence calibration (classification), else defaults.

    ``ood_score`` names the score the bundle uses (``bundle.monitoring.ood_score``); every score the bundle
    can give is calibrated at the same rate (``ood_thresholds``): ``max_softmax`` always, ``energy``
    where ``ood_score`` is not ``max_softmax`` (the graph outputs its logits), ``mahalanobis`` with
    ``space`` and the validation features in ``valid``. The service computes the same scores from the same
    graph, whose outputs the parity check covers. ``valid``: the validation outputs, where the caller
    already has them.
    """
    if learn.dls.task != "classification":
        return Monitoring(reference_sample_size=sample_size)
    if valid is None:
        raw, targets = learn.get_preds(activation=False)
        valid = ModelOutputs(raw.float().numpy(), targets.numpy(), None)
    logits = valid.raw
    probs = activation_for(learn.dls.task)(torch.from_numpy(logits)).numpy()
    target = valid.targets.astype(np.int64).reshape(-1)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == target
    knots_x, knots_y = mon.fit_confidence_calibration(confidence, correct)
    scores = ["max_softmax"] + (["energy"] if ood_score != "max_softmax" else [])
    if space is not None and valid.features is not None:
        scores.append("mahalanobis")
    if ood_score not in scores:
        raise ValueError(f"the {ood_score!r} out-of-domain score needs what this model does not export")
    thresholds = {
        name: mon.fit_ood_threshold(mon.ood_score(name, probs, logits, valid.features, space), false_alarm_rate)
        for name in scores
    }
    return Monitoring(
        ood_score=ood_score,
        ood_threshold=thresholds[ood_score],
        ood_false_alarm_rate=false_alarm_rate,
        ood_thresholds=thresholds,
        feature_output=FEATURES_OUTPUT if "mahalanobis" in thresholds else None,
        calibration_confidence=knots_x,
        calibration_accuracy=knots_y,
        calibration_items=len(probs),
        calibration_errors=int((~correct).sum()),
        validation_accuracy=float(correct.mean()),
        estimated_validation_accuracy=float(mon.estimated_correct(confidence, knots_x, knots_y).mean()),
        reference_sample_size=sample_size,
    )


def _decoded_size(item: Any) -> tuple[int, int]:
    """(width, height) of the stored image, as the service reads it from the encoded bytes."""
    if isinstance(item, np.ndarray):
        return int(item.shape[1]), int(item.shape[0])
    if isinstance(item, Image.Image):
        return item.size
    data = bytes(item) if isinstance(item, (bytes, bytearray)) else Path(item).read_bytes()
    return mon.encoded_size(data)


def _plain(value: Any) -> Any:
    """A JSON-ready cell: numpy scalars unwrapped, NaN as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if pd.isna(value):  # pandas NA, NaT
        return None
    return str(value)


def default_ood_score(learn: Learner) -> OodScore:
    """The out-of-domain score a bundle uses unless export is told otherwise: the Mahalanobis distance of the
    penultimate features where the model has them (it flags noise, photographs and inverted images that the
    logits' energy misses: docs/monitoring.md), else the energy of the logits."""
    return "mahalanobis" if exports_features(learn) else "energy"


def write_reference(
    learn: Learner,
    path: Path,
    train: ModelOutputs,
    valid: ModelOutputs,
    space: mon.FeatureSpace | None,
) -> int:
    """Write reference.json; returns the size of the reference sample it holds.

    The prediction reference is binned over the training and validation items' predictions together where
    the training items' are like the validation items', else over the validation items'
    (``prediction_references``; ``predictions_from`` says how many of each, per feature)."""
    dls = learn.dls
    features: dict[str, Any] = {}
    summaries = None
    if dls.input_kind == "image":
        # the summaries the service measures on live images (bundle.monitoring.pixel_summaries)
        summaries = image_summaries_of(dls, "train")
        features = image_feature_references(summaries)
    else:
        processor = dls.processor
        features = ref.tabular_reference(dls.train_df_raw, processor.raw_cat_names, processor.raw_cont_names)
    activation = activation_for(dls.task)
    predictions, sources = prediction_references(
        dls.task,
        dls.vocab,
        activation(torch.from_numpy(train.raw)).numpy(),
        activation(torch.from_numpy(valid.raw)).numpy(),
    )
    sample = reference_sample(dls, summaries)
    document: dict[str, Any] = {
        "schema_version": 1,
        "features": features,
        "predictions": predictions,
        "predictions_from": sources,
        "sample": sample,
    }
    if space is not None:
        document["feature_space"] = space.to_dict()
    path.write_text(json.dumps(document, indent=1))
    return len(sample)
