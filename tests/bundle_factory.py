"""Complete, tiny model bundles for the service tests.

Every bundle the tests serve is built here and nowhere else. Classification,
multi-label and tabular bundles come from a real (tiny) training run through
``training`` and ``training.export.export_learner``: the same pipeline users
run, so the service is tested against what training really writes. Two kinds
the training pipeline does not make are hand-made with ``torch.onnx.export``
and a manifest written here: image regression, and deliberately slow graphs
(``slow_steps``) for the queue-full, deadline and shutdown tests.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from bundle.manifest import (
    ONNX_FILE,
    REFERENCE_FILE,
    ImageSpec,
    Manifest,
    OnnxSpec,
    Outputs,
    TabularSpec,
    TensorSpec,
    sha256_file,
    write_manifest,
)
from bundle.tabular import TabularProcessor

OPSET = 17
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
PENGUIN_SPECIES = ["Adelie", "Chinstrap", "Gentoo"]
PENGUIN_CATS = ("island", "sex")
PENGUIN_CONTS = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm")
OUTPUT_NAME = {"classification": "probabilities", "multilabel": "probabilities", "regression": "values"}


# -- models --------------------------------------------------------------------------------------


class _ImageNormalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


class _SlowBranch(nn.Module):
    """A chain of matrix products on a per-batch summary: costs time per run, not per item.

    It depends on the input (so ONNX Runtime cannot fold it away) and adds a
    negligible amount to the outputs.
    """

    def __init__(self, steps: int, width: int = 192) -> None:
        super().__init__()
        self.steps = steps
        self.register_buffer("base", torch.randn(width, width) / width)
        self.register_buffer("weight", torch.randn(width, width) / width**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.base * x.mean()
        for _ in range(self.steps):
            m = torch.tanh(m @ self.weight)
        return m.mean() * 1e-12


class _FailsOnRealInput(nn.Module):
    """Looks up a table at an index that is in range for all-zero pixels (warm-up) and out of range otherwise,
    so ONNX Runtime loads and warms the graph but fails every real request: a candidate that errors."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.zeros(4))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        index = (pixels.float().amax() > 0).long() * 1000
        return self.table[index]


class _Activation(nn.Module):
    def __init__(self, task: str, y_range: tuple[float, float] | None) -> None:
        super().__init__()
        self.task = task
        self.y_range = y_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return torch.softmax(x, dim=1)
        if self.task == "multilabel":
            return torch.sigmoid(x)
        if self.y_range is not None:
            low, high = self.y_range
            return torch.sigmoid(x) * (high - low) + low
        return x


class _TinyVision(nn.Module):
    def __init__(
        self, n_out: int, task: str, y_range: tuple[float, float] | None, slow_steps: int, fails: bool = False
    ) -> None:
        super().__init__()
        self.fails = _FailsOnRealInput() if fails else None
        self.normalize = _ImageNormalize(IMAGENET_MEAN, IMAGENET_STD)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(8 * 4, n_out)
        self.slow = _SlowBranch(slow_steps) if slow_steps else None
        self.activation = _Activation(task, y_range)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.normalize(pixels)
        out = self.head(self.body(x).flatten(1)) * 3.0
        if self.slow is not None:
            out = out + self.slow(x)
        if self.fails is not None:
            out = out + self.fails(pixels)
        return self.activation(out)


class _TinyTabular(nn.Module):
    def __init__(
        self, vocab_sizes: list[int], n_cont: int, n_out: int, task: str, y_range: tuple[float, float] | None
    ) -> None:
        super().__init__()
        self.embeds = nn.ModuleList(nn.Embedding(size, 3) for size in vocab_sizes)
        self.n_cat, self.n_cont = len(vocab_sizes), n_cont
        self.head = nn.Linear(3 * len(vocab_sizes) + n_cont, n_out)
        self.activation = _Activation(task, y_range)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        it = iter(inputs)
        parts = []
        if self.n_cat:
            x_cat = next(it)
            parts += [embed(x_cat[:, i]) for i, embed in enumerate(self.embeds)]
        if self.n_cont:
            parts.append(next(it))
        return self.activation(self.head(torch.cat(parts, dim=1)) * 2.0)


