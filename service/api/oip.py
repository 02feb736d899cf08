"""The Open Inference Protocol's REST endpoints (KServe V2), beside the native API.

Health, server and model metadata, model readiness and inference, under
``/v2``. Inference is an adapter on the predict pipeline
(``service.inference.pipeline``), as the native API is: the same routing,
admission, limits, decoding queue, batching, monitoring (its out-of-domain
flags come back in the response's ``parameters.ood``), prediction log,
feedback, shadow and metrics. Only the body and response shapes are this
protocol's. Errors leave in the protocol's shape, ``{"error": "..."}``, with
the status ``service.http.errors`` gives the same typed error natively.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable
from importlib import metadata as package_metadata
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from service.codecs.oip.models import ProtocolModel
from service.codecs.oip.request import OipRequest, ParsedInference
from service.codecs.oip.tensors import encode_response
from service.http.errors import NotFound, ServiceError, Unavailable, error_parts
from service.http.request_id import assign_request_id, client_request_id
from service.http.responses import JSONResponse
from service.inference.pipeline import PredictPipeline
from service.models.registry import ModelRegistry
from service.models.repository import shown_version, version_number
from service.models.router import VersionRouter
from service.models.version import ModelVersion
from service.settings import ServiceSettings

log = logging.getLogger("service.oip")

SERVER_NAME = "fastprod"
EXTENSIONS = ["binary_tensor_data", "classification"]
HEADER_LENGTH = "inference-header-content-length"
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
    """``/v2`` on the registry, the router and the predict pipeline the native API uses."""

    def __init__(
        self, settings: ServiceSettings, registry: ModelRegistry, router: VersionRouter, pipeline: PredictPipeline
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.router = router
        self.pipeline = pipeline
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
            return self.router.route(name)
        return self.router.pinned(name, _version_number(name, pinned))

    def model(self, version: ModelVersion) -> ProtocolModel:
        model = self._models.get(version)
        if model is None:
            model = self._models[version] = ProtocolModel(version, self.settings.max_items_per_request)
        return model

    # -- inference -----------------------------------------------------------------------

    async def infer(self, request: Request) -> Response:
        """The protocol's adapter on the predict pipeline: its own body and response shapes, nothing else."""
        headers = request.headers
        pipeline = self.pipeline
        name = request.path_params["name"]
        ctx = pipeline.context(
            name,
            request.path_params.get("version"),
            assign_request_id(request.scope),
            headers.get(self.settings.region_header),
            headers.get(pipeline.sticky_header(name).decode("latin-1")),
            headers.get("content-length"),
            client_request_id(request.scope),
        )
        encoding = ", ".join(headers.getlist("content-encoding"))  # every one given: "gzip" behind "identity" too
        codec = OipRequest(encoding, headers.get(HEADER_LENGTH), self.model)
        answer = await pipeline.run(ctx, codec, request.receive)
        version = answer.version
        parsed: ParsedInference = answer.decoded.request
        head: dict[str, Any] = {
            "model_name": version.name,
            "model_version": str(version.version),
            "id": parsed.request.id if parsed.request.id is not None else ctx.request_id,
        }
        parameters = dict(parsed.request.parameters)
        if parsed.request.id is not None:  # "id" is the client's: the service's own, which feedback names, goes here
            parameters["request_id"] = ctx.request_id
        if any("ood" in p for p in answer.predictions):  # monitoring's out-of-domain flags, one per item
            parameters["ood"] = [p.get("ood") for p in answer.predictions]
        if parameters:
            head["parameters"] = parameters
        body, header_length = encode_response(head, self.model(version).output_tensors(answer.output, parsed.outputs))
        response_headers = {"X-Model-Version": str(version.version)}
        if header_length is None:
            response = Response(body, media_type="application/json", headers=response_headers)
        else:
            response_headers["Inference-Header-Content-Length"] = str(header_length)
            response = Response(body, media_type="application/octet-stream", headers=response_headers)
        # after the answer is sent: the shadow copy never delays or changes it
        response.background = BackgroundTask(_on_the_loop, pipeline.mirror, ctx, codec, answer)
        return response


def _version_number(name: str, text: str) -> int:
    number = version_number(text)
    if number is None:
        raise NotFound(f"model {name!r} has no version {shown_version(text)}; versions are positive integers")
    return number


async def _on_the_loop(call: Callable[..., None], *args: Any) -> None:
    """Run ``call`` on the event loop after the response (Starlette runs a plain function in a thread)."""
    call(*args)
