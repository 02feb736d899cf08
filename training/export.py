"""Export a trained Learner as a bundle the service can load: ONNX + manifest + pickle + reference.

``models/<name>/<version>/`` is written into a temporary folder beside its
final place and renamed into place only once everything, the parity check
included, has succeeded: a failed export leaves no bundle behind, and an
existing version is never overwritten. The trained learner is never lost:
when the export fails after training, ``learner.pkl`` is saved under
``<learn.path>/runs/failed-exports/`` and the error names the file.

Bundles are readable by any user (folders 0755, files 0644 under the usual
umask 022), so a service running as another user can load them.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from bundle import monitoring as mon
from bundle import reference as ref
from bundle.manifest import (
    FEATURES_OUTPUT,
    LEARNER_FILE,
    LOGITS_OUTPUT,
    METRIC_UNITS,
    ONNX_FILE,
    REFERENCE_FILE,
    ImageSpec,
    Manifest,
    OnnxSpec,
    OodScore,
    Outputs,
    Parity,
    TabularSpec,
    TensorSpec,
    read_manifest,
    sha256_file,
    write_manifest,
)
from training import monitoring as monitoring_fit
from training.learner import Learner, activation_for
from training.models.vision import ImageNormalize

OPSET = 18
# ONNX Runtime must match PyTorch as numpy.allclose(onnx, torch, rtol, atol) does: the absolute part
# covers probabilities near 0, the relative part large regression values (float32 has ~7 digits).
PARITY_RTOL = 1e-4
PARITY_ATOL = 1e-4
PARITY_TOLERANCE = PARITY_ATOL  # the old name of the absolute tolerance
FAILED_EXPORTS_DIR = Path("runs") / "failed-exports"
OUTPUT_NAMES = {"classification": "probabilities", "multilabel": "probabilities", "regression": "values"}


class ExportError(RuntimeError):
    """The learner could not be exported; nothing was written."""


class _ImageGraph(nn.Module):
    """uint8 pixels in, activated outputs out (and, with ``logits``, the raw ones after them; with ``features``,
    what the last Linear layer reads after those): what the service runs."""

    def __init__(self, model: nn.Module, activation: nn.Module, logits: bool = False, features: bool = False) -> None:
        super().__init__()
        self.model, self.activation, self.logits, self.features = model, activation, logits, features

    def forward(self, pixels: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        with monitoring_fit.tap_features(self.model) as taken:
            raw = self.model(pixels)
        return _outputs(raw, self.activation, self.logits, taken[-1].flatten(1) if self.features else None)


class _TabularGraph(nn.Module):
    """Processed columns in, activated outputs out (and the raw ones, with ``logits``; the last Linear's inputs,
    with ``features``); an input of width 0 is left out of the graph."""

    def __init__(
        self,
        model: nn.Module,
        activation: nn.Module,
        n_cat: int,
        n_cont: int,
        logits: bool = False,
        features: bool = False,
    ) -> None:
        super().__init__()
        self.model, self.activation, self.logits, self.features = model, activation, logits, features
        self.n_cat, self.n_cont = n_cat, n_cont

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        batch = inputs[0].shape[0]
        it = iter(inputs)
        x_cat = next(it) if self.n_cat else torch.zeros(batch, 0, dtype=torch.long)
        x_cont = next(it) if self.n_cont else torch.zeros(batch, 0, dtype=torch.float32)
        with monitoring_fit.tap_features(self.model) as taken:
            raw = self.model(x_cat, x_cont)
        return _outputs(raw, self.activation, self.logits, taken[-1].flatten(1) if self.features else None)


def _outputs(
    raw: torch.Tensor, activation: nn.Module, logits: bool, features: torch.Tensor | None
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    # the probabilities stay the first output, so every reader of the first output reads what it always did
    outputs = (activation(raw), *([raw] if logits else []), *([features] if features is not None else []))
    return outputs if len(outputs) > 1 else outputs[0]


def exports_logits(task: str) -> bool:
    """Single-label classifiers export their logits as a second output, for the energy out-of-domain score."""
    return task == "classification"


def default_ood_score(learn: Learner) -> OodScore:
    """The out-of-domain score a bundle uses unless export is told otherwise: the Mahalanobis distance of the
    penultimate features where the model has them (it flags noise, photographs and inverted images that the
    logits' energy misses: docs/monitoring.md), else the energy of the logits."""
    return "mahalanobis" if monitoring_fit.exports_features(learn) else "energy"


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit() and int(p.name) > 0]
    return max(versions, default=0) + 1


