"""Open Inference Protocol tensors on the wire: the inference request and response bodies.

A request body is a JSON object, optionally followed by binary tensor data
(the binary tensor data extension): the ``Inference-Header-Content-Length``
header says where the JSON ends, and each input with a ``binary_data_size``
parameter takes its bytes, in order, from what follows. Binary data is
little-endian, row-major; a ``BYTES`` element is a 4-byte length and the
bytes. Everything here is about the protocol, nothing about models: a
request becomes named numpy arrays, named arrays become a response.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.codecs.strict_json import parse_json
from service.http.errors import BadRequest, InvalidInput

# The protocol's datatypes and their numpy dtypes; BYTES elements are Python bytes (binary) or str (JSON).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_LITTLE_ENDIAN = {name: dtype.newbyteorder("<") for name, dtype in DTYPES.items() if name != "BYTES"}
_LENGTH = struct.Struct("<I")


def datatype_of(dtype: str | np.dtype[Any]) -> str:
    """The protocol datatype of a numpy dtype (``"float32"`` -> ``"FP32"``)."""
    wanted = np.dtype(dtype)
    for name, candidate in DTYPES.items():
        if candidate == wanted:
            return name
    raise ValueError(f"no Open Inference Protocol datatype for numpy dtype {wanted}")


@dataclass
class Tensor:
    """One input of a request: its declared datatype and shape, and its data in that shape."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0  # the classification extension: top-k "score:index:label" strings instead


@dataclass
class InferenceRequest:
    id: str | None
    inputs: dict[str, Tensor]
    outputs: list[RequestedOutput] | None  # None: every output
    binary_outputs: bool  # the request-level ``binary_data_output`` parameter, for outputs not listed
    parameters: dict[str, Any]


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray
    binary: bool


# -- requests ---------------------------------------------------------------------------------


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a request body."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
    if not 0 < length <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length is {length}, the body has {len(body)} bytes")
    view = memoryview(body)
    return body[:length], view[length:]


def parse_request(header: bytes, binary: memoryview) -> InferenceRequest:
    """Validate the inference request; every input comes back as an array of its declared shape."""
    document = parse_json(header)
    if not isinstance(document, dict):
        raise InvalidInput(f"the inference request must be a JSON object, got {type(document).__name__}")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"id: expected a string, got {type(request_id).__name__}")
    parameters = _parameters(document, "parameters")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("inputs: missing or empty; send a list of input tensors")
    inputs: dict[str, Tensor] = {}
    offset = 0
    for i, raw in enumerate(raw_inputs):
        tensor, offset = _tensor(raw, i, binary, offset)
        if tensor.name in inputs:
            raise InvalidInput(f"inputs[{i}]: input {tensor.name!r} is given twice")
        inputs[tensor.name] = tensor
    if offset != len(binary):
        raise InvalidInput(f"the body has {len(binary) - offset} bytes of binary data that no input claims")
    outputs = _requested_outputs(document.get("outputs"))
    binary_outputs = parameters.pop("binary_data_output", False)
    if not isinstance(binary_outputs, bool):
        raise InvalidInput("parameters.binary_data_output: expected true or false")
    return InferenceRequest(request_id, inputs, outputs, binary_outputs, parameters)


