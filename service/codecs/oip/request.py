"""The Open Inference Protocol's request codec: a V2 inference body, read for one version of the model.

The JSON header is parsed (off the event loop when large), the inputs are
checked against the version's metadata (names, datatypes, shapes, the item
limit), and the tensors become the arrays the graph takes through the same
decoders as the native API (``service.codecs.oip.models``). What the request
asked for besides its inputs (its id, the outputs wanted, its parameters)
travels with the arrays, so the response can be built from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from service.codecs.decoded import Decoded, RawInputs
from service.codecs.media import check_content_encoding
from service.codecs.oip.models import ProtocolModel
from service.codecs.oip.tensors import InferenceRequest, RequestedOutput, parse_request, split_body
from service.models.version import ModelVersion

INLINE_JSON_BYTES = 16_384  # a request header this small parses faster than a thread hand-off


@dataclass
class ParsedInference:
    """What a V2 request asked for besides its input arrays."""

    request: InferenceRequest
    outputs: list[RequestedOutput]


class OipRequest:
    """One V2 inference request's body; ``model_of`` gives a version's protocol view (cached by the adapter)."""

    def __init__(
        self, content_encoding: str, header_length: str | None, model_of: Callable[[ModelVersion], ProtocolModel]
    ) -> None:
        self.content_encoding = content_encoding
        self.header_length = header_length
        self.model_of = model_of

    def check(self, version: ModelVersion) -> None:
        check_content_encoding(self.content_encoding)

    def decode(self, version: ModelVersion, body: bytes) -> Decoded | Callable[..., Decoded]:
        header, binary = split_body(body, self.header_length)
        model = self.model_of(version)
        if len(header) > INLINE_JSON_BYTES:  # a JSON tensor of pixels is megabytes of numbers: all of it in the pool
            return lambda deadline=None: _decoded(model, *_checked(model, parse_request(header, binary)))
        parsed, outputs, heavy = _checked(model, parse_request(header, binary))
        if heavy:  # images or a table to decode
            return lambda deadline=None: _decoded(model, parsed, outputs, heavy)
        return _decoded(model, parsed, outputs, heavy)


def _checked(model: ProtocolModel, parsed: InferenceRequest) -> tuple[InferenceRequest, list[RequestedOutput], bool]:
    """Outputs, then inputs, checked against the version before anything runs; whether decoding is heavy."""
    outputs = model.check_outputs(parsed.outputs, parsed.binary_outputs)
    return parsed, outputs, model.check(parsed.inputs)


def _decoded(model: ProtocolModel, parsed: InferenceRequest, outputs: list[RequestedOutput], heavy: bool) -> Decoded:
    raw = RawInputs()
    arrays = model.arrays(parsed.inputs, raw)
    return Decoded(arrays, raw, ParsedInference(parsed, outputs))
