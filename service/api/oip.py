"""The Open Inference Protocol's REST endpoints (KServe V2), beside the native API.

Health, server and model metadata, model readiness and inference, under
``/v2``. Inference takes the native API's path through the service: the
version comes from the same routing (pinned when the path names a version,
else the rollout's choice), items run through the version's dynamic batcher,
and the same metrics, limits and deadline apply (``PredictEndpoint``'s
shared steps). Errors leave in the protocol's shape, ``{"error": "..."}``,
with the status ``service.http.errors`` gives the same typed error natively.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from importlib import metadata as package_metadata
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from service.http.errors import NotFound, ServiceError, Unavailable, UnsupportedMediaType, error_parts
from service.codecs.oip.models import ProtocolModel
from service.codecs.oip.tensors import encode_response, parse_request, split_body
from service.api.predict import PredictEndpoint, read_body
from service.models.registry import ModelRegistry, ModelVersion
from service.http.request_id import assign_request_id
from service.http.responses import JSONResponse
from service.settings import ServiceSettings

log = logging.getLogger("service.oip")

SERVER_NAME = "fastprod"
EXTENSIONS = ["binary_tensor_data", "classification"]
HEADER_LENGTH = "inference-header-content-length"
_INLINE_JSON_BYTES = 16_384  # a request header this small parses faster than a thread hand-off
Handler = Callable[[Request], Awaitable[Response]]


def protocol_error(exc: Exception) -> Response:
    """Any exception as the protocol's error body; the status is the native API's for the same error."""
    if not isinstance(exc, (ServiceError, HTTPException)):
        log.exception("Open Inference Protocol request failed", exc_info=exc)
    status, _, message, headers = error_parts(exc)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _answers_errors(handler: Handler) -> Handler:
    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            return protocol_error(exc)

    return handle


async def _routing_error(request: Request, exc: Exception) -> Response:
    """An unknown path or method under ``/v2``."""
    return protocol_error(exc)


def _server_version() -> str:
    try:
        return package_metadata.version(SERVER_NAME)
    except package_metadata.PackageNotFoundError:
        return "unknown"


class OpenInferenceAPI:
    """``/v2`` on the registry, settings and predict steps the native API uses."""

    def __init__(
        self, settings: ServiceSettings, registry: ModelRegistry, predict: PredictEndpoint
    ) -> None:  # fmt: skip
        self.settings = settings
        self.registry = registry
        self.predict = predict
        self.server_version = _server_version()
        # Built from each version's manifest once, forgotten with the version.
        self._models: weakref.WeakKeyDictionary[ModelVersion, ProtocolModel] = weakref.WeakKeyDictionary()

    def routes(self) -> list[BaseRoute]:
        """``GET /v2`` and everything under it; unknown paths and methods answer in the protocol's shape too."""
        model = "/models/{name}"
        pinned = "/models/{name}/versions/{version}"
        metadata, ready, infer = (_answers_errors(h) for h in (self.model_metadata, self.model_ready, self.infer))
        under = Starlette(
            routes=[
                Route("/health/live", _answers_errors(self.live), methods=["GET"]),
                Route("/health/ready", _answers_errors(self.ready), methods=["GET"]),
                Route(model, metadata, methods=["GET"]),
                Route(model + "/ready", ready, methods=["GET"]),
                Route(model + "/infer", infer, methods=["POST"]),
                Route(pinned, metadata, methods=["GET"]),
                Route(pinned + "/ready", ready, methods=["GET"]),
                Route(pinned + "/infer", infer, methods=["POST"]),
            ],
            exception_handlers={HTTPException: _routing_error},
        )
        return [Route("/v2", _answers_errors(self.server_metadata), methods=["GET"]), Mount("/v2", app=under)]

    # -- health and metadata -------------------------------------------------------------

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": self.server_version, "extensions": EXTENSIONS})

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        problems = self.registry.problems()
        if problems:
            raise Unavailable("not ready: " + "; ".join(problems))
        return JSONResponse({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        version = self._version(request)
        pinned = request.path_params.get("version")
        numbers = [version.version] if pinned is not None else [v.version for v in self.registry.versions(version.name)]
        return JSONResponse(self.model(version).metadata(numbers))

    async def model_ready(self, request: Request) -> Response:
        version = self._version(request)
        if version.state != "ready":
            raise Unavailable(f"{version.name} v{version.version} is {version.state}")
        return JSONResponse({"name": version.name, "version": str(version.version), "ready": True})

    def _version(self, request: Request) -> ModelVersion:
        """The pinned version, else the one an unpinned request with no routing key would get."""
        name = request.path_params["name"]
        pinned = request.path_params.get("version")
        if pinned is None:
            return self.registry.route(name)
        return self.registry.get(name, _version_number(name, pinned))

    def model(self, version: ModelVersion) -> ProtocolModel:
        model = self._models.get(version)
        if model is None:
            model = self._models[version] = ProtocolModel(version, self.settings.max_items_per_request)
        return model

    # -- inference -----------------------------------------------------------------------

    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["name"]
        pinned = request.path_params.get("version")
        if pinned is not None:
            pinned = str(_version_number(name, pinned))
        request_id = assign_request_id(request.scope)
        headers = request.headers
        client_region = headers.get(self.settings.region_header) or self.settings.default_region or None
        region = self.settings.region_label(client_region)
        key = headers.get(self.predict.sticky_header(name).decode("latin-1")) or request_id
        version = self.predict.choose_version(name, pinned, key, client_region)
        body, header_length = await self.predict.serve_on(
            version, region, started, request_id, self._infer(version, request, request_id, started),
            routed=pinned is None,
        )  # fmt: skip
        response_headers = {"X-Model-Version": str(version.version)}
        if header_length is None:
            return Response(body, media_type="application/json", headers=response_headers)
        response_headers["Inference-Header-Content-Length"] = str(header_length)
        return Response(body, media_type="application/octet-stream", headers=response_headers)

    async def _infer(
        self, version: ModelVersion, request: Request, request_id: str, started: float
    ) -> tuple[bytes, int | None]:
        headers = request.headers
        encoding = headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise UnsupportedMediaType(f"Content-Encoding {encoding} is not accepted; send the body uncompressed")
        body = await read_body(request.receive, headers.get("content-length"), self.settings.max_body_bytes)
        header, binary = split_body(body, headers.get(HEADER_LENGTH))
        loop = asyncio.get_running_loop()
        pool = self.predict.preprocess_pool
        if len(header) <= _INLINE_JSON_BYTES:
            parsed = parse_request(header, binary)
        else:  # a JSON tensor of pixels is megabytes of numbers: parse it off the event loop
            parsed = await loop.run_in_executor(pool, parse_request, header, binary)
        model = self.model(version)
        wanted = model.check_outputs(parsed.outputs, parsed.binary_outputs)
        heavy = model.check(parsed.inputs)
        if heavy:
            arrays = await loop.run_in_executor(pool, model.arrays, parsed.inputs)
        else:
            arrays = model.arrays(parsed.inputs)
        output = await self.predict.infer(version, arrays, started)
        head: dict[str, Any] = {
            "model_name": version.name,
            "model_version": str(version.version),
            "id": parsed.id if parsed.id is not None else request_id,
        }
        if parsed.parameters:
            head["parameters"] = parsed.parameters
        return encode_response(head, model.output_tensors(output, wanted))


def _version_number(name: str, text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise NotFound(f"model {name!r} has no version {text!r}; versions are positive integers")
    return int(text)
