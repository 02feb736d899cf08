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
from service.http.errors import BadRequest, InvalidInput, PayloadTooLarge

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
MAX_RANK = 8  # dimensions of one tensor (the models served here take at most 4)
MAX_TENSORS = 64  # inputs one request may send, and outputs it may ask for (a model has a handful of each)


def datatype_of(dtype: str | np.dtype[Any]) -> str:
    """The protocol datatype of a numpy dtype (``"float32"`` -> ``"FP32"``)."""
    wanted = np.dtype(dtype)
    for name, candidate in DTYPES.items():
        if candidate == wanted:
            return name
    raise ValueError(f"no Open Inference Protocol datatype for numpy dtype {wanted}")


@dataclass
class Tensor:
    """One input of a request: its declared datatype and shape, and where its data is (not yet read).

    Everything about a tensor that costs memory or time in proportion to its size waits for
    :meth:`array`, so the declared shape can be judged (by the protocol here, by the model's
    limits in ``service.codecs.oip.models``) before anything is allocated."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    count: int  # elements the shape declares
    source: Any  # the JSON ``data`` as parsed, or the input's bytes of binary data (a memoryview)
    binary: bool
    parameters: dict[str, Any] = field(default_factory=dict)
    _array: np.ndarray | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return f"input {self.name[:64]!r}"

    def array(self) -> np.ndarray:
        """The data in the declared shape; InvalidInput when it does not hold exactly that many elements."""
        if self._array is None:
            if not self.binary:
                flat = _json_data(self.source, self.datatype, self.count, len(self.shape), self.where)
            elif self.datatype == "BYTES":
                flat = _binary_bytes(self.source, self.count, self.where)
            else:  # its size was checked against the shape: the request's own buffer, read in place
                flat = np.frombuffer(self.source, dtype=_LITTLE_ENDIAN[self.datatype]).astype(
                    DTYPES[self.datatype], copy=False
                )
            self._array = flat.reshape(self.shape)
        return self._array


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
    text = header_length.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise BadRequest(f"Inference-Header-Content-Length {header_length[:40]!r} is not a number")
    length = int(text)
    if not 0 < length <= len(body):
        raise BadRequest(f"Inference-Header-Content-Length is {length}, the body has {len(body)} bytes")
    view = memoryview(body)
    return body[:length], view[length:]


def parse_request(header: bytes, binary: memoryview) -> InferenceRequest:
    """Validate the inference request's structure; the inputs' data is read later, by ``Tensor.array``.

    Every declared shape is checked here against what the body could carry (an element takes at
    least a byte), so no count from a client reaches an allocation before it is judged."""
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
    if len(raw_inputs) > MAX_TENSORS:
        raise PayloadTooLarge(f"inputs: {len(raw_inputs)} tensors in one request, the limit is {MAX_TENSORS}")
    inputs: dict[str, Tensor] = {}
    offset = 0
    for i, raw in enumerate(raw_inputs):
        tensor, offset = _tensor(raw, i, len(header), binary, offset)
        if tensor.name in inputs:
            raise InvalidInput(f"inputs[{i}]: input {tensor.name[:64]!r} is given twice")
        inputs[tensor.name] = tensor
    if offset != len(binary):
        raise InvalidInput(f"the body has {len(binary) - offset} bytes of binary data that no input claims")
    outputs = _requested_outputs(document.get("outputs"))
    binary_outputs = parameters.pop("binary_data_output", False)
    if not isinstance(binary_outputs, bool):
        raise InvalidInput("parameters.binary_data_output: expected true or false")
    try:  # the response echoes them: what it could not encode is refused now, not answered with a 500 later
        orjson.dumps(parameters)
    except orjson.JSONEncodeError as exc:
        raise InvalidInput(f"parameters: cannot be sent back ({exc}); integers must fit in 64 bits") from None
    return InferenceRequest(request_id, inputs, outputs, binary_outputs, parameters)


def _parameters(document: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"{where}: expected an object, got {type(parameters).__name__}")
    return dict(parameters)


def _tensor(raw: Any, i: int, json_bytes: int, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"inputs[{i}]: expected an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{i}].name: missing; every input needs a name")
    where = f"input {name[:64]!r}"
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise InvalidInput(f"{where}: datatype {str(datatype)[:40]!r} is not one of {', '.join(DTYPES)}")
    parameters = _parameters(raw, f"{where}.parameters")
    size = parameters.pop("binary_data_size", None)
    # Every element takes at least a byte of what carries it: its JSON, or the binary data left.
    carrier = "binary data" if size is not None else "JSON"
    shape = _shape(raw.get("shape"), len(binary) - offset if size is not None else json_bytes, carrier, where)
    count = math.prod(shape)
    if size is None:
        if "data" not in raw:
            raise InvalidInput(f"{where}: no data; send data, or binary_data_size with the binary tensor extension")
        return Tensor(name, datatype, shape, count, raw["data"], False, parameters), offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer, got {str(size)[:40]}")
    if offset + size > len(binary):
        raise InvalidInput(
            f"{where}: binary_data_size is {size} but only {len(binary) - offset} bytes of binary data are left"
        )
    least = count * (_LENGTH.size if datatype == "BYTES" else _LITTLE_ENDIAN[datatype].itemsize)
    if datatype == "BYTES" and size < least or datatype != "BYTES" and size != least:
        raise InvalidInput(
            f"{where}: {size} bytes of binary data for {count} {datatype} elements "
            f"({'at least ' if datatype == 'BYTES' else ''}{least} bytes expected)"
        )
    return Tensor(name, datatype, shape, count, binary[offset : offset + size], True, parameters), offset + size


def _shape(shape: Any, capacity: int, carrier: str, where: str) -> tuple[int, ...]:
    """A declared shape, judged before anything is allocated: at most ``MAX_RANK`` dimensions, and no
    dimension nor element count beyond ``capacity``, the bytes that carry its data (each element takes one).

    A dimension is judged alone too: ``[0, 2**63]`` holds no elements, but no array has such a shape."""
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise InvalidInput(f"{where}: shape must be a list of at most {MAX_RANK} non-negative integers")
    count = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise InvalidInput(f"{where}: shape must be a list of non-negative integers, got {str(shape)[:80]}")
        count *= d  # each factor is at most ``capacity``, so the product is judged before it grows large
        if d > capacity or count > capacity:
            raise InvalidInput(
                f"{where}: shape {str(shape)[:80]} declares more elements than {capacity} bytes of {carrier} can carry"
            )
    return tuple(shape)


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


def _flatten(data: Any, count: int, rank: int, where: str) -> list[Any]:
    """The elements of ``data``, a flat list or lists nested at most ``rank`` deep, in row-major order.

    Stops at the first element beyond ``count``, so a list longer than its shape costs no more than
    the shape; innermost lists are taken whole (``list.extend``), the way JSON pixels come."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    pending: list[tuple[list[Any], int]] = [(data, 1)]
    while pending:
        items, depth = pending.pop()
        if not items or not isinstance(items[0], list):
            if len(flat) + len(items) > count:
                raise InvalidInput(f"{where}: more data elements than the {count} its shape holds")
            flat.extend(items)
            continue
        if depth >= max(rank, 1):
            raise InvalidInput(f"{where}: data is nested deeper than its shape's {rank} dimensions")
        pending.extend((item if isinstance(item, list) else [item], depth + 1) for item in reversed(items))
    return flat


def _json_data(data: Any, datatype: str, count: int, rank: int, where: str) -> np.ndarray:
    flat = _flatten(data, count, rank, where)
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
    except (ValueError, OverflowError):
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
    if len(raw) > MAX_TENSORS:
        raise PayloadTooLarge(f"outputs: {len(raw)} outputs requested, the limit is {MAX_TENSORS}")
    outputs: list[RequestedOutput] = []
    named: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{i}]: expected an object with a name")
        name = item["name"]
        if name in named:  # each copy would be sent in full: a small request for a huge answer
            raise InvalidInput(f"outputs[{i}]: output {name[:64]!r} is requested twice")
        named.add(name)
        parameters = _parameters(item, f"outputs[{i}].parameters")
        binary = parameters.get("binary_data", False)
        classification = parameters.get("classification", 0)
        if not isinstance(binary, bool):
            raise InvalidInput(f"outputs[{i}].parameters.binary_data: expected true or false")
        if not isinstance(classification, int) or isinstance(classification, bool) or classification < 0:
            raise InvalidInput(f"outputs[{i}].parameters.classification: expected a non-negative integer")
        outputs.append(RequestedOutput(name, binary, classification))
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
