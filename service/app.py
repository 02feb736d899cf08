"""The HTTP API (Starlette): model listing, health, readiness, metrics, OpenAPI, and the predict routes.

``create_app(settings)`` builds one self-contained app: its own registry,
metrics registry and preprocessing thread pool; the lifespan loads the model
repository on startup and drains every batcher on shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
import time
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from service.http.errors import NotFound, ServiceError, error_body, error_response, public_message
from service.metrics import ServingMetrics
from service.api.oip import OpenInferenceAPI
from service.monitoring import Monitor
from service.monitoring.batch import BatchColumns
from service.api.monitoring import MonitoringRoutes
from service.api.openapi import ModelContract, openapi_document
from service.api.predict import PREDICT_PATH, PredictEndpoint
from service.models.registry import ModelRegistry
from service.http.request_id import RequestIdMiddleware
from service.http.responses import JSONResponse
from service.api.rollouts import RolloutAPI
from service.rollout.manager import RolloutManager
from service.models.runtime import cpu_quota
from service.inference.shadow import ShadowRunner
from service.settings import ServiceSettings
from service.ui import WebPages

log = logging.getLogger("service.app")


class ServingAPI:
    """The endpoints, holding the registry, metrics and thread pool they share."""

    def __init__(self, settings: ServiceSettings, clock: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.metrics = ServingMetrics()
        self.registry = ModelRegistry(settings, self.metrics)
        self.monitor = Monitor(settings, self.metrics) if settings.monitoring else None
        if self.monitor is not None:
            self.registry.batch_columns = BatchColumns.for_version
            self.registry.extend_graph = BatchColumns.graph
        self.monitoring = MonitoringRoutes(settings, self.registry, self.monitor)
        self.predict = PredictEndpoint(settings, self.registry, self.metrics, self.monitor)
        self.oip = OpenInferenceAPI(settings, self.registry, self.predict)
        self.preprocess_pool: ThreadPoolExecutor | None = None
        self.rollout = rollout_manager(settings, self.metrics, clock)
        self.shadow = ShadowRunner(settings, self.registry, self.rollout) if self.rollout else None
        self.registry.rollout = self.predict.rollout = self.rollout
        if self.rollout is not None and self.monitor is not None:
            for reading, source in self.monitor.guardrail_readings().items():
                self.rollout.add_reading_source(reading, source)
        self.predict.shadow = self.shadow
        self.rollout_api = RolloutAPI(settings, self.rollout)

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        threads = self.settings.preprocess_threads or cpu_quota()
        self.preprocess_pool = ThreadPoolExecutor(threads, thread_name_prefix="preprocess")
        self.predict.preprocess_pool = self.preprocess_pool
        await self.registry.start()
        if self.rollout is not None:
            self.shadow.preprocess_pool = self.preprocess_pool  # type: ignore[union-attr]
            await self.rollout.start(lambda name: [v.version for v in self.registry.versions(name)])
        if self.monitor is not None:
            self.monitor.start()
            for version in self.registry.all_versions():  # read each reference now, not on a first request
                await asyncio.to_thread(self.monitor.prepare, version)
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
            if self.rollout is not None:
                await self.shadow.drain()  # type: ignore[union-attr]
                await self.rollout.stop()
            await self.registry.stop()
            if self.monitor is not None:
                await asyncio.to_thread(self.monitor.stop)
            self.preprocess_pool.shutdown(wait=True)

    # -- models --------------------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        return JSONResponse({"models": self.model_list()})

    async def get_model(self, request: Request) -> Response:
        return JSONResponse(self.model_document(request.path_params["name"]))

    def model_list(self) -> list[dict[str, Any]]:
        """The body of ``GET /v1/models`` (the web pages render the same data)."""
        return [self._summary(name) for name in self.registry.model_names()]

    def model_document(self, name: str) -> dict[str, Any]:
        """The body of ``GET /v1/models/{name}``; NotFound for a model that is not served."""
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
            {"version": number, "reason": r.reason, "message": public_message(r.message)}
            for number, r in self.registry.refusals(name).items()
        ]
        described["rollout"] = self.rollout.describe_model(name) if self.rollout is not None else None
        return described

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
        ready: dict[str, Any] = {"status": "ready", "models": loaded}
        if self.rollout is not None:  # an unreachable store never stops predictions; it is only reported
            ready["state_store"] = self.rollout.store_status()
        return JSONResponse(ready)

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(models=self.model_contracts()))

    def model_contracts(self) -> list[ModelContract]:
        """What the OpenAPI document states per served model (its newest version's inputs)."""
        contracts = []
        for name in self.registry.model_names():
            versions = self.registry.versions(name)
            if versions:
                contracts.append(ModelContract(
                    name, [v.version for v in versions], versions[-1].inputs.schema(),
                    self.settings.max_items_per_request, self.settings.max_columns,
                    self.settings.ignore_unknown_columns,
                ))  # fmt: skip
        return contracts

    def routes(self) -> list[BaseRoute]:
        # The predict paths never reach these routes: ServingApp sends them to the predict endpoint first.
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{name}", self.get_model, methods=["GET"]),
            *self.rollout_api.routes(),
            *self.oip.routes(),
            Route("/v1/models/{name}/drift", self.monitoring.drift, methods=["GET"]),
            Route("/v1/feedback", self.monitoring.feedback, methods=["POST"]),
            Route("/v1/predictions", self.monitoring.predictions, methods=["GET"]),
            *WebPages(self).routes(),
        ]


class ServingApp(Starlette):
    """Starlette, with the predict paths taken straight to the predict endpoint (see ``service.api.predict``)."""

    def __init__(self, api: ServingAPI) -> None:
        super().__init__(
            routes=api.routes(),
            middleware=[Middleware(RequestIdMiddleware)],
            exception_handlers={ServiceError: error_response, HTTPException: error_response, Exception: error_response},
            lifespan=api.lifespan,
        )
        self.state.api = api
        self._predict = api.predict

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match = PREDICT_PATH.fullmatch(scope["path"])
            if match is not None:
                scope["app"] = self
                await self._predict(scope, receive, send, match)
                return
        await super().__call__(scope, receive, send)


def rollout_manager(
    settings: ServiceSettings, metrics: ServingMetrics, clock: Callable[[], float] | None
) -> RolloutManager | None:
    """Rollouts run when a policy file or a state store is configured."""
    if settings.rollout is None and not settings.state_url and settings.state_path is None:
        return None
    return RolloutManager(settings, metrics.registry, clock or time.time)


def create_app(settings: ServiceSettings | None = None, clock: Callable[[], float] | None = None) -> ServingApp:
    """A ready-to-run ASGI app serving ``settings.models``; ``clock`` (epoch seconds) drives the rollout plan."""
    return ServingApp(ServingAPI(settings or ServiceSettings(), clock))
