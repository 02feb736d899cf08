"""The manifest: the contract between training and serving, defined once.

A bundle is a folder ``models/<name>/<version>/`` holding ``manifest.json``,
``model.onnx``, ``learner.pkl`` and ``reference.json``. Training writes the
manifest with :func:`write_manifest`; the service reads it with
:func:`read_manifest` and never touches ``learner.pkl``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
LEARNER_FILE = "learner.pkl"
REFERENCE_FILE = "reference.json"

Task = Literal["classification", "multilabel", "regression"]
InputKind = Literal["image", "tabular"]
ResizeMethod = Literal["crop", "squish", "pad"]
PadMode = Literal["reflection", "zeros"]
OodScore = Literal["max_softmax", "energy", "mahalanobis"]  # bundle.monitoring.OOD_SCORES
LOGITS_OUTPUT = "logits"  # the second ONNX output of single-label classifiers: the scores before softmax
FEATURES_OUTPUT = "features"  # a graph output outside ``onnx.outputs``: the input of the model's last Linear layer


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ImageSpec(_Model):
    """How raw pixels become the ONNX input.

    The service feeds ``uint8`` RGB pixels in NCHW layout; scaling to [0, 1]
    and normalisation by ``mean``/``std`` are baked into the ONNX graph and
    recorded here so other tools can replay them.
    """

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    resize_method: ResizeMethod = "crop"
    pad_mode: PadMode = "reflection"
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)
    channel_order: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["uint8"] = "uint8"


class TabularSpec(_Model):
    """The fitted tabular processors, as plain data.

    ``processor`` is ``bundle.tabular.TabularProcessor.to_dict()``; replay it
    with ``TabularProcessor.from_dict``. ``cat_names``/``cont_names`` are the
    processed column names in the order the ONNX inputs expect them.
    """

    processor: dict[str, Any]
    cat_names: list[str]
    cont_names: list[str]
    raw_columns: list[str]


class Outputs(_Model):
    classes: list[str] | None = None  # classification and multilabel
    thresholds: list[float] | None = None  # multilabel, one per class
    y_range: tuple[float, float] | None = None  # regression, applied in the graph
    log_target: bool = False  # regression: the graph predicts log(y); serve exp()
    target_names: list[str] = Field(default_factory=list)
    # regression: the training targets' mean and std (log ones with log_target). The model learned
    # standardised targets and un-standardises inside the graph: recorded for information only.
    target_mean: list[float] | None = None
    target_std: list[float] | None = None


class TensorSpec(_Model):
    name: str
    dtype: str  # numpy dtype name: "uint8", "int64", "float32"
    shape: list[int | str]  # "batch" for the dynamic axis


class OnnxSpec(_Model):
    file: str = ONNX_FILE
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class Parity(_Model):
    """How closely ONNX Runtime replays PyTorch: passed as ``numpy.allclose(onnx, torch, rtol, atol)``."""

    max_abs_diff: float
    batch_sizes: list[int]
    tolerance: float  # the absolute tolerance (atol), kept under its first name
    # |onnx - torch| / max(|torch|, atol); None in bundles written before it was recorded
    max_rel_diff: float | None = None
    rtol: float = 0.0
    atol: float | None = None


# The units of each validation metric, for readers of ``Manifest.metrics``: ``rmse`` is always in the
# target's own units, ``rmse_log`` in natural-log units (log-target models report both).
METRIC_UNITS = {
    "rmse": "target units",
    "rmse_log": "log units",
    "mae": "target units",
    "valid_loss": "the training loss (regression: mean squared error in target standard deviations)",
    "error_rate": "share of rows",
    "accuracy": "share of rows",
    "accuracy_multi": "share of (row, class) cells",
}


class Monitoring(_Model):
    """What export calibrated for monitoring (see ``bundle.monitoring``); absent in older bundles.

    ``ood_score``: the model-based out-of-domain score the bundle uses (``bundle.monitoring.ood_score``):
    ``mahalanobis``, the distance of the graph's ``feature_output`` (the input of the last Linear layer)
    to the nearest class mean, with the statistics in ``reference.json`` ``feature_space``; ``energy``,
    ``-logsumexp(logits)`` of the graph's ``logits`` output; ``max_softmax``, ``1 - max probability``
    (bundles written before the logits output existed).
    ``ood_threshold``: items whose score exceeds it are flagged out-of-domain; it flags
    ``ood_false_alarm_rate`` of the ``calibration_items`` validation items.
    ``ood_thresholds``: every score export calibrated, by name, at that rate (``ood_score``'s among them): a
    service that cannot compute ``ood_score`` falls back to ``energy``'s (absent in older bundles).
    ``calibration_confidence`` -> ``calibration_accuracy`` are the knots of the isotonic map from top
    probability to the chance of being right, which estimates accuracy on unlabelled traffic;
    ``calibration_errors`` the validation items it saw the model get wrong (None in older bundles: read it
    from ``validation_accuracy``).
    """

    ood_score: OodScore = "max_softmax"  # the default reads manifests written before energy existed
    ood_threshold: float | None = None
    ood_false_alarm_rate: float | None = None
    ood_thresholds: dict[str, float] = Field(default_factory=dict)
    feature_output: str | None = None
    calibration_confidence: list[float] = Field(default_factory=list)
    calibration_accuracy: list[float] = Field(default_factory=list)
    calibration_items: int = 0
    calibration_errors: int | None = None
    validation_accuracy: float | None = None
    estimated_validation_accuracy: float | None = None
    reference_sample_size: int = 0

    def errors(self) -> int | None:
        """How many validation items the calibration saw the model get wrong (older bundles: from the accuracy)."""
        if self.calibration_errors is not None:
            return self.calibration_errors
        if self.validation_accuracy is None or not self.calibration_items:
            return None
        return round((1.0 - self.validation_accuracy) * self.calibration_items)


class Manifest(_Model):
    schema_version: int = SCHEMA_VERSION
    name: str
    version: int = Field(gt=0)
    created_at: str
    task: Task
    input_kind: InputKind
    image: ImageSpec | None = None
    tabular: TabularSpec | None = None
    outputs: Outputs
    onnx: OnnxSpec
    files: dict[str, str] = Field(default_factory=dict)  # file name -> sha256
    metrics: dict[str, float] = Field(default_factory=dict)  # validation metrics
    metric_units: dict[str, str] = Field(default_factory=dict)  # metric name -> its units (METRIC_UNITS)
    parity: Parity | None = None
    reference_file: str | None = REFERENCE_FILE
    libraries: dict[str, str] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)  # arch, epochs, lr, ...
    monitoring: Monitoring | None = None  # out-of-domain threshold and confidence calibration

    @model_validator(mode="after")
    def _scores_need_their_outputs(self) -> Manifest:
        monitoring = self.monitoring
        if monitoring is not None and monitoring.ood_score == "energy":
            if LOGITS_OUTPUT not in [spec.name for spec in self.onnx.outputs[1:]]:
                raise ValueError(f"monitoring.ood_score 'energy' needs a {LOGITS_OUTPUT!r} output after the first")
        if monitoring is not None and monitoring.ood_score == "mahalanobis" and not monitoring.feature_output:
            raise ValueError("monitoring.ood_score 'mahalanobis' needs monitoring.feature_output, the features' output")
        return self


class ManifestError(ValueError):
    """A bundle's manifest is missing, unreadable or of an unknown schema."""


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Path:
    path = Path(bundle_dir) / MANIFEST_FILE
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path


def read_manifest(bundle_dir: Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no manifest.json") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    schema = raw.get("schema_version") if isinstance(raw, dict) else None
    if schema != SCHEMA_VERSION:
        raise ManifestError(f"{path}: schema_version {schema!r}, this code reads {SCHEMA_VERSION}")
    try:
        return Manifest.model_validate(raw)
    except ValueError as exc:
        raise ManifestError(f"{path}: invalid manifest: {exc}") from exc


def verify_files(bundle_dir: Path, manifest: Manifest, optional: Collection[str] = ()) -> list[str]:
    """Return a list of problems: files missing (unless ``optional``) or whose sha256 differs."""
    problems = []
    for name, expected in manifest.files.items():
        path = Path(bundle_dir) / name
        if not path.is_file():
            if name not in optional:
                problems.append(f"{name}: missing")
        elif sha256_file(path) != expected:
            problems.append(f"{name}: sha256 mismatch")
    return problems


def read_reference(bundle_dir: Path, manifest: Manifest) -> dict[str, Any] | None:
    if not manifest.reference_file:
        return None
    path = Path(bundle_dir) / manifest.reference_file
    return json.loads(path.read_text()) if path.is_file() else None
