"""Monitoring's per-batch columns computed inside the model's own ONNX graph.

``service.monitoring.batch`` appends a few columns to every batch's rows:
the out-of-domain score and, for image models, the pixel summaries. The
Mahalanobis score is only computed here: it reads the model's penultimate
features, a graph output the service never fetches (a few hundred floats per
item), so only its one column leaves the run. In numpy
they are some twenty calls per batch, each costing several microseconds on a
busy event loop, more than a small model's run; added as nodes after the
model's outputs, ONNX Runtime computes them in the same run for a fraction
of that (figures: docs/performance.md, "Monitoring's columns in the graph").
:func:`with_columns` returns the model with one more output,
:data:`COLUMNS_OUTPUT` (``[batch, width]``, float32, in ``BatchColumns``'
order); the bundle's file is not changed, only the copy the service opens
when monitoring is on.

The nodes compute what ``bundle.monitoring`` defines (the same grid of
pixels, gray weights and formulas), in float32 where numpy takes a few sums
in float64: they agree to about 1e-6, which the tests check on real images.
A graph this cannot extend (an opset before 18, a first output that is not
``[batch, k]``, an input that is not ``[N, 3, H, W]``) gives None, and numpy
computes the columns instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bundle import monitoring as mon
from bundle.manifest import FEATURES_OUTPUT, LOGITS_OUTPUT

COLUMNS_OUTPUT = "serving_monitoring_columns"
MIN_OPSET = 18  # from here the Reduce* operators take their axes as an input
_PREFIX = "serving_monitoring/"


def with_columns(
    model: onnx.ModelProto,
    score: str | None,
    pixels: bool,
    space: mon.FeatureSpace | None = None,
    features: str = FEATURES_OUTPUT,
) -> onnx.ModelProto | None:
    """``model`` with :data:`COLUMNS_OUTPUT` added: ``score`` (``mahalanobis``, ``energy``, ``max_softmax`` or
    None), then brightness, contrast and saturation where ``pixels``; None where the graph cannot take the
    nodes. ``mahalanobis`` reads the graph output ``features`` with the fitted ``space``."""
    if not (score or pixels) or _opset(model) < MIN_OPSET:
        return None
    graph = model.graph
    first = graph.output[0]
    names = {o.name for o in graph.output}
    if _width(first) is None or (score == "energy" and LOGITS_OUTPUT not in names):
        return None
    if score == "mahalanobis" and (space is None or features not in names):
        return None
    builder = _Builder(graph)
    parts: list[str] = []
    if score == "mahalanobis":
        assert space is not None
        parts.append(builder.mahalanobis(features, space))
    elif score == "energy":  # -logsumexp(logits): bundle.monitoring.energy_score at T = 1
        parts.append(builder.node("Neg", [builder.reduce("ReduceLogSumExp", LOGITS_OUTPUT, [1])]))
    elif score == "max_softmax":  # 1 - max p
        parts.append(builder.node("Sub", [builder.constant("one", 1.0), builder.reduce("ReduceMax", first.name, [1])]))
    elif score is not None:
        raise ValueError(f"unknown out-of-domain score {score!r}")
    if pixels:
        image = graph.input[0]
        dims = [d.dim_value for d in image.type.tensor_type.shape.dim]
        if len(dims) != 4 or dims[1] != 3 or not (dims[2] and dims[3]):
            return None
        parts.append(builder.pixel_summaries(image.name, dims[2], dims[3]))
    columns = parts[0] if len(parts) == 1 else builder.node("Concat", parts, axis=1)
    graph.node.append(helper.make_node("Identity", [columns], [COLUMNS_OUTPUT], name=f"{_PREFIX}output"))
    width = (score is not None) + 3 * pixels
    graph.output.append(helper.make_tensor_value_info(COLUMNS_OUTPUT, TensorProto.FLOAT, [_batch_dim(first), width]))
    onnx.checker.check_model(model)
    return model


class _Builder:
    """Appends uniquely named nodes and constants to a graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{_PREFIX}{hint}_{self.count}"

    def constant(self, hint: str, value: float | Sequence[int] | np.ndarray) -> str:
        """An initializer: an array as it is, a list as int64 (axes, starts), a number as a float32 scalar."""
        if isinstance(value, np.ndarray):
            array = value.astype(np.float32) if value.dtype == np.float64 else value
        else:
            array = np.asarray(value, dtype=np.int64 if isinstance(value, (list, tuple)) else np.float32)
        name = self.name(hint)
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: Sequence[str], **attributes: Any) -> str:
        output = self.name(op.lower())
        self.graph.node.append(helper.make_node(op, list(inputs), [output], name=output, **attributes))
        return output

    def reduce(self, op: str, x: str, axes: Sequence[int]) -> str:
        """``op`` over ``axes``, keeping them (a [N, 1, ...] result)."""
        return self.node(op, [x, self.constant("axes", list(axes))], keepdims=1)

    def mahalanobis(self, features: str, space: mon.FeatureSpace) -> str:
        """[N, 1] float32: ``FeatureSpace.score`` of [N, D] features, the squared distance to the nearest class
        mean after whitening, expanded as ``|g|^2 - 2 g.m + |m|^2`` so that no [N, classes, D] tensor is made
        (1,000 classes of 512 features would be 2 MB an item)."""
        whitening = space.whitening.astype(np.float32)
        centres = (space.means @ space.whitening).astype(np.float32)  # [C, D], the class means whitened
        whitened = self.node("MatMul", [features, self.constant("whitening", whitening)])  # [N, D]
        cross = self.node("MatMul", [whitened, self.constant("centres", np.ascontiguousarray(-2.0 * centres.T))])
        squares = self.constant("centre_norms", (centres.astype(np.float64) ** 2).sum(axis=1, keepdims=True).T)
        distances = self.node(
            "Add", [self.node("Add", [cross, self.reduce("ReduceSumSquare", whitened, [1])]), squares]
        )  # [N, C]
        nearest = self.reduce("ReduceMin", distances, [1])
        return self.node("Max", [nearest, self.constant("zero", 0.0)])  # rounding must not make it negative

    def pixel_summaries(self, pixels: str, height: int, width: int) -> str:
        """[N, 3] float32: brightness, contrast, saturation of uint8 [N, 3, H, W] pixels, as ``summary_matrix``.

        Written as ``summary_matrix`` is, on the pixels flattened to [N, 3, P]: the gray level is one MatMul
        and every reduction runs over the last axis. Not a 1x1 Conv for the gray level: ONNX Runtime re-lays
        that out in blocked NCHWc form and back, which cost more than the model (docs/performance.md)."""
        step = max(1, max(height, width) // mon.SUMMARY_GRID)
        if step > 1:  # every step-th row and column: pixels[:, :, ::step, ::step]
            pixels = self.node(
                "Slice",
                [
                    pixels,
                    self.constant("starts", [0, 0]),
                    self.constant("ends", [height, width]),
                    self.constant("axes", [2, 3]),
                    self.constant("steps", [step, step]),
                ],
            )
        count = len(range(0, height, step)) * len(range(0, width, step))
        flat = self.node("Reshape", [pixels, self.constant("shape", [0, 3, -1])])
        x = self.node("Cast", [flat], to=TensorProto.FLOAT)  # [N, 3, P]
        weights = np.asarray(mon.GRAY_WEIGHTS, dtype=np.float32).reshape(1, 3)
        gray = self.node("MatMul", [self.constant("gray", weights), x])  # [N, 1, P], gray level in [0, 1]
        mean = self.reduce("ReduceMean", gray, [2])
        square_mean = self.node("Mul", [self.reduce("ReduceSumSquare", gray, [2]), self.constant("inv", 1.0 / count)])
        variance = self.node("Sub", [square_mean, self.node("Mul", [mean, mean])])
        contrast = self.node("Sqrt", [self.node("Max", [variance, self.constant("zero", 0.0)])])
        high, low = self.reduce("ReduceMax", x, [1]), self.reduce("ReduceMin", x, [1])
        ratio = self.node("Div", [self.node("Sub", [high, low]), self.node("Max", [high, self.constant("one", 1.0)])])
        saturation = self.reduce("ReduceMean", ratio, [2])
        return self.node("Flatten", [self.node("Concat", [mean, contrast, saturation], axis=1)], axis=1)


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _width(output: onnx.ValueInfoProto) -> int | None:
    dims = output.type.tensor_type.shape.dim
    return dims[1].dim_value if len(dims) == 2 and dims[1].dim_value else None


def _batch_dim(output: onnx.ValueInfoProto) -> str | int:
    dim = output.type.tensor_type.shape.dim[0]
    return dim.dim_param or dim.dim_value or "batch"
