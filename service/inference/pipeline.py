"""The predict pipeline: every prediction, native or Open Inference Protocol, takes the same steps.

1. **route**: the pinned version, else the rollout's choice (``VersionRouter``);
2. **admit**: refuse at once (413, 503) what cannot be served, before a byte of the body is read;
3. **read** the body within its size limit;
4. **decode** with the protocol's codec: in place when that is cheaper than a thread hand-off, else in the
   decoding pool behind its bounded backlog (``DecodeQueue``), within the deadline;
5. **batch**: the version's dynamic batcher runs the arrays with other requests' items;
6. **encode** the predictions, **monitor** them (out-of-domain flags, drift, the prediction log);
7. **count** the outcome (``serving_requests_total``) and, for routed requests, the rollout arm's readings.

A protocol adapter (``service.api.predict``, ``service.api.oip``) does only its own protocol's work: read
its headers into a :class:`RequestContext`, give its codec, render the :class:`Answer`. After the answer is
sent it calls :meth:`PredictPipeline.mirror`, which may copy the request to a shadow candidate.

Only failures that are the version's fault count against its rollout arm: a batch that failed to run, or an
answer that could not be made from its output. Client errors, refusals by admission or the queue, deadlines
passed before the version ran, and anything raised before it ran never do, so no client can choose to
push a candidate over its error limit.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.types import Receive

from service.codecs.decoded import Decoded
from service.http.body import check_declared_size, read_body
from service.http.errors import InferenceFailed, NotFound, ServiceError, outcome_of
from service.inference.context import RequestCodec, RequestContext
from service.inference.decode_queue import DecodeQueue
from service.inference.shadow import ShadowRunner
from service.metrics import UNKNOWN_MODEL, ServingMetrics
from service.models.batcher import Admission
from service.models.repository import shown_version, version_number
from service.models.router import VersionRouter
from service.models.version import ModelVersion
from service.monitoring import Monitor
from service.monitoring.observation import ServedRequest
from service.rollout.manager import RolloutManager
from service.settings import ServiceSettings

log = logging.getLogger("service.inference")


@dataclass
class Answer:
    """A served prediction: the version that answered, its encoded predictions and what they came from."""

    version: ModelVersion
    predictions: list[dict[str, Any]]
    output: np.ndarray  # the model's first output, one row per item
    decoded: Decoded
    body: bytes


class _VersionFault(Exception):
    """Wraps a failure of the version itself (counted against its rollout arm)."""

    def __init__(self, error: ServiceError) -> None:
        self.error = error


class PredictPipeline:
    """Routing, admission, decoding, batching, monitoring, shadowing and metrics, once for every protocol."""

    def __init__(
        self,
        settings: ServiceSettings,
        router: VersionRouter,
        metrics: ServingMetrics,
        decode_queue: DecodeQueue,
        decode_pool: Executor,
        monitor: Monitor | None,
        rollout: RolloutManager | None,
        shadow: ShadowRunner | None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.metrics = metrics
        self.decode_queue = decode_queue
        self.decode_pool = decode_pool
        self.monitor = monitor
        self.rollout = rollout
        self.shadow = shadow

    # -- what the adapters read before the pipeline runs ------------------------------------

    def sticky_header(self, name: str) -> bytes:
        """The header whose value is a model's sticky rollout key (lower-case, as ASGI scopes carry it)."""
        return self.rollout.sticky_header(name) if self.rollout is not None else b"x-request-key"

    def header_names(self) -> frozenset[bytes]:
        """Every request header the pipeline reads (content type and length, region, sticky keys)."""
        if self.rollout is not None:
            return self.rollout.header_names
        region = self.settings.region_header.lower().encode("latin-1")
        return frozenset((b"content-type", b"content-length", region, b"x-request-key"))

    def context(
        self,
        model: str,
        pinned: str | None,
        request_id: str,
        client_region: str | None,
        key: str | None,
        content_length: str | None,
        client_request_id: str | None = None,
    ) -> RequestContext:
        """A request's context from what its protocol read: ``pinned`` is the path's version text, if any."""
        started = time.perf_counter()
        client_region = client_region or self.settings.default_region or None
        return RequestContext(
            model,
            self._version_number(model, pinned) if pinned is not None else None,
            request_id,
            client_region,
            self.settings.region_label(client_region),
            key or client_request_id or request_id,  # a client's own id keeps a retried request on its arm
            content_length,
            started,
            started + self.settings.request_timeout_s,
            client_request_id,
        )

    def _version_number(self, model: str, text: str) -> int:
        number = version_number(text)
        if number is None:
            self._unrouted(model, None, "client_error")
            raise NotFound(f"model {model!r} has no version {shown_version(text)}; versions are positive integers")
        return number

    # -- the pipeline -------------------------------------------------------------------

    def choose(self, ctx: RequestContext) -> ModelVersion:
        """The pinned version, else the one routing chooses; requests that reach none are counted."""
        try:
            if ctx.pinned is not None:
                return self.router.pinned(ctx.model, ctx.pinned)
            return self.router.route(ctx.model, ctx.key, ctx.client_region)
        except ServiceError as exc:
            self._unrouted(ctx.model, ctx.client_region, exc.outcome)
            raise

    def _unrouted(self, model: str, region: str | None, outcome: str) -> None:
        # Only names the registry knows become label values; anything else counts as "unknown".
        known = model if self.router.registry.is_known(model) else UNKNOWN_MODEL
        self.metrics.count_unrouted(known, self.settings.region_label(region), outcome)

    async def run(self, ctx: RequestContext, codec: RequestCodec, receive: Receive) -> Answer:
        """Serve one request; every failure is a ``ServiceError`` for the adapter to render."""
        version = self.choose(ctx)
        version.acquire()
        try:
            answer = await self._serve(version, ctx, codec, receive)
        except Exception as exc:
            fault = isinstance(exc, _VersionFault)
            error = exc.error if isinstance(exc, _VersionFault) else exc
            if not isinstance(error, ServiceError):
                # A bug of ours (a codec's, monitoring's), not the version's: a 500, but not against its arm,
                # or a client who found the bug could push whichever arm it routes to over its error limit.
                log.exception(
                    "prediction failed for %s v%d (request %s)", version.name, version.version, ctx.request_id
                )
                error = InferenceFailed("prediction failed; the service log has the details")
            self._count(version, ctx, outcome_of(error), fault)
            raise error from None
        finally:
            version.release()
        self._count(version, ctx, "ok", False)
        return answer

    async def _serve(self, version: ModelVersion, ctx: RequestContext, codec: RequestCodec, receive: Receive) -> Answer:
        codec.check(version)
        with self.admit(version, ctx) as admission:
            body = await read_body(receive, ctx.content_length, self.settings.max_body_bytes)
            decoded = await self.decode(version, codec, body, ctx.deadline)
            remaining = ctx.remaining_s("preprocessing")
            try:
                rows = await admission.submit(decoded.arrays, remaining)
            except InferenceFailed as exc:  # the batch ran and failed: the version's fault
                raise _VersionFault(exc) from None
        try:
            output, logits, columns = version.split(rows)
            predictions = version.encoder.encode(output)
        except Exception as exc:
            log.exception(
                "answering from %s v%d's output failed (request %s)", version.name, version.version, ctx.request_id
            )
            raise _VersionFault(InferenceFailed("prediction failed; the service log has the details")) from exc
        if self.monitor is not None:
            self.monitor.observe(
                ServedRequest(
                    version,
                    ctx.region,
                    self.arm_of(ctx, version),
                    ctx.request_id,
                    time.perf_counter() - ctx.started,
                    decoded.raw,
                    decoded.arrays,
                    output,
                    predictions,
                    logits,
                    columns,
                    ctx.client_request_id,
                )
            )
        return Answer(version, predictions, output, decoded, body)

    def admit(self, version: ModelVersion, ctx: RequestContext) -> Admission:
        """Refuse at once (413, 503) what cannot be served, before a byte of the body is read or decoded."""
        if ctx.content_length is not None:
            check_declared_size(ctx.content_length, self.settings.max_body_bytes)
        return version.batcher.admit(ctx.remaining_s("admission"))

    async def decode(self, version: ModelVersion, codec: RequestCodec, body: bytes, deadline: float) -> Decoded:
        """The codec's arrays: at once when cheap, else in the decoding pool behind its bounded backlog."""
        step = codec.decode(version, body)
        if isinstance(step, Decoded):
            return step
        return await self.decode_queue.run(self.decode_pool, deadline, step)

    def arm_of(self, ctx: RequestContext, version: ModelVersion) -> str:
        """What the prediction log records: ``pinned``, or the rollout arm that answered (``stable``, ``candidate``)."""
        if ctx.pinned is not None:
            return "pinned"
        policy = self.rollout.policies.get(version.name) if self.rollout is not None else None
        return "candidate" if policy is not None and policy.candidate == version.version else "stable"

    def _count(self, version: ModelVersion, ctx: RequestContext, outcome: str, fault: bool) -> None:
        seconds = time.perf_counter() - ctx.started
        version.metrics.request(ctx.region, outcome, seconds)
        if self.rollout is not None and ctx.pinned is None and (outcome == "ok" or fault):
            self.rollout.observe(version.name, version.version, outcome == "ok", seconds)

    def mirror(self, ctx: RequestContext, codec: RequestCodec, answer: Answer) -> None:
        """After the answer is sent: a copy for the shadow candidate, when the policy shadows this request."""
        if self.shadow is not None and ctx.pinned is None:
            self.shadow.mirror(ctx, answer.version, codec, answer.body, answer.predictions, answer.decoded.arrays)
