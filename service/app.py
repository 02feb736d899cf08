"""The HTTP API (Starlette): predict, model listing, health, readiness, metrics, OpenAPI.

``create_app(settings)`` builds one self-contained app: its own registry,
metrics registry and preprocessing thread pool; the lifespan loads the model
repository on startup and drains every batcher on shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.errors import (
    BadRequest,
    DeadlineExceeded,
    InferenceFailed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    error_body,
    error_response,
    outcome_of,
)
from service.inputs import check_media_type, media_type_of
from service.metrics import UNKNOWN_MODEL, ServingMetrics
from service.openapi import openapi_document
from service.registry import ModelRegistry, ModelVersion
from service.request_id import RequestIdMiddleware, request_id_of
from service.runtime import cpu_quota
from service.settings import ServiceSettings

log = logging.getLogger("service.app")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes by Content-Length and by counting."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise PayloadTooLarge(f"the body is {size} bytes, the limit is {limit}")
    # The ASGI messages themselves, not request.stream(): a small body is one message, and the
    # stream's async generator costs more than reading it.
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:  # a chunked or lying client: count what actually arrives
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ServingAPI:
    """The endpoints, holding the registry, metrics and thread pool they share."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = ServingMetrics()
        self.registry = ModelRegistry(settings, self.metrics)
        self.preprocess_pool: ThreadPoolExecutor | None = None

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        threads = self.settings.preprocess_threads or cpu_quota()
        self.preprocess_pool = ThreadPoolExecutor(threads, thread_name_prefix="preprocess")
        await self.registry.start()
        # What startup loaded (libraries, sessions, manifests) lives as long as the process: keep it out of
        # the collector's full passes, which otherwise stall the event loop for tens of milliseconds.
        gc.freeze()
        problems = self.registry.problems()
        if problems:
            log.warning("not ready: %s", "; ".join(problems))
        try:
            yield
        finally:
            log.info("shutting down: draining every batcher")
            await self.registry.stop()
            self.preprocess_pool.shutdown(wait=True)

    # -- predict -------------------------------------------------------------------------

    async def predict(self, request: Request) -> Response:
        started = time.perf_counter()
        params = request.path_params
        name: str = params["name"]
        headers = request.headers
        region = self.settings.region_label(headers.get("x-region"))
        request_id = request_id_of(request.scope)
        try:
            if "version" in params:
                version = self.registry.get(name, params["version"])
            else:
                version = self.registry.route(name, headers.get("x-request-key") or request_id, region)
        except ServiceError as exc:
            # Only names the registry knows become label values; anything else counts as "unknown".
            self.metrics.count_unrouted(name if self.registry.is_known(name) else UNKNOWN_MODEL, region, exc.outcome)
            raise
        version.acquire()
        try:
            predictions = await self._predict(version, request, started)
        except Exception as exc:
            if not isinstance(exc, (ServiceError, HTTPException)):
                log.exception("prediction failed for %s v%d (request %s)", name, version.version, request_id)
                exc = InferenceFailed(f"prediction failed: {type(exc).__name__}")
            version.metrics.request(region, outcome_of(exc), time.perf_counter() - started)
            raise exc from None
        finally:
            version.release()
        version.metrics.request(region, "ok", time.perf_counter() - started)
        body = {"model": name, "version": version.version, "request_id": request_id, "predictions": predictions}
        return JSONResponse(body, headers={"X-Model-Version": str(version.version)})

    async def _predict(self, version: ModelVersion, request: Request, started: float) -> list[dict[str, Any]]:
        content_type = request.headers.get("content-type", "")
        media_type = media_type_of(content_type)
        check_media_type(version.inputs, media_type)
        body = await read_body(request, self.settings.max_body_bytes)
        decoder = version.inputs
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

    # -- models --------------------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        return JSONResponse({"models": [self._summary(name) for name in self.registry.model_names()]})

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["name"]
        if not self.registry.is_known(name):
            raise NotFound(f"model {name!r} is not served; served models: {self.registry.model_names()}")
        described = self._summary(name)
        versions = self.registry.versions(name)
        if versions:
            serving = described["serving_version"]
            current = next((v for v in versions if v.version == serving), versions[-1])
            described.update(current.encoder.describe())
            described["input"] = current.inputs.schema()
        described["versions"] = [v.describe() for v in versions]
        described["refused"] = [
            {"version": number, "reason": r.reason, "message": r.message}
            for number, r in self.registry.refusals(name).items()
        ]
        described["rollout"] = None  # filled in by the rollout policy when one is configured
        return JSONResponse(described)

    def _summary(self, name: str) -> dict[str, Any]:
        versions = self.registry.versions(name)
        try:
            serving: int | None = self.registry.route(name).version
        except ServiceError:
            serving = None
        latest = versions[-1].manifest if versions else None
        return {
            "name": name,
            "versions": [v.version for v in versions],
            "task": latest.task if latest else None,
            "input_kind": latest.input_kind if latest else None,
            "state": "serving" if serving is not None else "unavailable",
            "serving_version": serving,
        }

    # -- operations ----------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        problems = self.registry.problems()
        if problems:
            return JSONResponse(error_body("not_ready", "; ".join(problems)), status_code=503)
        loaded = {v.name: v.version for v in self.registry.all_versions()}
        return JSONResponse({"status": "ready", "models": loaded})

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{name}", self.get_model, methods=["GET"]),
            Route("/v1/models/{name}/predict", self.predict, methods=["POST"]),
            Route("/v1/models/{name}/versions/{version:int}/predict", self.predict, methods=["POST"]),
        ]


def create_app(settings: ServiceSettings | None = None) -> Starlette:
    """A ready-to-run ASGI app serving ``settings.models``."""
    api = ServingAPI(settings or ServiceSettings())
    app = Starlette(
        routes=api.routes(),
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers={ServiceError: error_response, HTTPException: error_response, Exception: error_response},
        lifespan=api.lifespan,
    )
    app.state.api = api
    return app
