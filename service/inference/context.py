"""One prediction request as the pipeline sees it, whichever protocol brought it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from service.codecs.decoded import Decoded
from service.http.errors import DeadlineExceeded
from service.models.version import ModelVersion


class DecodeLater(Protocol):
    def __call__(self, *, deadline: float) -> Decoded: ...


class RequestCodec(Protocol):
    """A protocol's reading of one request body, for any version of the model (the shadow candidate's too)."""

    def check(self, version: ModelVersion) -> None:
        """Refuse what this version cannot take (415, 422) before admission, before the body is read."""
        ...

    def decode(self, version: ModelVersion, body: bytes) -> Decoded | DecodeLater:
        """The body's arrays now when that costs less than a thread hand-off, else the work for the pool."""
        ...


@dataclass
class RequestContext:
    """What routing, limits, metrics and monitoring need of one request."""

    model: str
    pinned: int | None  # a version number from the path, or None to let routing choose
    request_id: str
    client_region: str | None  # the region as the client named it (routing), None without
    region: str  # the bounded metric label: a configured region or "other"
    key: str  # the sticky rollout key (falls back to the request id)
    content_length: str | None  # the Content-Length header as sent
    started: float  # time.perf_counter() when the request arrived
    deadline: float  # time.perf_counter() by which it must be answered
    client_request_id: str | None = None  # the client's X-Request-Id: logged beside the service's id, never a key

    def remaining_s(self, during: str) -> float:
        """Seconds left before the deadline; DeadlineExceeded (504) naming the step when none are."""
        remaining = self.deadline - time.perf_counter()
        if remaining <= 0:
            raise DeadlineExceeded(f"the request deadline passed during {during}")
        return remaining
