"""The predict routes, as a plain ASGI endpoint.

Predict is nearly all of the traffic, and for a small model Starlette's
per-request objects (``Request``, its header mapping, ``JSONResponse``) cost as
much as the model itself. This endpoint reads the few headers it needs
straight from the ASGI scope, the body from ``receive``, and sends the JSON
it renders. It still sits behind Starlette's router and middleware: what it
raises goes through the app's one exception handler (``service.errors``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Any

from starlette.types import Receive, Scope, Send

from service.errors import (
    BadRequest,
    DeadlineExceeded,
    InferenceFailed,
    PayloadTooLarge,
    ServiceError,
    outcome_of,
)
from service.inputs import check_media_type, media_type_of
from service.metrics import UNKNOWN_MODEL, ServingMetrics
from service.registry import ModelRegistry, ModelVersion
from service.request_id import request_id_of
from service.responses import send_json
from service.settings import ServiceSettings

log = logging.getLogger("service.predict")

_HEADERS = (b"content-type", b"content-length", b"x-region", b"x-request-key")


class PredictEndpoint:
    """``POST /v1/models/{name}/predict`` and ``.../versions/{version}/predict``."""

    def __init__(self, settings: ServiceSettings, registry: ModelRegistry, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.preprocess_pool: Executor | None = None  # set by the app's lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        params = scope["path_params"]
        name: str = params["name"]
        headers = {key: value.decode("latin-1") for key, value in scope["headers"] if key in _HEADERS}
        region = self.settings.region_label(headers.get(b"x-region"))
        request_id = request_id_of(scope)
        try:
            if "version" in params:
                version = self.registry.get(name, params["version"])
            else:
                version = self.registry.route(name, headers.get(b"x-request-key") or request_id, region)
        except ServiceError as exc:
            # Only names the registry knows become label values; anything else counts as "unknown".
            self.metrics.count_unrouted(name if self.registry.is_known(name) else UNKNOWN_MODEL, region, exc.outcome)
            raise
        version.acquire()
        try:
            predictions = await self._predict(version, headers, receive, started)
        except Exception as exc:
            if not isinstance(exc, ServiceError):
                log.exception("prediction failed for %s v%d (request %s)", name, version.version, request_id)
                exc = InferenceFailed(f"prediction failed: {type(exc).__name__}")
            version.metrics.request(region, outcome_of(exc), time.perf_counter() - started)
            raise exc from None
        finally:
            version.release()
        version.metrics.request(region, "ok", time.perf_counter() - started)
        body = {"model": name, "version": version.version, "request_id": request_id, "predictions": predictions}
        await send_json(send, body, version.response_headers)

    async def _predict(
        self, version: ModelVersion, headers: dict[bytes, str], receive: Receive, started: float
    ) -> list[dict[str, Any]]:
        content_type = headers.get(b"content-type", "")
        media_type = media_type_of(content_type)
        decoder = version.inputs
        check_media_type(decoder, media_type)
        body = await read_body(receive, headers.get(b"content-length"), self.settings.max_body_bytes)
        # A thumbnail decodes faster than a thread hand-off takes; everything else (a big JPEG, a CSV)
        # is parsed and decoded in the pool so it cannot stall other requests.
        arrays = decoder.decode_in_place(media_type, content_type, body)
        if arrays is None:
            loop = asyncio.get_running_loop()
            arrays = await loop.run_in_executor(self.preprocess_pool, decoder.decode, media_type, content_type, body)
        remaining = self.settings.request_timeout_s - (time.perf_counter() - started)
        if remaining <= 0:
            raise DeadlineExceeded(f"the {self.settings.request_timeout_s:g} s deadline passed during preprocessing")
        output = await version.batcher.submit(arrays, remaining)
        return version.encoder.encode(output)


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes by Content-Length and by counting."""
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise PayloadTooLarge(f"the body is {size} bytes, the limit is {limit}")
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:  # a chunked or lying client: count what actually arrives
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
