"""Export: a learner becomes models/<name>/<version>/ that ONNX Runtime replays exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from bundle import monitoring as mon
from bundle.images import ResizeSpec, preprocess
from bundle.manifest import read_manifest, verify_files
from bundle.tabular import TabularProcessor
from training.builders import tabular_learner, vision_learner
from training.cli.examples import penguins_frame, write_digits_folder
from training.data.images import ImageDataLoaders
from training.data.tabular import TabularDataLoaders
from training.export import ExportError, export_learner, load_learner
from training.export import bundle as export_module


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("data") / "digits", limit=200)


@pytest.fixture(scope="module")
def image_learner(digits_folder: Path):
    dls = ImageDataLoaders.from_folder(digits_folder, valid_pct=0.25, size=16, method="squish", bs=32)
    learn = vision_learner(dls, arch="simple_cnn", seed=0, device="cpu")
    learn.fit_one_cycle(1, 1e-2)
    return learn


@pytest.fixture(scope="module")
def penguins_learner():
    dls = TabularDataLoaders.from_df(penguins_frame(), y_names="species", valid_pct=0.2, bs=32, seed=0)
    learn = tabular_learner(dls, layers=(32, 16), seed=0, device="cpu")
    learn.fit_one_cycle(1, 1e-2)
    return learn


@pytest.fixture(scope="module")
def image_bundle(image_learner, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_learner(image_learner, tmp_path_factory.mktemp("models"), "digits")


def test_export_writes_every_file_of_the_bundle(image_bundle: Path) -> None:
    assert image_bundle.name == "1"
    assert sorted(p.name for p in image_bundle.iterdir()) == [
        "learner.pkl",
        "manifest.json",
        "model.onnx",
        "reference.json",
    ]


def test_manifest_records_what_the_contract_lists(image_bundle: Path) -> None:
    m = read_manifest(image_bundle)
    assert (m.name, m.version, m.task, m.input_kind) == ("digits", 1, "classification", "image")
    assert (m.image.height, m.image.width, m.image.resize_method) == (16, 16, "squish")
    assert len(m.image.mean) == 3 and len(m.image.std) == 3
    assert m.outputs.classes == [str(d) for d in range(10)]
    assert m.onnx.inputs[0].name == "pixels" and m.onnx.inputs[0].shape[0] == "batch"
    assert m.onnx.opset >= 17
    assert "error_rate" in m.metrics and "valid_loss" in m.metrics
    assert m.parity is not None and m.parity.max_abs_diff <= 1e-4 and 1 in m.parity.batch_sizes
    assert {"torch", "onnxruntime", "numpy"} <= set(m.libraries)
    assert verify_files(image_bundle, m) == []


def test_reference_statistics_describe_images_and_predictions(image_bundle: Path) -> None:
    reference = json.loads((image_bundle / "reference.json").read_text())
    assert {"image.brightness", "image.contrast", "image.width", "image.height"} <= set(reference["features"])
    assert reference["predictions"]["label"]["kind"] == "categorical"
    assert reference["predictions"]["confidence"]["kind"] == "continuous"


def test_a_second_export_is_a_new_version_and_never_overwrites(image_learner, image_bundle: Path) -> None:
    before = (image_bundle / "model.onnx").read_bytes()
    second = export_learner(image_learner, image_bundle.parent.parent, "digits")
    assert second.name == "2"
    assert (image_bundle / "model.onnx").read_bytes() == before


def test_onnx_on_file_bytes_equals_the_learner_prediction(image_bundle: Path, digits_folder: Path) -> None:
    m = read_manifest(image_bundle)
    spec = ResizeSpec(m.image.height, m.image.width, m.image.resize_method, m.image.pad_mode)
    files = sorted(digits_folder.rglob("*.png"))[:5]
    pixels = np.stack([preprocess(f.read_bytes(), spec) for f in files])
    session = ort.InferenceSession(str(image_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_probs = session.run(None, {"pixels": pixels})[0]
    learn = load_learner(image_bundle)
    for f, row in zip(files, onnx_probs):
        label, index, probs = learn.predict(f)
        assert index == int(row.argmax()) and label == m.outputs.classes[index]
        np.testing.assert_allclose(probs.numpy(), row, atol=1e-5)


def test_load_learner_predict_returns_label_index_and_probabilities(image_bundle: Path, digits_folder: Path) -> None:
    learn = load_learner(image_bundle)
    label, index, probs = learn.predict(next(digits_folder.rglob("*.png")))
    assert isinstance(label, str) and isinstance(index, int)
    assert probs.shape == (10,) and torch.isclose(probs.sum(), torch.tensor(1.0), atol=1e-5)


def test_a_failed_parity_check_writes_no_bundle_and_keeps_the_learner(
    image_learner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_learner, "path", tmp_path / "work")
    with pytest.raises(ExportError, match="disagree") as failure:
        export_learner(image_learner, tmp_path / "models", "digits", rtol=0.0, atol=-1.0)
    assert not (tmp_path / "models" / "digits").exists()
    saved = next((tmp_path / "work" / "runs" / "failed-exports").glob("digits-*/learner.pkl"))
    assert str(saved) in str(failure.value)
    assert load_learner(saved).dls.vocab == image_learner.dls.vocab


def test_classifiers_export_their_logits_second_and_an_energy_threshold_fitted_on_validation(
    image_bundle: Path, image_learner
) -> None:
    m = read_manifest(image_bundle)
    assert [(o.name, o.shape) for o in m.onnx.outputs] == [("probabilities", ["batch", 10]), ("logits", ["batch", 10])]
    pixels, _ = next(iter(image_learner.dls.valid))
    session = ort.InferenceSession(str(image_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    probabilities, logits = session.run(["probabilities", "logits"], {"pixels": pixels.numpy()})
    with torch.no_grad():
        expected = image_learner.model(pixels).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(probabilities, torch.softmax(torch.from_numpy(expected), 1).numpy(), atol=1e-5)

    assert m.monitoring.ood_score == "mahalanobis" and m.monitoring.ood_false_alarm_rate == 0.01  # energy: fallback
    raw, _ = image_learner.get_preds(activation=False)
    energy = mon.energy_score(raw.numpy())
    assert m.monitoring.ood_thresholds["energy"] == mon.fit_ood_threshold(energy, 0.01)
    assert m.monitoring.calibration_items == len(energy) and np.mean(energy > m.monitoring.ood_threshold) <= 0.01


def test_the_parity_check_covers_the_logits_output(
    image_learner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class ShiftedLogits(nn.Module):  # the same probabilities (softmax ignores a shift), logits off by one
        def __init__(self, graph: nn.Module) -> None:
            super().__init__()
            self.graph = graph

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            probabilities, logits, *features = self.graph(*inputs)
            return probabilities, logits + 1.0, *features

    check = export_module.check_parity
    monkeypatch.setattr(export_module, "check_parity", lambda graph, *args: check(ShiftedLogits(graph), *args))
    monkeypatch.setattr(image_learner, "path", tmp_path / "work")
    with pytest.raises(ExportError, match="disagree"):
        export_learner(image_learner, tmp_path / "models", "digits")
    assert not (tmp_path / "models" / "digits").exists()


def test_tabular_bundle_replays_its_processors_without_torch(penguins_learner, tmp_path: Path) -> None:
    bundle = export_learner(penguins_learner, tmp_path, "penguins")
    m = read_manifest(bundle)
    assert m.input_kind == "tabular" and [i.name for i in m.onnx.inputs] == ["x_cat", "x_cont"]
    processor = TabularProcessor.from_dict(m.tabular.processor)
    rows = penguins_frame().head(9)
    table = processor.transform(rows)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_probs, onnx_logits = session.run(["probabilities", "logits"], {"x_cat": table.x_cat, "x_cont": table.x_cont})
    learned = [p.numpy() for _, _, p in load_learner(bundle).predict_batch(rows)]
    np.testing.assert_allclose(onnx_probs, np.stack(learned), atol=1e-5)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(onnx_logits), 1).numpy(), onnx_probs, atol=1e-5)
    assert m.monitoring.ood_score == "mahalanobis"
    reference = json.loads((bundle / "reference.json").read_text())
    assert reference["features"]["island"]["kind"] == "categorical"
    assert reference["features"]["bill_length_mm"]["kind"] == "continuous"


def test_regression_bundle_records_log_target_and_y_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    import pandas as pd

    df = pd.DataFrame({"size": rng.uniform(1, 10, 200), "kind": rng.choice(["a", "b"], 200)})
    df["price"] = np.exp(1 + 0.2 * df["size"] + (df["kind"] == "b"))
    dls = TabularDataLoaders.from_df(df, y_names="price", y_block="regression", log_target=True, bs=32)
    learn = tabular_learner(dls, layers=(16,), y_range=(0.5, 4.5), seed=0, device="cpu")
    learn.fit_one_cycle(1, 1e-2)
    m = read_manifest(export_learner(learn, tmp_path, "prices"))
    assert m.task == "regression" and m.outputs.log_target and m.outputs.y_range == (0.5, 4.5)
    assert m.onnx.outputs[0].name == "values" and "rmse" in m.metrics
    assert len(m.onnx.outputs) == 1  # only single-label classifiers export their logits


def test_classifiers_export_their_penultimate_features_and_the_mahalanobis_statistics(
    image_bundle: Path, image_learner
) -> None:
    """A third graph output the manifest keeps out of ``onnx.outputs`` (nothing reads it per prediction), its class
    means and whitening in reference.json, fitted on the training items, and a threshold calibrated on validation."""
    from training.export.references import last_linear

    m = read_manifest(image_bundle)
    assert m.monitoring.feature_output == "features" and "features" not in [o.name for o in m.onnx.outputs]
    pixels, targets = next(iter(image_learner.dls.valid))
    session = ort.InferenceSession(str(image_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    (features,) = session.run(["features"], {"pixels": pixels.numpy()})
    taken = []
    handle = last_linear(image_learner.model).register_forward_hook(lambda _m, i, _o: taken.append(i[0]))
    with torch.no_grad():
        image_learner.model.eval()(pixels)
    handle.remove()
    np.testing.assert_allclose(features, taken[0].numpy(), rtol=1e-4, atol=1e-4)

    reference = json.loads((image_bundle / "reference.json").read_text())
    space = mon.FeatureSpace.from_dict(reference["feature_space"])
    assert space.means.shape == (10, features.shape[1]) and space.items == len(image_learner.dls.train_ds)
    thresholds = m.monitoring.ood_thresholds
    assert set(thresholds) == {"mahalanobis", "energy", "max_softmax"}
    assert m.monitoring.ood_threshold == thresholds["mahalanobis"] > np.median(space.score(features))
    raw, valid_targets = image_learner.get_preds(activation=False)
    assert m.monitoring.calibration_errors == int((raw.argmax(1) != valid_targets).sum())


def test_the_prediction_reference_takes_training_items_where_they_predict_like_validation_items(
    image_bundle: Path,
) -> None:
    reference = json.loads((image_bundle / "reference.json").read_text())
    sizes = read_manifest(image_bundle).training
    for name in ("label", "confidence"):
        source = reference["predictions_from"][name]
        assert source["valid"] == sizes["n_valid"] and source["train"] in (0, sizes["n_train"])
        assert reference["predictions"][name]["count"] == source["train"] + source["valid"]
        if source["train"] == 0:  # the model is surer of what it trained on: validation items alone
            assert source["training_psi"] > source["noise"]


def test_training_predictions_unlike_validation_ones_stay_out_of_the_prediction_reference() -> None:
    from training.export.references import prediction_references

    rng = np.random.default_rng(0)

    def outputs(n: int, sure: float) -> np.ndarray:  # three classes, the first with probability about `sure`
        first = np.clip(rng.normal(sure, 0.01, n), 0.34, 1.0)
        return np.stack([first, (1 - first) / 2, (1 - first) / 2], axis=1)

    references, sources = prediction_references(
        "classification", ["a", "b", "c"], outputs(900, 0.99), outputs(300, 0.9)
    )
    assert sources["label"] == {"train": 900, "valid": 300}  # the same answers: they join
    assert sources["confidence"]["train"] == 0 and references["confidence"]["count"] == 300  # far surer: they do not
    _, alike = prediction_references("classification", ["a", "b", "c"], outputs(900, 0.9), outputs(300, 0.9))
    assert alike["confidence"] == {"train": 900, "valid": 300}