def export_learner(
    learn: Learner,
    models_dir: str | Path,
    name: str,
    *,
    training_info: dict[str, Any] | None = None,
    max_batch: int = 64,
    tolerance: float | None = None,
    rtol: float = PARITY_RTOL,
    atol: float = PARITY_ATOL,
    ood_false_alarm_rate: float = monitoring_fit.DEFAULT_FALSE_ALARM_RATE,
    ood_score: OodScore | None = None,
) -> Path:
    """Write ``models_dir/name/<next version>/`` and return its path.

    Parity passes when ``numpy.allclose(onnx, torch, rtol, atol)`` holds on
    every checked batch (``tolerance`` is the old name of ``atol``). On any
    failure no bundle is written, and the learner is saved where the
    :class:`ExportError` message says. ``ood_false_alarm_rate``: the share of
    in-domain validation items the out-of-domain threshold flags; ``ood_score``
    the score the bundle uses (classification; default :func:`default_ood_score`:
    ``mahalanobis`` where the model has penultimate features, else ``energy``).
    """
    if tolerance is not None:
        atol = tolerance
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"invalid model name {name!r}")
    model_dir = Path(models_dir) / name
    created = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    dls = learn.dls
    learn.model.to("cpu").eval()
    metrics = {k: float(v) for k, v in learn.validate().items()}
    learn.model.to("cpu").eval()

    if dls.task == "classification":
        ood_score = ood_score or default_ood_score(learn)
    features = ood_score == "mahalanobis"
    if features and not monitoring_fit.exports_features(learn):
        raise ExportError("the mahalanobis score needs a classifier whose last Linear layer makes the logits")
    graph, inputs, input_specs = _graph_and_inputs(learn, features)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=model_dir))
    try:
        _export_onnx(graph, inputs, input_specs, tmp / ONNX_FILE, output_names(dls.task, features))
        parity = _check_parity(graph, tmp / ONNX_FILE, learn, input_specs, max_batch, rtol, atol)
        torch.save(_exportable(learn), tmp / LEARNER_FILE)
        train = monitoring_fit.model_outputs(learn, monitoring_fit.training_loader(dls), features)
        valid = monitoring_fit.model_outputs(learn, dls.valid, features)
        space = monitoring_fit.fit_feature_space(train.features, train.targets, dls.n_out) if features else None
        sample_size = _write_reference(learn, tmp / REFERENCE_FILE, train, valid, space)
        version = next_version(model_dir)
        info = {**(training_info or {}), **_data_sizes(dls)}
        manifest = _manifest(learn, name, version, input_specs, metrics, parity, info)
        manifest.monitoring = monitoring_fit.fit_monitoring(
            learn, ood_false_alarm_rate, sample_size, ood_score=ood_score or "max_softmax", valid=valid, space=space
        )
        manifest.files = {f: sha256_file(tmp / f) for f in (ONNX_FILE, LEARNER_FILE, REFERENCE_FILE)}
        write_manifest(tmp, manifest)
        make_readable(tmp)
        final = model_dir / str(version)
        tmp.rename(final)  # atomic; fails rather than overwrite if another export took this version
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(model_dir, ignore_errors=True)
        if not isinstance(exc, Exception):
            raise  # Ctrl-C: stop now
        saved = _rescue_learner(learn, name)
        if saved is not None:
            where = f"the trained learner was saved to {saved} (load it with load_learner)"
        else:
            where = "the trained learner could not be saved either"
        raise ExportError(f"{exc}; the bundle was not written; {where}") from exc
    return final


def make_readable(folder: Path) -> None:
    """Folders ``0777 & ~umask`` (0755), files ``0666 & ~umask`` (0644): ``mkdtemp`` alone gives 0700."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _rescue_learner(learn: Learner, name: str) -> Path | None:
    """Save the learner of a failed export so the training is not lost; None if even that fails."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = Path(learn.path) / FAILED_EXPORTS_DIR / f"{name}-{stamp}" / LEARNER_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(_exportable(learn), path)
    except Exception:  # the original error is the one to report
        return None
    return path.resolve()


def load_learner(path: str | Path) -> Learner:
    """Load ``learner.pkl`` from a bundle folder or the file itself (trusted files only: it unpickles)."""
    path = Path(path)
    if path.is_dir():
        path = path / LEARNER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no exported learner here")
    learn = torch.load(path, map_location="cpu", weights_only=False)
    learn.model.eval()
    return learn


def _exportable(learn: Learner) -> Learner:
    """A copy of the learner with its data dropped and its model on the CPU."""
    dls = learn.dls
    learn.dls = dls.new_empty()
    try:
        return _deepcopy_cpu(learn)
    finally:
        learn.dls = dls


def _deepcopy_cpu(learn: Learner) -> Learner:
    clone = copy.deepcopy(learn)
    clone.model.to("cpu")
    return clone