def _export(model: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], output: str, path: Path) -> None:
    axes = {name: {0: "batch"} for name in [*names, output]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model.eval(),
            inputs,
            str(path),
            input_names=names,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def _finish(folder: Path, manifest: Manifest) -> Path:
    (folder / REFERENCE_FILE).write_text(json.dumps({"note": "test bundle"}) + "\n")
    manifest.files = {f: sha256_file(folder / f) for f in (ONNX_FILE, REFERENCE_FILE)}
    write_manifest(folder, manifest)
    return folder


def _outputs(
    task: str,
    classes: Sequence[str] | None,
    n_targets: int,
    thresholds: Sequence[float] | None,
    y_range: tuple[float, float] | None,
    log_target: bool,
    target_names: Sequence[str],
) -> tuple[Outputs, int]:
    if task == "regression":
        names = list(target_names) or [f"target_{i}" for i in range(n_targets)]
        return Outputs(y_range=y_range, log_target=log_target, target_names=names), n_targets
    labels = list(classes)
    if task == "multilabel":
        return Outputs(classes=labels, thresholds=list(thresholds or [0.5] * len(labels))), len(labels)
    return Outputs(classes=labels), len(labels)


# -- bundles -------------------------------------------------------------------------------------


def _handmade_image_bundle(
    repo: Path,
    name: str = "digits",
    version: int = 1,
    task: str = "classification",
    *,
    classes: Sequence[str] | None = None,
    size: tuple[int, int] = (16, 16),
    resize_method: str = "squish",
    n_targets: int = 1,
    thresholds: Sequence[float] | None = None,
    y_range: tuple[float, float] | None = None,
    log_target: bool = False,
    target_names: Sequence[str] = (),
    slow_steps: int = 0,
    seed: int | None = None,
    fails_on_real_input: bool = False,
) -> Path:
    """``repo/name/version/`` holding a tiny image model for ``task``; returns the folder.

    ``slow_steps`` adds a chain of 192x192 matrix products to every run (about
    a millisecond each), for tests that need a slow model; ``fails_on_real_input``
    makes a graph that warms up but fails on every real image.
    """
    torch.manual_seed(version if seed is None else seed)
    if task != "regression" and classes is None:
        classes = [str(i) for i in range(10)] if task == "classification" else ["red", "green", "blue", "round"]
    outputs, n_out = _outputs(task, classes, n_targets, thresholds, y_range, log_target, target_names)
    height, width = size
    model = _TinyVision(n_out, task, y_range, slow_steps, fails_on_real_input)
    folder = Path(repo) / name / str(version)
    folder.mkdir(parents=True, exist_ok=False)
    example = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8)
    if fails_on_real_input:
        example = torch.zeros_like(example)  # tracing runs the graph: keep the lookup in range
    _export(model, (example,), ["pixels"], OUTPUT_NAME[task], folder / ONNX_FILE)
    manifest = Manifest(
        name=name,
        version=version,
        created_at=datetime.now(UTC).isoformat(),
        task=task,
        input_kind="image",
        image=ImageSpec(height=height, width=width, resize_method=resize_method, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        outputs=outputs,
        onnx=OnnxSpec(
            opset=OPSET,
            inputs=[TensorSpec(name="pixels", dtype="uint8", shape=["batch", 3, height, width])],
            outputs=[TensorSpec(name=OUTPUT_NAME[task], dtype="float32", shape=["batch", n_out])],
        ),
        libraries={"torch": torch.__version__},
        training={"arch": "tiny-test-cnn"},
    )
    return _finish(folder, manifest)


def penguin_rows() -> pd.DataFrame:
    """A small penguin-like table (with a few missing values) to fit the processors on."""
    rng = np.random.default_rng(0)
    n = 30
    species = np.array(PENGUIN_SPECIES)[np.arange(n) % 3]
    frame = pd.DataFrame(
        {
            "island": np.array(["Biscoe", "Dream", "Torgersen"])[rng.integers(0, 3, n)],
            "sex": np.array(["male", "female"])[rng.integers(0, 2, n)],
            "bill_length_mm": rng.normal(44, 5, n).round(1),
            "bill_depth_mm": rng.normal(17, 2, n).round(1),
            "flipper_length_mm": rng.normal(200, 14, n).round(0),
            "body_mass_g": rng.normal(4200, 800, n).round(0),
            "species": species,
        }
    )
    frame.loc[[3, 11], "bill_length_mm"] = np.nan
    frame.loc[[5], "sex"] = None
    return frame


def _handmade_tabular_bundle(
    repo: Path,
    name: str = "penguins",
    version: int = 1,
    task: str = "classification",
    *,
    cat_names: Sequence[str] = PENGUIN_CATS,
    cont_names: Sequence[str] = PENGUIN_CONTS,
    n_targets: int = 1,
    thresholds: Sequence[float] | None = None,
    y_range: tuple[float, float] | None = None,
    log_target: bool = False,
    target_names: Sequence[str] = (),
    seed: int | None = None,
) -> Path:
    """``repo/name/version/`` holding a tiny tabular model on penguin-like columns; returns the folder.

    Classification predicts the species; regression predicts ``n_targets``
    values. With ``cat_names=()`` and continuous columns without gaps the
    graph has no ``x_cat`` input at all.
    """
    torch.manual_seed(version if seed is None else seed)
    frame = penguin_rows()
    if not cat_names:  # no category inputs wanted: no gaps, so no _na flag columns either
        frame = frame.dropna(subset=list(cont_names))
    processor = TabularProcessor(list(cat_names), list(cont_names)).fit(frame)
    classes = PENGUIN_SPECIES if task == "classification" else ["a", "b", "c"] if task == "multilabel" else None
    if task == "regression" and not target_names:
        target_names = ["body_mass_g"] if n_targets == 1 else [f"target_{i}" for i in range(n_targets)]
    outputs, n_out = _outputs(task, classes, n_targets, thresholds, y_range, log_target, target_names)
    vocab_sizes = [len(processor.categorify.vocab[c]) for c in processor.cat_names] if processor.categorify else []
    n_cat, n_cont = len(processor.cat_names), len(processor.cont_names)
    model = _TinyTabular(vocab_sizes, n_cont, n_out, task, y_range)
    folder = Path(repo) / name / str(version)
    folder.mkdir(parents=True, exist_ok=False)
    example = processor.transform(frame.head(2))
    inputs, names, specs = [], [], []
    if n_cat:
        inputs.append(torch.from_numpy(example.x_cat))
        names.append("x_cat")
        specs.append(TensorSpec(name="x_cat", dtype="int64", shape=["batch", n_cat]))
    if n_cont:
        inputs.append(torch.from_numpy(example.x_cont))
        names.append("x_cont")
        specs.append(TensorSpec(name="x_cont", dtype="float32", shape=["batch", n_cont]))
    _export(model, tuple(inputs), names, OUTPUT_NAME[task], folder / ONNX_FILE)
    manifest = Manifest(
        name=name,
        version=version,
        created_at=datetime.now(UTC).isoformat(),
        task=task,
        input_kind="tabular",
        tabular=TabularSpec(
            processor=processor.to_dict(),
            cat_names=processor.cat_names,
            cont_names=processor.cont_names,
            raw_columns=processor.raw_columns,
        ),
        outputs=outputs,
        onnx=OnnxSpec(
            opset=OPSET,
            inputs=specs,
            outputs=[TensorSpec(name=OUTPUT_NAME[task], dtype="float32", shape=["batch", n_out])],
        ),
        libraries={"torch": torch.__version__},
        training={"arch": "tiny-test-tabular"},
    )
    return _finish(folder, manifest)


# -- bundles from a real training run -----------------------------------------------------------


def build_image_bundle(
    repo: Path,
    name: str = "digits",
    version: int = 1,
    task: str = "classification",
    *,
    classes: Sequence[str] | None = None,
    size: tuple[int, int] = (16, 16),
    resize_method: str = "squish",
    thresholds: Sequence[float] | None = None,
    slow_steps: int = 0,
    seed: int | None = None,
    **handmade: Any,
) -> Path:
    """``repo/name/version/`` holding an image model for ``task``; returns the folder.

    Classification trains a small CNN for one epoch on scikit-learn's digits;
    multi-label on generated colour patches. Regression, and ``slow_steps``
    (a chain of 192x192 matrix products per run, about a millisecond each), are
    hand-made.
    """
    if task == "regression" or slow_steps:
        return _handmade_image_bundle(
            repo,
            name,
            version,
            task,
            classes=classes,
            size=size,
            resize_method=resize_method,
            thresholds=thresholds,
            slow_steps=slow_steps,
            seed=seed,
            **handmade,
        )
    from training import ImageDataLoaders, vision_learner

    seed = version if seed is None else seed
    if task == "classification":
        images, labels = _digit_images(classes or [str(i) for i in range(10)])
        delim = None
    else:
        images, labels = _colour_patches(classes or ["red", "green", "blue", "round"], seed)
        delim = " "
    dls = ImageDataLoaders.from_arrays(
        images, labels, valid_pct=0.25, seed=seed, size=size, method=resize_method, bs=32, label_delim=delim
    )
    learn = vision_learner(dls, arch="simple_cnn", seed=seed, device="cpu")
    learn.progress = False
    learn.fit_one_cycle(1, 1e-2)
    if thresholds is not None:
        dls.thresholds = list(thresholds)
    return _export_as(learn, repo, name, version)


def build_tabular_bundle(
    repo: Path,
    name: str = "penguins",
    version: int = 1,
    task: str = "classification",
    *,
    cat_names: Sequence[str] = PENGUIN_CATS,
    cont_names: Sequence[str] = PENGUIN_CONTS,
    y_range: tuple[float, float] | None = None,
    log_target: bool = False,
    seed: int | None = None,
    **handmade: Any,
) -> Path:
    """``repo/name/version/`` holding a tabular model trained for one epoch on palmerpenguins.

    Classification predicts the species; regression predicts ``body_mass_g``.
    With ``cat_names=()`` and rows without gaps the graph has no ``x_cat``
    input at all. Other shapes (several targets, multi-label) are hand-made.
    """
    if task not in ("classification", "regression") or handmade.get("n_targets", 1) != 1:
        return _handmade_tabular_bundle(
            repo,
            name,
            version,
            task,
            cat_names=cat_names,
            cont_names=cont_names,
            y_range=y_range,
            log_target=log_target,
            seed=seed,
            **handmade,
        )
    from palmerpenguins import load_penguins

    from training import TabularDataLoaders, tabular_learner

    seed = version if seed is None else seed
    target = "species" if task == "classification" else "body_mass_g"
    frame = load_penguins()[[*cat_names, *cont_names, target]].dropna(subset=[target])
    if not cat_names:  # no category inputs wanted: no gaps, so no _na flag columns either
        frame = frame.dropna(subset=list(cont_names))
    dls = TabularDataLoaders.from_df(
        frame,
        y_names=target,
        cat_names=list(cat_names),
        cont_names=list(cont_names),
        y_block="category" if task == "classification" else "regression",
        log_target=log_target,
        valid_pct=0.2,
        seed=seed,
        bs=32,
    )
    learn = tabular_learner(dls, layers=(32, 16), y_range=y_range, seed=seed, device="cpu")
    learn.progress = False
    learn.fit_one_cycle(1, 1e-2)
    return _export_as(learn, repo, name, version)


def _export_as(learn: Any, repo: Path, name: str, version: int) -> Path:
    """Export through the real pipeline, then place it as ``repo/name/version`` (tests choose versions)."""
    import tempfile

    from bundle.manifest import read_manifest
    from training.export import export_learner

    with tempfile.TemporaryDirectory() as staging:
        info = {"arch": getattr(learn, "arch", None), "epochs": 1}  # what the CLI records; every test run is one epoch
        exported = export_learner(learn, staging, name, training_info=info)
        manifest = read_manifest(exported)
        manifest.version = version
        write_manifest(exported, manifest)  # manifest.json itself is not among the hashed files
        target = Path(repo) / name / str(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(exported), target)
    return target


def _digit_images(classes: Sequence[str], n: int = 240) -> tuple[np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[:n] * (255 / 16)).round().astype(np.uint8)
    return images, [classes[t % len(classes)] for t in digits.target[:n]]


def _colour_patches(classes: Sequence[str], seed: int, n: int = 120) -> tuple[np.ndarray, list[str]]:
    """Patches tagged with the colour channels that are bright, and "round" when a disc is drawn."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 12, 12, 3), np.uint8)
    labels = []
    yy, xx = np.mgrid[0:12, 0:12]
    disc = (yy - 6) ** 2 + (xx - 6) ** 2 < 16
    for i in range(n):
        on = rng.random(4) < 0.5
        if not on.any():
            on[rng.integers(0, 4)] = True
        mask = disc if on[3] else np.ones((12, 12), bool)
        for channel in range(3):
            images[i, ..., channel][mask] = 220 if on[channel] else 30
        labels.append(" ".join(c for c, flag in zip(classes, on) if flag))
    return images, labels


# -- bundles for the monitoring tests ----------------------------------------------------------

SHAPES_COLORS = ("red", "green", "blue", "yellow")


def shapes_rows(n: int, seed: int) -> pd.DataFrame:
    """Generated rows with two categorical and three continuous columns; ``label`` depends on x1 and color."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "color": np.array(SHAPES_COLORS)[rng.integers(0, 4, n)],
            "shape": np.array(["circle", "square"])[rng.integers(0, 2, n)],
            "x1": rng.normal(0.0, 1.0, n).round(3),
            "x2": rng.uniform(0.0, 10.0, n).round(3),
            "x3": rng.normal(50.0, 5.0, n).round(2),
        }
    )
    frame["label"] = np.where(frame["x1"] + (frame["color"] == "red") > 0.5, "a", "b")
    return frame


