"""A served version as the Open Inference Protocol sees it, generated from its manifest.

The metadata (inputs and outputs with names, datatypes and shapes) is read
off the manifest, so it always matches the graph. Inputs come in as the
protocol's tensors and leave as the arrays the graph takes, through the
same decoders as the native API: encoded images (``BYTES``) are decoded and
resized by ``ImageInputs``; preprocessed pixels (``UINT8`` NCHW at the
manifest's size) go straight in; tabular models take one tensor per raw
column, replayed through the fitted processors by ``TabularInputs``. Outputs
are the graph's own, under its ONNX name, plus named ones a client can use
without knowing the class list: ``label`` and ``index`` (classification),
``labels`` (multilabel, each a JSON list of class names), ``value``
(regression, as served: a log target's ``exp`` undone), and
``probabilities`` when the graph names its output otherwise.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np
import pandas as pd

from service.codecs.decoded import RawInputs
from service.codecs.images import ImageInputs
from service.codecs.oip.tensors import OutputTensor, RequestedOutput, Tensor, datatype_of
from service.codecs.tables import MAX_CONTINUOUS, TabularInputs
from service.http.errors import InvalidInput, PayloadTooLarge
from service.models.registry import ModelVersion

PLATFORM = "onnxruntime_onnx"
_CATEGORY_TYPES = ("BYTES", "INT64", "INT32", "FP64", "FP32")
_NUMBER_TYPES = ("FP64", "FP32", "INT64", "INT32")


def _dims(shape: list[int | str]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


class ProtocolModel:
    """Metadata, input decoding and output naming for one served version."""

    def __init__(self, version: ModelVersion, max_items: int) -> None:
        self.version = version
        self.manifest = manifest = version.manifest
        self.max_items = max_items
        self.encoder = version.encoder
        raw = manifest.onnx.outputs[0]
        self.raw_output = raw.name
        self.outputs: list[dict[str, Any]] = [
            {"name": raw.name, "datatype": datatype_of(raw.dtype), "shape": _dims(raw.shape)}
        ]
        task = manifest.task
        if task in ("classification", "multilabel") and raw.name != "probabilities":
            self.outputs.append({"name": "probabilities", "datatype": "FP32", "shape": _dims(raw.shape)})
        if task == "classification":
            self.outputs += [
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "index", "datatype": "INT64", "shape": [-1]},
            ]
        elif task == "multilabel":
            self.outputs.append({"name": "labels", "datatype": "BYTES", "shape": [-1]})
        else:
            targets = raw.shape[1] if len(raw.shape) > 1 else 1
            self.outputs.append({"name": "value", "datatype": "FP64", "shape": [-1] if targets == 1 else [-1, targets]})
        self.output_names = [o["name"] for o in self.outputs]
        self.inputs = self._input_metadata()

    def _input_metadata(self) -> list[dict[str, Any]]:
        decoder = self.version.inputs
        if isinstance(decoder, ImageInputs):
            spec = self.manifest.onnx.inputs[0]
            return [{"name": spec.name, "datatype": "UINT8", "shape": _dims(spec.shape)}]
        assert isinstance(decoder, TabularInputs)
        processor = decoder.processor
        columns = [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in processor.raw_cat_names]
        columns += [{"name": n, "datatype": "FP64", "shape": [-1]} for n in processor.raw_cont_names]
        columns += [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in processor.date_fields]
        return columns

    # -- metadata ------------------------------------------------------------------------

    def metadata(self, versions: list[int]) -> dict[str, Any]:
        m = self.manifest
        parameters: dict[str, Any] = {"task": m.task, "input_kind": m.input_kind, **self.encoder.describe()}
        if m.image is not None:
            parameters["image"] = {
                "height": m.image.height,
                "width": m.image.width,
                "resize_method": m.image.resize_method,
                "channel_order": m.image.channel_order,
                "encoded_images": f"send BYTES [N] under {self.inputs[0]['name']!r} to have them decoded and resized",
            }
        return {
            "name": m.name,
            "versions": [str(v) for v in versions],
            "platform": PLATFORM,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "parameters": parameters,
        }

    # -- inputs --------------------------------------------------------------------------

    def check(self, inputs: dict[str, Tensor]) -> bool:
        """Validate names, datatypes, shapes and the item limit; True when decoding is heavy (use the pool)."""
        expected = {spec["name"]: spec for spec in self.inputs}
        unknown = [name for name in inputs if name not in expected]
        if unknown:
            raise InvalidInput(f"input {unknown[0][:64]!r} is not an input of this model; its inputs: {list(expected)}")
        missing = [name for name in expected if name not in inputs]
        if missing:
            raise InvalidInput(f"input {missing[0]!r} is missing; this model takes: {list(expected)}")
        if isinstance(self.version.inputs, ImageInputs):
            return self._check_image(inputs[self.inputs[0]["name"]])
        rows = {self._check_column(inputs[name]) for name in expected}
        if len(rows) > 1:
            raise InvalidInput(f"every input needs the same number of rows, got {sorted(rows)}")
        return True

    def _check_items(self, tensor: Tensor, items: int) -> None:
        if items == 0:
            raise InvalidInput(f"input {tensor.name!r}: empty; send at least one item")
        if items > self.max_items:
            raise PayloadTooLarge(f"input {tensor.name!r}: {items} items in one request, the limit is {self.max_items}")

    def _check_image(self, tensor: Tensor) -> bool:
        item_shape = tuple(_dims(self.manifest.onnx.inputs[0].shape)[1:])
        if tensor.datatype == "UINT8":
            if len(tensor.shape) != 4 or tensor.shape[1:] != item_shape:
                raise InvalidInput(
                    f"input {tensor.name!r}: UINT8 pixels must have shape [N, {', '.join(map(str, item_shape))}], "
                    f"got {list(tensor.shape)}"
                )
            self._check_items(tensor, tensor.shape[0])
            return False
        if tensor.datatype == "BYTES":
            if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
                raise InvalidInput(
                    f"input {tensor.name!r}: BYTES images must have shape [N] or [N, 1], got {list(tensor.shape)}"
                )
            self._check_items(tensor, tensor.shape[0])
            return True
        raise InvalidInput(
            f"input {tensor.name!r}: datatype {tensor.datatype} is not accepted; send UINT8 pixels "
            f"[N, {', '.join(map(str, item_shape))}] or BYTES encoded images [N]"
        )

    def _check_column(self, tensor: Tensor) -> int:
        declared = next(spec["datatype"] for spec in self.inputs if spec["name"] == tensor.name)
        decoder = self.version.inputs
        assert isinstance(decoder, TabularInputs)
        processor = decoder.processor
        accepted: tuple[str, ...] = _NUMBER_TYPES if tensor.name in processor.raw_cont_names else _CATEGORY_TYPES
        if tensor.name in processor.date_fields:
            accepted = ("BYTES",)
        if tensor.datatype not in accepted:
            raise InvalidInput(
                f"input {tensor.name!r}: datatype {tensor.datatype} is not accepted for this column "
                f"(declared {declared}; accepted: {', '.join(accepted)})"
            )
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InvalidInput(
                f"input {tensor.name!r}: a column must have shape [rows] or [rows, 1], got {list(tensor.shape)}"
            )
        self._check_items(tensor, tensor.shape[0])
        return tensor.shape[0]

    def arrays(self, inputs: dict[str, Tensor], raw: RawInputs | None = None) -> list[np.ndarray]:
        """The graph's input arrays (call ``check`` first); blocking when decoding images or tables.

        ``raw`` receives the inputs as sent, for monitoring (encoded images and their sizes, or the columns)."""
        decoder = self.version.inputs
        if isinstance(decoder, ImageInputs):
            tensor = inputs[self.inputs[0]["name"]]
            if tensor.datatype == "UINT8":
                return [tensor.array()]
            images = [
                (f"{tensor.name}[{i}]", _image_bytes(value, f"{tensor.name}[{i}]"))
                for i, value in enumerate(tensor.array().ravel().tolist())
            ]
            sizes: list[tuple[int, int]] = []
            pixels = decoder.decode_images(images, sizes=sizes)
            if raw is not None:
                raw.images, raw.sizes = [data for _, data in images], sizes
            return [pixels]
        assert isinstance(decoder, TabularInputs)
        columns = {spec["name"]: _column(inputs[spec["name"]]) for spec in self.inputs}
        for name in decoder.processor.raw_cont_names:
            _check_range(name, columns[name])
        if raw is not None:
            raw.columns = columns
        return decoder.process(pd.DataFrame(columns, copy=False), "{column}[{row}]")

    # -- outputs -------------------------------------------------------------------------

    def check_outputs(self, requested: list[RequestedOutput] | None, binary: bool) -> list[RequestedOutput]:
        """The outputs to send: those requested (unknown names refused before anything runs), else all."""
        if requested is None:
            return [RequestedOutput(name, binary) for name in self.output_names]
        for output in requested:
            if output.name not in self.output_names:
                raise InvalidInput(
                    f"output {output.name[:64]!r} is not an output of this model; its outputs: {self.output_names}"
                )
            if output.classification and not self.encoder.classes:
                raise InvalidInput(f"output {output.name!r}: classification needs a model with classes")
        return requested

    def output_tensors(self, output: np.ndarray, requested: list[RequestedOutput]) -> list[OutputTensor]:
        return [self._output(output, wanted) for wanted in requested]

    def _output(self, output: np.ndarray, wanted: RequestedOutput) -> OutputTensor:
        name = wanted.name
        if wanted.classification:
            return OutputTensor(name, "BYTES", self._top_classes(output, wanted.classification), wanted.binary)
        if name in (self.raw_output, "probabilities"):
            return OutputTensor(name, datatype_of(output.dtype), output, wanted.binary)
        classes = self.encoder.classes
        if name == "index":
            return OutputTensor(name, "INT64", output.argmax(axis=1).astype(np.int64), wanted.binary)
        if name == "label":
            labels = np.array([classes[i] for i in output.argmax(axis=1).tolist()], dtype=object)
            return OutputTensor(name, "BYTES", labels, wanted.binary)
        if name == "labels":
            chosen = self.encoder.chosen(output).tolist()
            texts = [json.dumps([c for c, keep in zip(classes, flags) if keep]) for flags in chosen]
            return OutputTensor(name, "BYTES", np.array(texts, dtype=object), wanted.binary)
        values = self.encoder.values(output)
        return OutputTensor(name, "FP64", values[:, 0] if values.shape[1] == 1 else values, wanted.binary)

    def _top_classes(self, output: np.ndarray, k: int) -> np.ndarray:
        """Triton's classification extension: per row the top ``k`` as ``"score:index:label"``."""
        classes = self.encoder.classes
        k = min(k, output.shape[1])
        order = np.argsort(-output, axis=1, kind="stable")[:, :k]
        rows = [[f"{row[i]:f}:{i}:{classes[i]}" for i in top] for row, top in zip(output.tolist(), order.tolist())]
        return np.array(rows, dtype=object).reshape(len(rows), k)


