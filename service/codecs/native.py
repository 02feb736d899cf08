"""The native API's request codec: a body in any of the model's media types, read by its version's decoder."""

from __future__ import annotations

from functools import partial

from service.codecs.decoded import Decoded
from service.codecs.media import check_content_encoding, check_media_type, media_type_of
from service.models.version import ModelVersion


class NativeRequest:
    """One native predict request's body, as a version's decoder (``ImageInputs``, ``TabularInputs``) reads it."""

    def __init__(self, content_type: str, content_encoding: str = "") -> None:
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.media_type = media_type_of(content_type)

    def check(self, version: ModelVersion) -> None:
        check_content_encoding(self.content_encoding)
        check_media_type(version.inputs, self.media_type)

    def decode(self, version: ModelVersion, body: bytes) -> Decoded | partial[Decoded]:
        decoder = version.inputs
        decoded = decoder.decode_in_place(self.media_type, self.content_type, body)
        if decoded is not None:
            return decoded
        return partial(decoder.decode, self.media_type, self.content_type, body)