def build_shapes_bundle(repo: Path, name: str = "shapes", version: int = 1, n: int = 3000) -> Path:
    """A tabular classifier trained for two epochs on :func:`shapes_rows` (large enough for stable PSI)."""
    from training import TabularDataLoaders, tabular_learner

    dls = TabularDataLoaders.from_df(
        shapes_rows(n, seed=0),
        y_names="label",
        cat_names=["color", "shape"],
        cont_names=["x1", "x2", "x3"],
        y_block="category",
        valid_pct=0.2,
        seed=0,
        bs=64,
    )
    learn = tabular_learner(dls, layers=(32, 16), seed=0, device="cpu")
    learn.progress = False
    learn.fit_one_cycle(2, 1e-2)
    return _export_as(learn, repo, name, version)


def digit_images(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits ``start:stop`` as uint8 8x8 images and their integer labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images[start:stop] * (255 / 16)).round().astype(np.uint8), digits.target[start:stop]


def build_calibrated_digits(
    repo: Path, name: str, false_alarm_rates: Sequence[float], n: int = 1200, pre_logits_rate: float | None = None
) -> list[Path]:
    """One digits CNN (three epochs on the first ``n`` digits), exported once per false-alarm rate as v1, v2, ...

    With ``pre_logits_rate`` one more version follows, written as bundles were before the logits output
    existed (see :func:`as_pre_logits_bundle`), calibrated on ``1 - max probability`` at that rate.
    """
    import tempfile

    from bundle.manifest import read_manifest
    from training import ImageDataLoaders, vision_learner
    from training.export import export_learner

    images, targets = digit_images(0, n)
    dls = ImageDataLoaders.from_arrays(
        images, [str(t) for t in targets], valid_pct=0.25, seed=0, size=(16, 16), method="squish", bs=32
    )
    learn = vision_learner(dls, arch="simple_cnn", seed=0, device="cpu")
    learn.progress = False
    learn.fit_one_cycle(3, 1e-2)
    rates = [*false_alarm_rates, *([pre_logits_rate] if pre_logits_rate is not None else [])]
    folders = []
    for version, rate in enumerate(rates, start=1):
        with tempfile.TemporaryDirectory() as staging:
            exported = export_learner(learn, staging, name, ood_false_alarm_rate=rate)
            manifest = read_manifest(exported)
            manifest.version = version
            write_manifest(exported, manifest)
            if version > len(false_alarm_rates):
                as_pre_logits_bundle(exported, learn, rate)
            target = Path(repo) / name / str(version)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(exported), target)
        folders.append(target)
    return folders


