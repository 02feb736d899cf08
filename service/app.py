"""The composition root: every component built with what it needs, in an order a reader can follow, and mounted.

``create_app(settings)`` builds one self-contained app: its own metrics
registry, model registry, decoding pool, monitor, rollout and predict
pipeline. The lifespan loads the model repository on startup and drains
every batcher on shutdown. The predict paths skip Starlette's stack
(``ServingApp.__call__``); every other route is a plain Starlette route.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from bundle.store import open_store
from service.api.models import ModelRoutes
from service.api.monitoring import MonitoringRoutes
from service.api.oip import OpenInferenceAPI
from service.api.operations import OperationRoutes
from service.api.predict import PREDICT_PATH, PredictEndpoint
from service.api.rollouts import RolloutAPI
from service.http.errors import ServiceError, error_response
from service.http.request_id import RequestIdMiddleware
from service.inference.decode_queue import DecodeQueue
from service.inference.pipeline import PredictPipeline
from service.inference.shadow import ShadowRunner
from service.metrics import ServingMetrics
from service.models.catalogue import ModelCatalogue
from service.models.registry import ModelRegistry
from service.models.router import VersionRouter
from service.models.runtime import cpu_quota
from service.monitoring import Monitor
from service.monitoring.batch import BatchColumns
from service.monitoring.log import PredictionLog
from service.monitoring.metrics import MonitorMetrics
from service.rollout.manager import RolloutManager
from service.rollout.metrics import RolloutMetrics
from service.rollout.views import describe_model
from service.settings import ServiceSettings
from service.ui import WebPages

log = logging.getLogger("service.app")

Clock = Callable[[], float]


@dataclass
class Components:
    """What one app is made of (``app.state.components``), for its lifespan and for tests that look inside."""

    settings: ServiceSettings
    metrics: ServingMetrics
    registry: ModelRegistry
    router: VersionRouter
    monitor: Monitor | None
    rollout: RolloutManager | None
    shadow: ShadowRunner | None
    pipeline: PredictPipeline
    catalogue: ModelCatalogue
    decode_pool: ThreadPoolExecutor


def build_monitor(settings: ServiceSettings, metrics: ServingMetrics) -> Monitor | None:
    """Monitoring, with its prediction log: in the shared PostgreSQL when there is one, else a SQLite file."""
    if not settings.monitoring:
        return None
    monitor_metrics = MonitorMetrics(metrics.registry)
    prediction_log = None
    if settings.prediction_log:
        shared = settings.state_url.startswith(("postgresql://", "postgres://"))
        store = open_store(settings.state_url if shared else "", settings.prediction_log_path, settings.store_timeout_s)
        prediction_log = PredictionLog(
            store,
            monitor_metrics.log,
            buffer_size=settings.prediction_log_buffer,
            retention_s=settings.prediction_log_retention_days * 86_400,
            max_bytes=settings.prediction_log_max_bytes,
            max_rows=settings.prediction_log_max_rows,
        )
    return Monitor(settings, monitor_metrics, prediction_log)


def build_rollout(
    settings: ServiceSettings,
    metrics: ServingMetrics,
    registry: ModelRegistry,
    monitor: Monitor | None,
    clock: Clock | None,
) -> RolloutManager | None:
    """Rollouts run when a policy file or a state store is configured, or new versions are held or shadowed (the
    serving version is remembered in the store); the monitor's readings feed the guardrails."""
    configured = settings.rollout is not None or settings.state_url or settings.state_path is not None
    if not configured and settings.new_versions == "latest":
        return None
    store = open_store(settings.state_url, settings.sqlite_state_path(), settings.store_timeout_s)
    readings = monitor.guardrail_readings() if monitor is not None else {}
    return RolloutManager(
        settings,
        RolloutMetrics(metrics.registry),
        store,
        registry.loaded_numbers,
        readings,
        clock or time.time,
        served_models=registry.model_names,
    )


def build(settings: ServiceSettings, clock: Clock | None = None) -> Components:
    """Every component, each given what it needs."""
    metrics = ServingMetrics()
    monitor = build_monitor(settings, metrics)
    registry = ModelRegistry(settings, metrics, BatchColumns if monitor is not None else None)
    rollout = build_rollout(settings, metrics, registry, monitor, clock)
    router = VersionRouter(registry, rollout)
    threads = settings.preprocess_threads or cpu_quota()
    decode_pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")
    decode_queue = DecodeQueue(threads, settings.max_preprocess_backlog, settings.retry_after_s)
    shadow = ShadowRunner(settings, registry, rollout, decode_pool, monitor) if rollout is not None else None
    pipeline = PredictPipeline(settings, router, metrics, decode_queue, decode_pool, monitor, rollout, shadow)
    catalogue = ModelCatalogue(registry, router, partial(describe_model, rollout) if rollout is not None else None)
    return Components(settings, metrics, registry, router, monitor, rollout, shadow, pipeline, catalogue, decode_pool)


def routes(c: Components) -> list[BaseRoute]:
    """Every route but the native predict paths (``ServingApp`` sends those to the predict endpoint first)."""
    return [
        *OperationRoutes(c.registry, c.metrics, c.rollout, c.monitor, c.settings.admin_token).routes(),
        *ModelRoutes(c.settings, c.catalogue).routes(),
        *RolloutAPI(c.settings, c.rollout).routes(),
        *OpenInferenceAPI(c.settings, c.registry, c.router, c.pipeline).routes(),
        *MonitoringRoutes(c.settings, c.registry, c.monitor).routes(),
        *WebPages(c.catalogue).routes(),
    ]


@asynccontextmanager
async def lifespan(c: Components) -> AsyncIterator[None]:
    """Load and warm every model, start the rollout and the monitor; on shutdown drain in the reverse order."""
    await c.registry.start()
    if c.rollout is not None:
        await c.rollout.start()
    if c.monitor is not None:
        c.monitor.start()
        for version in c.registry.all_versions():  # read each reference now, not on a first request
            await asyncio.to_thread(c.monitor.prepare, version)
    # What startup loaded (libraries, sessions, manifests) lives as long as the process: keep it out of
    # the collector's full passes, which otherwise stall the event loop for tens of milliseconds.
    gc.freeze()
    problems = c.registry.problems()
    if problems:
        log.warning("not ready: %s", "; ".join(problems))
    try:
        yield
    finally:
        log.info("shutting down: draining every batcher")
        if c.shadow is not None:
            await c.shadow.drain()
        if c.rollout is not None:
            await c.rollout.stop()
        await c.registry.stop()
        if c.monitor is not None:
            await asyncio.to_thread(c.monitor.stop)
        c.decode_pool.shutdown(wait=True)


class ServingApp(Starlette):
    """Starlette, with the predict paths taken straight to the predict endpoint (see ``service.api.predict``)."""

    def __init__(self, components: Components) -> None:
        super().__init__(
            routes=routes(components),
            middleware=[Middleware(RequestIdMiddleware)],
            exception_handlers={ServiceError: error_response, HTTPException: error_response, Exception: error_response},
            lifespan=lambda app: lifespan(components),
        )
        self.state.components = components
        self._predict = PredictEndpoint(components.pipeline, components.settings.region_header)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match = PREDICT_PATH.fullmatch(scope["path"])
            if match is not None:
                scope["app"] = self
                await self._predict(scope, receive, send, match)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: ServiceSettings | None = None, clock: Clock | None = None) -> ServingApp:
    """A ready-to-run ASGI app serving ``settings.models``; ``clock`` (epoch seconds) drives the rollout plan."""
    return ServingApp(build(settings or ServiceSettings(), clock))
