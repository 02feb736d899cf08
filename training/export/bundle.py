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
import os
import platform
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from bundle.manifest import (
    LEARNER_FILE,
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
from training.export import references as monitoring_fit
from training.export.graph import (
    OPSET,
    PARITY_ATOL,
    PARITY_RTOL,
    ExportError,
    check_parity,
    export_onnx,
    graph_and_inputs,
    output_names,
)
from training.learner import Learner
from training.models.vision import ImageNormalize

FAILED_EXPORTS_DIR = Path("runs") / "failed-exports"


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
        ood_score = ood_score or monitoring_fit.default_ood_score(learn)
    features = ood_score == "mahalanobis"
    if features and not monitoring_fit.exports_features(learn):
        raise ExportError("the mahalanobis score needs a classifier whose last Linear layer makes the logits")
    graph, inputs, input_specs = graph_and_inputs(learn, features)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=model_dir))
    try:
        export_onnx(graph, inputs, input_specs, tmp / ONNX_FILE, output_names(dls.task, features))
        parity = check_parity(graph, tmp / ONNX_FILE, learn, input_specs, max_batch, rtol, atol)
        torch.save(_exportable(learn), tmp / LEARNER_FILE)
        train = monitoring_fit.model_outputs(learn, monitoring_fit.training_loader(dls), features)
        valid = monitoring_fit.model_outputs(learn, dls.valid, features)
        space = monitoring_fit.fit_feature_space(train.features, train.targets, dls.n_out) if features else None
        sample_size = monitoring_fit.write_reference(learn, tmp / REFERENCE_FILE, train, valid, space)
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