def _graph_and_inputs(
    learn: Learner, features: bool = False
) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[TensorSpec]]:
    dls = learn.dls
    activation = activation_for(dls.task)
    logits = exports_logits(dls.task)
    sample = _valid_inputs(learn, 4)
    if dls.input_kind == "image":
        _, c, h, w = sample[0].shape
        specs = [TensorSpec(name="pixels", dtype="uint8", shape=["batch", c, h, w])]
        return _ImageGraph(learn.model, activation, logits, features).eval(), (sample[0],), specs
    x_cat, x_cont = sample
    specs = []
    if x_cat.shape[1]:
        specs.append(TensorSpec(name="x_cat", dtype="int64", shape=["batch", x_cat.shape[1]]))
    if x_cont.shape[1]:
        specs.append(TensorSpec(name="x_cont", dtype="float32", shape=["batch", x_cont.shape[1]]))
    graph = _TabularGraph(learn.model, activation, x_cat.shape[1], x_cont.shape[1], logits, features).eval()
    return graph, _graph_inputs(sample), specs


def _graph_inputs(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The inputs the exported graph takes: a tabular input of width 0 is left out."""
    return tuple(x for x in inputs if x.dim() != 2 or x.shape[1] > 0)


def _valid_inputs(learn: Learner, n: int) -> tuple[torch.Tensor, ...]:
    """The first ``n`` validation inputs (targets dropped), fewer if the set is smaller."""
    parts: list[tuple[torch.Tensor, ...]] = []
    count = 0
    for batch in learn.dls.valid:
        parts.append(tuple(t for t in batch[:-1]))
        count += len(batch[0])
        if count >= n:
            break
    if not parts:
        raise ExportError("the validation set is empty: nothing to check the export against")
    return tuple(torch.cat(cols)[:n].cpu() for cols in zip(*parts))


def _export_onnx(graph: nn.Module, inputs: tuple, specs: list[TensorSpec], path: Path, names: list[str]) -> None:
    if len(inputs[0]) < 2:
        inputs = tuple(torch.cat([x, x]) for x in inputs)  # a batch of 1 would specialise the axis
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    per_input = tuple({0: batch} for _ in inputs)
    # the tabular graph takes *inputs, whose shapes torch.export wants nested as one argument
    dynamic_shapes = (per_input,) if isinstance(graph, _TabularGraph) else per_input
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            inputs,
            str(path),
            input_names=[s.name for s in specs],
            output_names=names,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    onnx.checker.check_model(str(path), full_check=True)


def output_names(task: str, features: bool = False) -> list[str]:
    """The graph's outputs in order: what the task serves, then the logits where it exports them, then (with
    ``features``) the penultimate features, which the manifest names in ``monitoring.feature_output`` rather
    than ``onnx.outputs``: no prediction reads them, so the service never fetches them."""
    return [OUTPUT_NAMES[task], *([LOGITS_OUTPUT] if exports_logits(task) else [])] + (
        [FEATURES_OUTPUT] if features else []
    )


def _check_parity(
    graph: nn.Module, path: Path, learn: Learner, specs: list[TensorSpec], max_batch: int, rtol: float, atol: float
) -> Parity:
    """ONNX Runtime against PyTorch on validation batches of size 1, an odd size and the maximum.

    Passes as ``numpy.allclose(onnx, torch, rtol, atol)`` on every output (the
    logits too, where the graph has them); records the largest absolute and
    relative differences over all of them.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = _graph_inputs(_valid_inputs(learn, max_batch))
    available = len(inputs[0])
    sizes = sorted({1, min(7, available), available})
    worst_abs = worst_rel = 0.0
    close = True
    for size in sizes:
        batch = tuple(x[:size] for x in inputs)
        with torch.no_grad():
            expected = graph(*batch)
        expected_all = expected if isinstance(expected, tuple) else (expected,)
        got_all = session.run(None, {s.name: x.numpy() for s, x in zip(specs, batch)})
        if len(got_all) != len(expected_all):
            raise ExportError(f"the ONNX graph has {len(got_all)} outputs, PyTorch gives {len(expected_all)}")
        for got, want in zip(got_all, expected_all):  # every output, the logits as well as the probabilities
            got, want = got.astype(np.float64), want.numpy().astype(np.float64)
            diff = np.abs(got - want)
            worst_abs = max(worst_abs, float(diff.max()))
            # relative to values at least atol in size: a probability of 1e-30 has no meaningful relative error
            worst_rel = max(worst_rel, float((diff / np.maximum(np.abs(want), max(atol, 1e-12))).max()))
            close = close and bool(np.all(diff <= atol + rtol * np.abs(want)))
    if not close:
        raise ExportError(
            f"ONNX Runtime and PyTorch disagree beyond rtol={rtol:g}, atol={atol:g}: largest absolute "
            f"difference {worst_abs:.3g}, largest relative {worst_rel:.3g} (batch sizes {sizes})"
        )
    return Parity(
        max_abs_diff=worst_abs, max_rel_diff=worst_rel, batch_sizes=sizes, tolerance=atol, rtol=rtol, atol=atol
    )


