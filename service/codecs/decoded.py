"""What a decoder makes of a request body: the model's input arrays, and the raw inputs monitoring looks at."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.http.errors import DeadlineExceeded


@dataclass
class RawInputs:
    """The request's inputs as sent, for monitoring: each image's encoded bytes and its (width, height) as its
    header states it, or the table's raw columns (one object array each) and, for a JSON body, the rows."""

    images: list[bytes] | None = None
    sizes: list[tuple[int, int]] | None = None
    columns: Mapping[str, np.ndarray] | None = None
    rows: list[Any] | None = None


@dataclass
class Decoded:
    """One array per ONNX input, all with the same number of rows (items), and where they came from."""

    arrays: list[np.ndarray]
    raw: RawInputs = field(default_factory=RawInputs)
    request: Any = None  # what the protocol parsed besides the arrays (a V2 request's id, outputs, parameters)

    @property
    def items(self) -> int:
        return int(self.arrays[0].shape[0])


class InputDecoder(Protocol):
    """A version's native request codec (``service.codecs.images``, ``service.codecs.tables``)."""

    media_types: tuple[str, ...]

    def decode(self, media_type: str, content_type: str, body: bytes, deadline: float | None = None) -> Decoded:
        """The body's arrays; past ``deadline`` (``time.perf_counter()`` seconds) remaining work is skipped (504)."""
        ...

    def decode_in_place(self, media_type: str, content_type: str, body: bytes) -> Decoded | None:
        """Decode now when that costs less than a thread hand-off, else None (the caller uses the pool)."""
        ...

    def schema(self) -> dict[str, Any]: ...


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.perf_counter() >= deadline:
        raise DeadlineExceeded("the request deadline passed before its preprocessing finished")
