"""``GET /healthz``, ``GET /readyz`` and ``GET /metrics``: what an orchestrator and a scraper ask."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.rollouts import shows_internals
from service.http.errors import error_body
from service.http.responses import JSONResponse
from service.metrics import ServingMetrics
from service.models.registry import ModelRegistry
from service.monitoring import Monitor
from service.parallel.group import ProcessGroup
from service.rollout.manager import RolloutManager


class OperationRoutes:
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: ServingMetrics,
        rollout: RolloutManager | None,
        monitor: Monitor | None = None,
        admin_token: SecretStr | None = None,
        group: ProcessGroup | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.rollout = rollout
        self.monitor = monitor
        self.admin_token = admin_token
        self.group = group  # the worker processes this one serves beside (service.parallel), if any

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
        ]

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Ready once every model is loaded (and, with several workers, every worker and the control process has
        started); a failing state store or a refused stored policy is reported, never
        a reason to leave the load balancer (predictions do not need the store). Where the store is and its error
        only with the admin token."""
        problems = self.registry.problems() + (self.group.problems() if self.group is not None else [])
        if problems:
            return JSONResponse(error_body("not_ready", "; ".join(problems)), status_code=503)
        loaded = {v.name: v.version for v in self.registry.all_versions()}
        ready: dict[str, Any] = {"status": "ready", "models": loaded}
        if self.rollout is not None:  # an unreachable store never stops predictions; it is only reported
            internals = shows_internals(self.admin_token, request.headers.get("authorization", ""))
            ready["state_store"] = self.rollout.store_status(internals)
            ready["rollout_problems"] = self.rollout.problems()
        log_status = self.monitor.log_status() if self.monitor is not None else None
        if log_status is not None:  # a failing log never stops predictions either
            ready["prediction_log"] = log_status
        return JSONResponse(ready)

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)
