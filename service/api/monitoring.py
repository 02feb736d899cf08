"""``GET /v1/models/{name}/drift``, ``POST /v1/feedback`` and ``GET /v1/predictions`` (the review queue).

Feedback moves live accuracy, which a rollout guardrail judges: it takes a credential (the feedback, reviewer
or admin token; see ``service.http.auth``), a JSON body of at most ``feedback_max_body_bytes`` read before it
is parsed, and only ``application/json`` (a cross-origin page can send ``text/plain`` without asking).
"""

from __future__ import annotations

import asyncio
import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bundle.prediction_log import FEEDBACK_SOURCES
from bundle.store import StoreUnavailable
from service.http.auth import require_feedback, require_reviewer, reviewer
from service.http.body import read_json
from service.http.errors import InvalidInput, NotFound, Unavailable, UnsupportedMediaType
from service.http.responses import JSONResponse
from service.models.registry import ModelRegistry
from service.models.repository import shown_version, version_number
from service.monitoring.monitor import Monitor
from service.monitoring.review import REASONS, Cursor, QueueFilter, review_queue
from service.monitoring.state import ALL_REGIONS
from service.settings import ServiceSettings


class MonitoringRoutes:
    def __init__(self, settings: ServiceSettings, registry: ModelRegistry, monitor: Monitor | None) -> None:
        self.settings = settings
        self.registry = registry
        self.monitor = monitor

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models/{name}/drift", self.drift, methods=["GET"]),
            Route("/v1/feedback", self.feedback, methods=["POST"]),
            Route("/v1/predictions", self.predictions, methods=["GET"]),
        ]

    def _monitor(self) -> Monitor:
        if self.monitor is None:
            raise Unavailable("monitoring is off (SERVING_MONITORING=false)")
        return self.monitor

    async def drift(self, request: Request) -> Response:
        monitor = self._monitor()
        name = request.path_params["name"]
        if not self.registry.is_known(name):
            raise NotFound(f"model {name!r} is not served; served models: {self.registry.model_names()}")
        versions = self.registry.versions(name)
        wanted = request.query_params.get("version")
        if wanted is not None:
            number = version_number(wanted)
            if number is None:
                raise InvalidInput(f"version: expected a positive integer, got {shown_version(wanted)}")
            versions = [v for v in versions if v.version == number]
            if not versions:
                raise NotFound(f"model {name!r} has no loaded version {wanted}")
        region = request.query_params.get("region")
        known = [*self.settings.regions, "other"]
        if region is not None and region not in known:
            raise InvalidInput(f"region: {region!r} is not a configured region; use one of {known}")
        reports = await asyncio.to_thread(lambda: [monitor.drift_report(v, region) for v in versions])
        return JSONResponse(
            {
                "model": name,
                "region": region or ALL_REGIONS,
                "thresholds": {"warn": self.settings.drift_warn, "drift": self.settings.drift_threshold},
                "versions": reports,
                "monitor": monitor.describe(),
            }
        )

    async def predictions(self, request: Request) -> Response:
        """``GET /v1/predictions``: one page of the review queue (reviewer or admin token)."""
        require_reviewer(
            self.settings.admin_token, self.settings.reviewer_token, request.headers.get("authorization", "")
        )
        monitor = self._monitor()
        if monitor.log is None:
            raise Unavailable("the review queue needs the prediction log, and it is off (prediction_log=false)")
        q = request.query_params
        reason = q.get("reason") or None
        if reason is not None and reason not in REASONS:
            raise InvalidInput(f"reason: expected one of {list(REASONS)}, got {reason[:40]!r}")
        queue = QueueFilter(
            model=_text(q.get("model"), "model"),
            version=_bounded_int(q["version"], "version", 1, 10**9) if q.get("version") else None,
            region=_text(q.get("region"), "region"),
            reason=reason,
            flagged=_flag(q.get("flagged", "true"), "flagged"),
            reviewed=_flag(q.get("reviewed", "false"), "reviewed"),
        )
        limit = _bounded_int(q.get("limit", "50"), "limit", 1, 500)
        cursor = Cursor.decode(q["cursor"]) if q.get("cursor") else None
        log = monitor.log
        try:
            await asyncio.to_thread(log.ensure_schema)
            await asyncio.to_thread(monitor.wait_idle)  # what was just answered may still be on its way to the log
            await asyncio.to_thread(log.flush)
            page = await asyncio.to_thread(review_queue, log.store, queue, limit, cursor)
        except StoreUnavailable as exc:
            raise Unavailable(f"the prediction log is unavailable: {exc}") from exc
        return JSONResponse(page)

    async def feedback(self, request: Request) -> Response:
        """``POST /v1/feedback``: ground truth for one item of a served prediction; says whether it counted."""
        s = self.settings
        require_feedback(
            s.admin_token, s.reviewer_token, s.feedback_token, s.feedback_open, request.headers.get("authorization", "")
        )
        monitor = self._monitor()
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise UnsupportedMediaType(f"Content-Type: feedback is application/json, got {media_type[:60]!r}")
        document = await read_json(request.receive, request.headers.get("content-length"), s.feedback_max_body_bytes)
        if not isinstance(document, dict):
            raise InvalidInput(
                'body: expected {"request_id": "...", "label": ...} or {"request_id": ..., "value": ...}'
            )
        request_id = document.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise InvalidInput("request_id: missing; send the request_id of the prediction this answer is for")
        if not _LOGGED_ID.match(request_id):
            raise InvalidInput("request_id: not an id this service gives; send the request_id of the prediction")
        if "label" not in document and "value" not in document:
            raise InvalidInput("label: missing; send the true 'label' (classification) or 'value' (regression)")
        item = document.get("item", 0)
        if isinstance(item, float) and item.is_integer():  # 3.0 is an integer to JSON Schema too
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int):
            raise InvalidInput(f"item: expected the index of the prediction in its request, got {item!r}")
        source = document.get("source", "api")
        if source not in FEEDBACK_SOURCES:
            raise InvalidInput(f"source: expected 'review' (the review queue) or 'api' (a system), got {source!r}")
        if source == "review" and not reviewer(
            s.admin_token, s.reviewer_token, request.headers.get("authorization", "")
        ):
            raise InvalidInput("source: 'review' answers come from the review queue, with the reviewer or admin token")
        outcome = await asyncio.to_thread(
            monitor.record_feedback,
            request_id,
            item,
            document.get("label"),
            document.get("value"),
            self._classes,
            source,
        )
        # what became of the answer, never what was predicted: a feedback-only token reads nothing of the log
        return JSONResponse(
            {"request_id": request_id, "item": item, "counted": outcome.counted, "reason": outcome.reason}
        )

    def _classes(self, model: str, version: int) -> list[str] | None:
        for served in self.registry.versions(model):
            if served.version == version:
                return list(served.manifest.outputs.classes or []) or None
        return None


# ids the log may hold: the service's own, and (in records from before it made every id) a client's sane one
_LOGGED_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")


def _text(value: str | None, name: str) -> str | None:
    if not value:
        return None
    if len(value) > 200 or not value.isprintable():
        raise InvalidInput(f"{name}: expected a name of printable characters, got {value[:40]!r}")
    return value


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise InvalidInput(f"{name}: expected true or false, got {value[:40]!r}")


def _bounded_int(value: str, name: str, low: int, high: int) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 10 or not low <= int(value) <= high:
        raise InvalidInput(f"{name}: expected a whole number from {low} to {high}, got {value[:40]!r}")
    return int(value)