def as_pre_logits_bundle(folder: Path, learn: Any, false_alarm_rate: float) -> Path:
    """Rewrite an exported classifier as export wrote it before the energy score: a graph with the
    probabilities as its only output, and a manifest calibrated on ``1 - max probability``, without
    the ``ood_score`` key (its default must read such manifests)."""
    import onnx

    from bundle.manifest import LOGITS_OUTPUT, read_manifest
    from training.export.references import fit_monitoring

    model = onnx.load(str(folder / ONNX_FILE))
    kept = [output for output in model.graph.output if output.name != LOGITS_OUTPUT]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, str(folder / ONNX_FILE))
    manifest = read_manifest(folder)
    manifest.onnx.outputs = [spec for spec in manifest.onnx.outputs if spec.name != LOGITS_OUTPUT]
    sample_size = manifest.monitoring.reference_sample_size if manifest.monitoring else 0
    manifest.monitoring = fit_monitoring(learn, false_alarm_rate, sample_size, ood_score="max_softmax")
    manifest.files[ONNX_FILE] = sha256_file(folder / ONNX_FILE)
    raw = json.loads(manifest.model_dump_json())
    del raw["monitoring"]["ood_score"]
    (folder / "manifest.json").write_text(json.dumps(raw, indent=2) + "\n")
    return folder