def _image_bytes(value: Any, where: str) -> bytes:
    """Binary BYTES are the encoded image; JSON cannot carry raw image bytes, so there they are base64."""
    if isinstance(value, bytes):
        return value
    if value is None:
        raise InvalidInput(f"{where}: null is not an image")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{where}: a BYTES image sent as JSON must be base64 ({exc})") from exc


def _check_range(name: str, values: np.ndarray) -> None:
    """A continuous column within the native API's range (``MAX_CONTINUOUS``): far beyond any feature, and far
    from float32 overflow in normalisation, which would answer NaN instead of refusing."""
    numbers = values.astype(np.float64, copy=False)
    outside = np.flatnonzero(np.abs(numbers) > MAX_CONTINUOUS)  # NaN, a missing value, is never outside
    if len(outside):
        row = int(outside[0])
        raise InvalidInput(f"{name}[{row}]: {numbers[row]:g} is out of range (at most {MAX_CONTINUOUS:g})")


def _column(tensor: Tensor) -> np.ndarray:
    data = tensor.array().reshape(-1)
    if tensor.datatype != "BYTES":
        return data
    values = np.empty(len(data), dtype=object)
    for i, value in enumerate(data.tolist()):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"{tensor.name}[{i}]: not UTF-8 text") from None
        values[i] = value
    return values
