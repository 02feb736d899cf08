"""Monitoring's per-batch columns, computed inside the model's ONNX graph, equal what numpy computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bundle import monitoring as mon
from service.monitoring.graph import COLUMNS_OUTPUT, with_columns


def tiny_classifier(height: int, width: int, opset: int = 18, logits: bool = True) -> onnx.ModelProto:
    """uint8 [N, 3, H, W] -> probabilities [N, 4] (and logits [N, 4]): mean colour times a fixed matrix."""
    weights = np.linspace(-2.0, 2.0, 12, dtype=np.float32).reshape(3, 4) / 64.0
    nodes = [
        helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 4])]
    if logits:
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 3, height, width])],
        outputs,
        [numpy_helper.from_array(weights, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(model: onnx.ModelProto, pixels: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": pixels})


def photo_pixels(height: int, width: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.chelsea()).resize((width, height))
    return np.asarray(photo).transpose(2, 0, 1)[None]


@pytest.mark.parametrize("size", [(16, 16), (28, 28), (96, 128)])  # 96 x 128: every 4th row and column
@pytest.mark.parametrize("score", ["energy", "max_softmax", None])
def test_the_graph_columns_equal_numpy_for_images_of_any_size(size: tuple[int, int], score: str | None) -> None:
    height, width = size
    rng = np.random.default_rng(0)
    pixels = np.concatenate(
        [
            rng.integers(0, 256, (5, 3, height, width), dtype=np.uint8),
            np.zeros((1, 3, height, width), np.uint8),  # black: saturation 0 / max(0, 1)
            np.full((1, 3, height, width), 255, np.uint8),
            photo_pixels(height, width),
        ]
    )
    model = with_columns(tiny_classifier(height, width), score, pixels=True)
    assert model is not None
    probabilities, logits, columns = run(model, pixels)
    expected = mon.summary_matrix(pixels, [(0, 0)] * len(pixels))[:, :3]
    if score is not None:
        expected = np.concatenate([mon.ood_score(score, probabilities, logits)[:, None], expected], axis=1)
    assert columns.shape == (len(pixels), 3 + (score is not None)) and columns.dtype == np.float32
    assert np.allclose(columns, expected, rtol=1e-5, atol=1e-5)


def test_a_table_model_gets_its_score_column_alone() -> None:
    model = with_columns(tiny_classifier(8, 8), "energy", pixels=False)
    assert model is not None
    pixels = np.random.default_rng(1).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    _, logits, columns = run(model, pixels)
    assert np.allclose(columns[:, 0], mon.energy_score(logits), atol=1e-5)


def test_a_graph_that_cannot_take_the_columns_is_left_to_numpy() -> None:
    assert with_columns(tiny_classifier(8, 8, opset=17), "energy", pixels=True) is None  # axes as attributes
    assert with_columns(tiny_classifier(8, 8, logits=False), "energy", pixels=True) is None  # no logits
    assert with_columns(tiny_classifier(8, 8), None, pixels=False) is None  # nothing to compute
    model = with_columns(tiny_classifier(8, 8, logits=False), "max_softmax", pixels=True)
    assert model is not None and model.graph.output[-1].name == COLUMNS_OUTPUT


def with_features_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """The tiny classifier with its pooled colours, the input of its last matrix product, as a third output."""
    model.graph.output.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3]))
    return model


@pytest.mark.parametrize("classes", [1, 4, 40])
def test_the_mahalanobis_column_equals_the_feature_space_score_of_numpy(classes: int) -> None:
    rng = np.random.default_rng(classes)
    root = rng.normal(size=(3, 3))
    space = mon.FeatureSpace(rng.normal(100, 30, (classes, 3)), root @ root.T / 50)
    model = with_columns(with_features_output(tiny_classifier(8, 8)), "mahalanobis", pixels=True, space=space)
    assert model is not None
    pixels = np.concatenate([rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8), photo_pixels(8, 8)])
    _, _, features, columns = run(model, pixels)
    assert columns.shape == (7, 4)
    np.testing.assert_allclose(columns[:, 0], space.score(features), rtol=1e-4, atol=1e-3)


def test_without_a_features_output_or_statistics_the_mahalanobis_column_is_not_built() -> None:
    space = mon.FeatureSpace(np.zeros((4, 3)), np.eye(3))
    assert with_columns(tiny_classifier(8, 8), "mahalanobis", pixels=True, space=space) is None  # no features
    assert with_columns(with_features_output(tiny_classifier(8, 8)), "mahalanobis", pixels=True) is None  # no space