def _write_reference(
    learn: Learner,
    path: Path,
    train: monitoring_fit.ModelOutputs,
    valid: monitoring_fit.ModelOutputs,
    space: mon.FeatureSpace | None,
) -> int:
    """Write reference.json; returns the size of the reference sample it holds.

    The prediction reference is binned over the training and validation items' predictions together where
    the training items' are like the validation items', else over the validation items'
    (``monitoring_fit.prediction_references``; ``predictions_from`` says how many of each, per feature)."""
    dls = learn.dls
    features: dict[str, Any] = {}
    summaries = None
    if dls.input_kind == "image":
        # the summaries the service measures on live images (bundle.monitoring.pixel_summaries)
        summaries = monitoring_fit.image_summaries_of(dls, "train")
        features = monitoring_fit.image_feature_references(summaries)
    else:
        processor = dls.processor
        features = ref.tabular_reference(dls.train_df_raw, processor.raw_cat_names, processor.raw_cont_names)
    activation = activation_for(dls.task)
    predictions, sources = monitoring_fit.prediction_references(
        dls.task,
        dls.vocab,
        activation(torch.from_numpy(train.raw)).numpy(),
        activation(torch.from_numpy(valid.raw)).numpy(),
    )
    sample = monitoring_fit.reference_sample(dls, summaries)
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


def _manifest(
    learn: Learner,
    name: str,
    version: int,
    input_specs: list[TensorSpec],
    metrics: dict[str, float],
    parity: Parity,
    training_info: dict[str, Any],
) -> Manifest:
    dls = learn.dls
    task = dls.task
    image = tabular = None
    if dls.input_kind == "image":
        norm = next(m for m in learn.model.modules() if isinstance(m, ImageNormalize))
        spec = dls.resize_spec
        image = ImageSpec(
            height=spec.height,
            width=spec.width,
            resize_method=spec.method,
            pad_mode=spec.pad_mode,
            mean=_as_list(norm.mean),
            std=_as_list(norm.std),
        )
    else:
        proc = dls.processor
        tabular = TabularSpec(
            processor=proc.to_dict(),
            cat_names=list(proc.cat_names),
            cont_names=list(proc.cont_names),
            raw_columns=list(proc.raw_columns),
        )
    outputs = Outputs(
        classes=list(dls.vocab) if task != "regression" else None,
        thresholds=list(dls.thresholds or [0.5] * len(dls.vocab)) if task == "multilabel" else None,
        y_range=tuple(dls.y_range) if task == "regression" and dls.y_range is not None else None,
        log_target=bool(dls.log_target) if task == "regression" else False,
        target_names=list(dls.target_names),
        target_mean=_target_stat(dls, 0),
        target_std=_target_stat(dls, 1),
    )
    n_out = dls.n_out
    onnx_spec = OnnxSpec(
        opset=OPSET,
        inputs=input_specs,
        outputs=[TensorSpec(name=out, dtype="float32", shape=["batch", n_out]) for out in output_names(task)],
    )
    return Manifest(
        name=name,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        task=task,
        input_kind=dls.input_kind,
        image=image,
        tabular=tabular,
        outputs=outputs,
        onnx=onnx_spec,
        metrics=metrics,
        metric_units={k: METRIC_UNITS[k] for k in metrics if k in METRIC_UNITS},
        parity=parity,
        libraries=_library_versions(),
        training=training_info,
    )


def _target_stat(dls: Any, which: int) -> list[float] | None:
    stats = getattr(dls, "target_stats", None)  # learners pickled before it existed have none
    return list(stats[which]) if dls.task == "regression" and stats is not None else None


def _data_sizes(dls: Any) -> dict[str, int]:
    """How many training and validation items the learner was fitted and validated on (for the model card)."""
    sizes = {}
    for key, loader in (("n_train", dls.train), ("n_valid", dls.valid)):
        dataset = getattr(loader, "dataset", None)
        if dataset is not None:
            sizes[key] = len(dataset)
    return sizes


def _as_list(x: Any) -> list[float]:
    return [float(v) for v in torch.as_tensor(x).flatten().tolist()]


def _library_versions() -> dict[str, str]:
    import pandas
    import PIL
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "pillow": PIL.__version__,
    }


__all__ = ["ExportError", "export_learner", "load_learner", "next_version", "read_manifest"]