def _parameters(document: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{where}: expected an object, got {type(parameters).__name__}")
    return dict(parameters)


def _tensor(raw: Any, i: int, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"inputs[{i}]: expected an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{i}].name: missing; every input needs a name")
    where = f"input {name!r}"
    datatype = raw.get("datatype")
    if datatype not in DTYPES:
        raise InvalidInput(f"{where}: datatype {datatype!r} is not one of {', '.join(DTYPES)}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidInput(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    count = math.prod(shape)
    parameters = _parameters(raw, f"{where}.parameters")
    size = parameters.pop("binary_data_size", None)
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
        if offset + size > len(binary):
            raise InvalidInput(
                f"{where}: binary_data_size is {size} but only {len(binary) - offset} bytes of binary data are left"
            )
        chunk = binary[offset : offset + size]
        if datatype == "BYTES":
            flat = _binary_bytes(chunk, count, where)
        else:
            flat = _binary_numbers(chunk, datatype, count, where)
        offset += size
    else:
        if "data" not in raw:
            raise InvalidInput(f"{where}: no data; send data, or binary_data_size with the binary tensor extension")
        flat = _json_data(raw["data"], datatype, count, where)
    return Tensor(name, datatype, tuple(shape), flat.reshape(shape), parameters), offset


def _binary_numbers(chunk: memoryview, datatype: str, count: int, where: str) -> np.ndarray:
    dtype = _LITTLE_ENDIAN[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise InvalidInput(
            f"{where}: {len(chunk)} bytes of binary data for {count} {datatype} elements "
            f"({count * dtype.itemsize} bytes expected)"
        )
    # The request's own buffer, read in place: no copy of the pixels.
    return np.frombuffer(chunk, dtype=dtype).astype(DTYPES[datatype], copy=False)


def _binary_bytes(chunk: memoryview, count: int, where: str) -> np.ndarray:
    elements = np.empty(count, dtype=object)
    position, n = 0, 0
    while position < len(chunk):
        if position + 4 > len(chunk) or n >= count:
            break
        (length,) = _LENGTH.unpack_from(chunk, position)
        position += 4
        if position + length > len(chunk):
            raise InvalidInput(f"{where}: BYTES element {n} says {length} bytes, only {len(chunk) - position} are left")
        elements[n] = bytes(chunk[position : position + length])
        position += length
        n += 1
    if n != count or position != len(chunk):
        raise InvalidInput(f"{where}: the binary data does not hold exactly {count} length-prefixed BYTES elements")
    return elements


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def _json_data(data: Any, datatype: str, count: int, where: str) -> np.ndarray:
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidInput(f"{where}: {len(flat)} data elements for a shape of {count} elements")
    if datatype == "BYTES":
        elements = np.empty(count, dtype=object)
        for n, value in enumerate(flat):
            if value is not None and not isinstance(value, str):
                raise InvalidInput(f"{where}[{n}]: a BYTES element in JSON is a string, got {type(value).__name__}")
            elements[n] = value
        return elements
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise InvalidInput(f"{where}: BOOL data must be true or false")
        return np.array(flat, dtype=np.bool_)
    dtype = DTYPES[datatype]
    floating = dtype.kind == "f"
    if floating and any(v is None for v in flat):  # null is a missing value; JSON has no NaN
        flat = [math.nan if v is None else v for v in flat]
    try:
        numbers = np.array(flat)
    except ValueError:
        raise InvalidInput(f"{where}: {datatype} data must be numbers") from None
    allowed = "iuf" if floating else "iu"
    if count and numbers.dtype.kind not in allowed:
        what = "numbers" if floating else "integers"
        raise InvalidInput(f"{where}: {datatype} data must be {what}, got {numbers.dtype.kind!r} values")
    if count and not floating:
        info = np.iinfo(dtype)
        if numbers.min() < info.min or numbers.max() > info.max:
            raise InvalidInput(f"{where}: a value is outside the range of {datatype} ({info.min}..{info.max})")
    return numbers.astype(dtype)


def _requested_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput(f"outputs: expected a list, got {type(raw).__name__}")
    outputs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{i}]: expected an object with a name")
        parameters = _parameters(item, f"outputs[{i}].parameters")
        binary = parameters.get("binary_data", False)
        classification = parameters.get("classification", 0)
        if not isinstance(binary, bool):
            raise InvalidInput(f"outputs[{i}].parameters.binary_data: expected true or false")
        if not isinstance(classification, int) or isinstance(classification, bool) or classification < 0:
            raise InvalidInput(f"outputs[{i}].parameters.classification: expected a non-negative integer")
        outputs.append(RequestedOutput(item["name"], binary, classification))
    return outputs


# -- responses --------------------------------------------------------------------------------


def encode_response(head: dict[str, Any], outputs: list[OutputTensor]) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON part when binary outputs follow it."""
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output in outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": list(output.data.shape)}
        if output.binary:
            blob = _binary(output)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif output.datatype == "BYTES":
            entry["data"] = [_text(value) for value in output.data.ravel().tolist()]
        else:
            entry["data"] = output.data.ravel()
        described.append(entry)
    header = orjson.dumps({**head, "outputs": described}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _binary(output: OutputTensor) -> bytes:
    if output.datatype != "BYTES":
        return np.ascontiguousarray(output.data, dtype=_LITTLE_ENDIAN[output.datatype]).tobytes()
    parts = []
    for value in output.data.ravel().tolist():
        data = value.encode() if isinstance(value, str) else bytes(value)
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else bytes(value).decode("utf-8", errors="replace")
