"""The exported graph: uint8 pixels or processed columns in, activated outputs out, as ONNX, checked against PyTorch.

The probabilities (or values) stay the first output; single-label classifiers add
their logits, and models scored by feature-space distance their penultimate
features, after them. Parity is ``numpy.allclose(onnx, torch, rtol, atol)`` on
validation batches of size 1, an odd size and the maximum.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from bundle.manifest import FEATURES_OUTPUT, LOGITS_OUTPUT, Parity, TensorSpec
from training.export import references as monitoring_fit
from training.learner import Learner, activation_for

OPSET = 18
# ONNX Runtime must match PyTorch as numpy.allclose(onnx, torch, rtol, atol) does: the absolute part
# covers probabilities near 0, the relative part large regression values (float32 has ~7 digits).
PARITY_RTOL = 1e-4
PARITY_ATOL = 1e-4
PARITY_TOLERANCE = PARITY_ATOL  # the old name of the absolute tolerance
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


def graph_and_inputs(
    learn: Learner, features: bool = False
) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[TensorSpec]]:
    dls = learn.dls
    activation = activation_for(dls.task)
    logits = exports_logits(dls.task)
    sample = valid_inputs(learn, 4)
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


def valid_inputs(learn: Learner, n: int) -> tuple[torch.Tensor, ...]:
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


def export_onnx(graph: nn.Module, inputs: tuple, specs: list[TensorSpec], path: Path, names: list[str]) -> None:
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


def check_parity(
    graph: nn.Module, path: Path, learn: Learner, specs: list[TensorSpec], max_batch: int, rtol: float, atol: float
) -> Parity:
    """ONNX Runtime against PyTorch on validation batches of size 1, an odd size and the maximum.

    Passes as ``numpy.allclose(onnx, torch, rtol, atol)`` on every output (the
    logits too, where the graph has them); records the largest absolute and
    relative differences over all of them.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = _graph_inputs(valid_inputs(learn, max_batch))
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
