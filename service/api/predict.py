"""The predict routes, as a plain ASGI endpoint that the app calls before Starlette's own stack.

Predict is nearly all of the traffic, and for a small model each of
Starlette's layers (error and exception middleware, router, request-id
middleware) and its per-request objects (``Request``, its header mapping,
``JSONResponse``) cost a visible share of a request. This endpoint reads the
few headers it needs straight from the ASGI scope, the body from ``receive``,
and sends the JSON it renders; it does itself what those layers would do:
answer a wrong method with 405, put the request id on the response, and turn
every exception into a JSON error through ``service.http.errors.describe_error``,
the same mapping the other routes use.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import Executor
from functools import partial
from typing import Any, Awaitable, TypeVar

import numpy as np
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from service.models.batcher import Admission
from service.http.errors import (
    BadRequest,
    DeadlineExceeded,
    InferenceFailed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    describe_error,
    outcome_of,
)
from service.codecs.inputs import check_media_type, media_type_of
from service.metrics import UNKNOWN_MODEL, ServingMetrics
from service.inference.decode_queue import PreprocessQueue
from service.monitoring import Monitor
from service.models.registry import ModelRegistry, ModelVersion
from service.models.runtime import cpu_quota
from service.http.request_id import assign_request_id, id_header
from service.http.responses import send_json
from service.rollout.manager import RolloutManager
from service.settings import ServiceSettings
from service.inference.shadow import ShadowRunner

log = logging.getLogger("service.api.predict")

_ARM_ERRORS = ("server_error", "timeout", "rejected")  # outcomes that count against a rollout arm
# /v1/models/{name}/predict and /v1/models/{name}/versions/{version}/predict, as Starlette would match them.
PREDICT_PATH = re.compile(r"/v1/models/(?P<name>[^/]+)(?:/versions/(?P<version>[0-9]+))?/predict")
MAX_VERSION_DIGITS = 18  # a longer version number is no folder we could have loaded (and int() of 4,300+ digits fails)
T = TypeVar("T")


class PredictEndpoint:
    """``POST /v1/models/{name}/predict`` and ``.../versions/{version}/predict``."""

    def __init__(
        self, settings: ServiceSettings, registry: ModelRegistry, metrics: ServingMetrics, monitor: Monitor | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.monitor = monitor  # out-of-domain flags, drift, prediction log (service.monitoring)
        self.preprocess_pool: Executor | None = None  # set by the app's lifespan
        self.preprocessing = PreprocessQueue(
            settings.preprocess_threads or cpu_quota(), settings.max_preprocess_backlog, settings.retry_after_s
        )
        self.rollout: RolloutManager | None = None  # set by the app when rollouts are configured
        self.shadow: ShadowRunner | None = None
        self._region_header = settings.region_header.lower().encode("latin-1")
        self._headers = frozenset((b"content-type", b"content-length", self._region_header, b"x-request-key"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send, match: re.Match[str]) -> None:
        """Serve one request whose path ``PREDICT_PATH`` matched; every outcome is a response, never an exception."""
        request_id = assign_request_id(scope)
        request_id_header = id_header(request_id)
        try:
            if scope["method"] != "POST":
                raise HTTPException(405, headers={"Allow": "POST"})
            await self._serve(scope, receive, send, match["name"], match["version"], request_id, request_id_header)
        except Exception as exc:
            if not isinstance(exc, (ServiceError, HTTPException)):
                log.exception("predict failed before reaching a model (request %s)", request_id)
            # Straight through ASGI like an answer: under overload most responses are refusals, so they must be cheap.
            status, headers, body = describe_error(exc)
            raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
            await send_json(send, body, [*raw, request_id_header], status)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, name: str, pinned: str | None, request_id: str,
        request_id_header: tuple[bytes, bytes],
    ) -> None:  # fmt: skip
        started = time.perf_counter()
        rollout = self.rollout
        wanted = rollout.header_names if rollout is not None else self._headers
        headers = {key: value.decode("latin-1") for key, value in scope["headers"] if key in wanted}
        client_region = headers.get(self._region_header) or self.settings.default_region or None
        region = self.settings.region_label(client_region)
        key = headers.get(self.sticky_header(name)) or request_id
        version = self.choose_version(name, pinned, key, client_region)
        predictions, body, arrays = await self.serve_on(
            version, region, started, request_id,
            self._predict(version, headers, receive, started, region, self.arm_of(name, version, pinned), request_id),
            routed=pinned is None,
        )  # fmt: skip
        response = {"model": name, "version": version.version, "request_id": request_id, "predictions": predictions}
        await send_json(send, response, [*version.response_headers, request_id_header])
        if self.shadow is not None and pinned is None:  # after the answer is sent: it never delays or changes it
            self.shadow.mirror(name, key, version, headers.get(b"content-type", ""), body, predictions, arrays)

    async def _predict(
        self, version: ModelVersion, headers: dict[bytes, str], receive: Receive, started: float,
        region: str = "other", arm: str = "stable", request_id: str = "",
    ) -> tuple[list[dict[str, Any]], bytes, list[Any]]:  # fmt: skip
        """The encoded predictions, and the body and decoded arrays they came from (for a shadow copy)."""
        content_type = headers.get(b"content-type", "")
        media_type = media_type_of(content_type)
        decoder = version.inputs
        check_media_type(decoder, media_type)
        deadline = started + self.settings.request_timeout_s
        with self.admit(version, headers, deadline) as admission:
            body = await read_body(receive, headers.get(b"content-length"), self.settings.max_body_bytes)
            seen: dict[str, Any] = {}  # the raw inputs, for monitoring
            arrays = await self.preprocess(version, media_type, content_type, body, deadline, seen)
            rows = await admission.submit(arrays, remaining_s(deadline, "preprocessing"))
        output, logits, columns = version.split(rows)
        predictions = version.encoder.encode(output)
        if self.monitor is not None:
            latency = time.perf_counter() - started
            self.monitor.observe(
                version, region, arm, request_id, seen, arrays, output, predictions, latency, logits, columns
            )
        return predictions, body, arrays

    def admit(self, version: ModelVersion, headers: dict[bytes, str], deadline: float) -> Admission:
        """Refuse at once (413, 503) what cannot be served, before a byte of the body is read or decoded."""
        declared = headers.get(b"content-length")
        if declared is not None:
            check_declared_size(declared, self.settings.max_body_bytes)
        return version.batcher.admit(remaining_s(deadline, "admission"))

    async def preprocess(
        self, version: ModelVersion, media_type: str, content_type: str, body: bytes, deadline: float,
        seen: dict[str, Any] | None = None,
    ) -> list[Any]:  # fmt: skip
        """Decode the body: a small raw image on the loop (cheaper than a thread hand-off), the rest in the pool.

        ``seen`` receives the raw inputs monitoring looks at (see ``InputDecoder.decode``)."""
        decoder = version.inputs
        arrays = decoder.decode_in_place(media_type, content_type, body)
        if arrays is None:
            arrays = await self.preprocessing.run(
                self.preprocess_pool, deadline, partial(decoder.decode, seen=seen), media_type, content_type, body
            )
        elif seen is not None:
            seen["images"] = [body]
        return arrays

    # The steps every prediction takes, whichever protocol it came in by (service.oip uses them too).

    def arm_of(self, name: str, version: ModelVersion, pinned: str | None) -> str:
        """What the prediction log records: ``pinned``, or the rollout arm that answered (``stable``, ``candidate``)."""
        if pinned is not None:
            return "pinned"
        policy = self.rollout.policies.get(name) if self.rollout is not None else None
        return "candidate" if policy is not None and policy.candidate == version.version else "stable"

    def sticky_header(self, name: str) -> bytes:
        """The header whose value is a model's sticky rollout key (lower-case, as ASGI scopes carry it)."""
        return self.rollout.sticky_header(name) if self.rollout is not None else b"x-request-key"

    def choose_version(self, name: str, pinned: str | None, request_key: str, region: str | None) -> ModelVersion:
        """The pinned version, else the one routing chooses for the client's ``region``; unrouted requests are counted."""
        try:
            if pinned is not None:
                if len(pinned) > MAX_VERSION_DIGITS:
                    raise NotFound(f"model {name!r} has no version {pinned[:MAX_VERSION_DIGITS]}...")
                return self.registry.get(name, int(pinned))
            return self.registry.route(name, request_key, region)
        except ServiceError as exc:
            # Only names the registry knows become label values; anything else counts as "unknown".
            known = name if self.registry.is_known(name) else UNKNOWN_MODEL
            self.metrics.count_unrouted(known, self.settings.region_label(region), exc.outcome)
            raise

    async def serve_on(
        self, version: ModelVersion, region: str, started: float, request_id: str, work: Awaitable[T],
        routed: bool = True,
    ) -> T:  # fmt: skip
        """Await ``work`` holding ``version``; count its outcome (and, when ``routed``, observe it for the
        rollout's guardrails); an unexpected error becomes ``InferenceFailed``."""
        version.acquire()
        try:
            result = await work
        except Exception as exc:
            if not isinstance(exc, ServiceError):
                log.exception("prediction failed for %s v%d (request %s)", version.name, version.version, request_id)
                exc = InferenceFailed("prediction failed; the service log has the details")
            outcome, seconds = outcome_of(exc), time.perf_counter() - started
            version.metrics.request(region, outcome, seconds)
            if routed and self.rollout is not None and outcome != "client_error":
                self.rollout.observe(version.name, version.version, outcome not in _ARM_ERRORS, seconds)
            raise exc from None
        finally:
            version.release()
        seconds = time.perf_counter() - started
        version.metrics.request(region, "ok", seconds)
        if routed and self.rollout is not None:
            self.rollout.observe(version.name, version.version, True, seconds)
        return result

    async def infer(self, version: ModelVersion, arrays: list[np.ndarray], started: float) -> np.ndarray:
        """The model's first output's rows for ``arrays``, through the version's batcher, within the deadline."""
        remaining = self.settings.request_timeout_s - (time.perf_counter() - started)
        if remaining <= 0:
            raise DeadlineExceeded(f"the {self.settings.request_timeout_s:g} s deadline passed during preprocessing")
        output, _, _ = version.split(await version.batcher.submit(arrays, remaining))
        return output


def remaining_s(deadline: float, during: str) -> float:
    remaining = deadline - time.perf_counter()
    if remaining <= 0:
        raise DeadlineExceeded(f"the request deadline passed during {during}")
    return remaining


def check_declared_size(declared: str, limit: int) -> None:
    if len(declared) > 20 or not declared.isdigit():
        raise BadRequest(f"Content-Length {declared[:20]!r} is not a number")
    size = int(declared)
    if size > limit:
        raise PayloadTooLarge(f"the body is {size} bytes, the limit is {limit}")


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes by Content-Length and by counting."""
    if declared is not None:
        check_declared_size(declared, limit)
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
