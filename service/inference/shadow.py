"""Shadow runs: the candidate answers a copy of a request after stable has answered it, and is only compared.

Mirroring starts once the stable response has been sent, as a task of its
own, so it can never change what the client gets. It is the first work shed
under load, so it delays stable's answers as little as possible: shadow runs
get a budget of the service's time (``shadow_max_share``, 5 % by default, of
every half second; a copy is charged what the recent copies cost: the
candidate's run time per item plus decoding, encoding and comparing), and a
copy that finds the budget spent, too many shadow runs in flight, or stable's
queue half full is skipped (counted in ``serving_shadow_shed_total``). At
low traffic the budget is never reached and every copy in the shadow share
runs; at saturation shadow takes its share and no more. The candidate
decodes the body with its own preprocessing (versions may differ in image
size or columns); the comparison is label disagreement for classification
and multi-label, mean absolute and relative difference for regression.

When the candidate takes the same inputs as stable (the same image spec or
tabular processors and ONNX inputs, as a retrained model usually does), the
copy is not decoded again: stable's decoded arrays wait a moment
(``FLUSH_S``) with the other requests' copies and run on the candidate as
one batch, so shadowing every request costs the loop little more than a
list append per request.

Every shadow answer to a copy of a logged request is logged too (arm ``shadow``, linked to the request it
copies), and the items where the candidate disagreed with stable are flagged for review (``disagreement``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from service.codecs.decoded import Decoded
from service.http.errors import InferenceFailed, ServiceError
from service.inference.context import RequestCodec, RequestContext
from service.models.registry import ModelRegistry
from service.models.version import ModelVersion
from service.monitoring import Monitor
from service.rollout.manager import RolloutManager
from service.settings import ServiceSettings

log = logging.getLogger("service.inference.shadow")

FLUSH_S = 0.02  # how long decoded copies gather before they run on the candidate together
BUDGET_WINDOW_S = 0.5  # the shadow time budget is a share of each window this long


class ShadowBudget:
    """How much of the service's time shadow runs may take: ``share`` of every ``window_s``.

    Each copy taken is charged the recent cost of a copy (a moving average of
    what finished copies cost), so the budget holds while copies are still
    waiting to run; a window that overran carries the excess into the next."""

    def __init__(self, share: float, window_s: float = BUDGET_WINDOW_S) -> None:
        self.allowance = share * window_s
        self.window_s = window_s
        self.cost_per_copy = 0.0
        self._started = 0.0
        self._spent = 0.0

    def take(self, now: float) -> bool:
        """Charge one copy, or False when the window's allowance is spent (the copy is shed)."""
        if now - self._started >= self.window_s:
            self._started = now
            self._spent = max(0.0, self._spent - self.allowance)
        if self._spent >= self.allowance:
            return False
        self._spent += self.cost_per_copy
        return True

    def ran(self, copies: int, seconds: float) -> None:
        """``copies`` finished, costing ``seconds`` of the service's time all together."""
        if copies > 0:
            per_copy = seconds / copies
            self.cost_per_copy = per_copy if not self.cost_per_copy else 0.8 * self.cost_per_copy + 0.2 * per_copy


def same_inputs(stable: ModelVersion, candidate: ModelVersion) -> bool:
    """Whether the candidate's preprocessing makes exactly what stable's does (so stable's arrays serve it)."""
    a, b = stable.manifest, candidate.manifest
    return (
        a.input_kind == b.input_kind
        and a.image == b.image
        and a.tabular == b.tabular
        and [spec.model_dump() for spec in a.onnx.inputs] == [spec.model_dump() for spec in b.onnx.inputs]
    )


def compare(
    task: str, stable: list[dict[str, Any]], candidate: list[dict[str, Any]]
) -> tuple[int, int, float, float, int]:
    """(items compared, items disagreeing, sum |diff|, sum |diff|/|stable|, values differenced)."""
    compared = min(len(stable), len(candidate))
    disagreed, abs_diff, rel_diff, values = 0, 0.0, 0.0, 0
    for s, c in zip(stable, candidate):
        if task == "classification":
            disagreed += s.get("label") != c.get("label")
        elif task == "multilabel":
            disagreed += set(s.get("labels", ())) != set(c.get("labels", ()))
        else:
            pairs = (
                [(s["value"], c.get("value"))]
                if "value" in s
                else [(v, c.get("values", {}).get(k)) for k, v in s.get("values", {}).items()]
            )
            for a, b in pairs:
                if a is None or b is None:
                    continue
                difference = abs(float(b) - float(a))
                abs_diff += difference
                rel_diff += difference / max(abs(float(a)), 1e-12)
                values += 1
    return compared, disagreed, abs_diff, rel_diff, values


def disagreeing_items(task: str, stable: list[dict[str, Any]], candidate: list[dict[str, Any]]) -> list[int]:
    """The items whose label (or set of labels) differs; none for regression, which differs by degree."""
    if task == "classification":
        return [i for i, (s, c) in enumerate(zip(stable, candidate)) if s.get("label") != c.get("label")]
    if task == "multilabel":
        return [
            i for i, (s, c) in enumerate(zip(stable, candidate)) if set(s.get("labels", ())) != set(c.get("labels", ()))
        ]
    return []


@dataclass(frozen=True)
class ShadowedRequest:
    """The stable answer a shadow copy is compared with, and what its log record names."""

    request_id: str  # the service's id of the served request
    version: int  # the stable version that served it (only what stable answered is mirrored)
    region: str
    predictions: list[dict[str, Any]]


class ShadowRunner:
    """Mirrors shadowed requests to the candidate off the request path, within a bound."""

    def __init__(
        self,
        settings: ServiceSettings,
        registry: ModelRegistry,
        rollout: RolloutManager,
        decode_pool: Executor,
        monitor: Monitor | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.rollout = rollout
        self.decode_pool = decode_pool
        self.monitor = monitor  # logs each shadow answer beside the request it copies
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # decoded copies waiting to run together, per (model, candidate version): (candidate, arrays, stable's answer)
        self._pending: dict[tuple[str, int], list[tuple[ModelVersion, list[Any], ShadowedRequest]]] = {}
        self._pending_items = 0
        self._flush: asyncio.TimerHandle | None = None
        self._same: dict[tuple[int, int], bool] = {}
        self.budget = ShadowBudget(settings.shadow_max_share)
        self._shed_counters: dict[str, Any] = {}  # serving_shadow_shed_total's child per model

    def mirror(
        self,
        ctx: RequestContext,
        stable: ModelVersion,
        codec: RequestCodec,
        body: bytes,
        stable_predictions: list[dict[str, Any]],
        arrays: list[Any] | None = None,
    ) -> None:
        """Called after stable's answer is sent; starts the shadow run or sheds it. Never raises."""
        name = ctx.model
        target = self.rollout.shadow_target(name, ctx.key, stable.version)
        if target is None:
            return
        answered = ShadowedRequest(ctx.request_id, stable.version, ctx.region, stable_predictions)
        try:
            candidate = self.registry.get(name, target)
        except Exception:  # a candidate that is not loaded gets no shadow traffic; the policy reports it
            return
        half_queue = self.settings.max_queue_size // 2
        saturated = self.in_flight >= self.settings.shadow_max_in_flight or candidate.batcher.queue_depth > half_queue
        if self.rollout.shadows_everything(name):
            shed = saturated  # every copy runs unless the candidate cannot keep up
        else:  # a partial share: shadow takes at most its budget of the service's time, and yields to stable
            shed = saturated or stable.batcher.queue_depth > half_queue or not self.budget.take(time.perf_counter())
        if shed:
            self._shed(name, candidate.version)
            return
        if arrays is not None and self._same_inputs(stable, candidate):
            if self._pending_items >= half_queue:
                self._shed(name, candidate.version)
                return
            self._pending.setdefault((name, candidate.version), []).append((candidate, arrays, answered))
            self._pending_items += len(answered.predictions)
            if self._flush is None:
                self._flush = asyncio.get_running_loop().call_later(FLUSH_S, self._start_batches)
            return
        self.in_flight += 1
        task = asyncio.create_task(self._run(name, stable, candidate, codec, body, answered))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _shed(self, name: str, candidate: int) -> None:
        counter = self._shed_counters.get(name)
        if counter is None:
            counter = self._shed_counters[name] = self.rollout.metrics.shadow_shed.labels(name)
        counter.inc()
        self.rollout.shed(name, candidate)

    def _same_inputs(self, stable: ModelVersion, candidate: ModelVersion) -> bool:
        key = (id(stable), id(candidate))
        found = self._same.get(key)
        if found is None:
            if len(self._same) > 64:
                self._same.clear()
            found = self._same[key] = same_inputs(stable, candidate)
        return found

    def _start_batches(self) -> None:
        self._flush = None
        pending, self._pending, self._pending_items = self._pending, {}, 0
        for (name, _), copies in pending.items():
            self.in_flight += 1
            task = asyncio.create_task(self._run_batch(name, copies))
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    async def _run_batch(self, name: str, copies: list[tuple[ModelVersion, list[Any], ShadowedRequest]]) -> None:
        """Stable's decoded arrays of many requests, run on the candidate at once and compared."""
        started = time.perf_counter()
        candidate = copies[0][0]
        label = str(candidate.version)
        spent = 0.0  # the service's time this took: the synchronous parts, timed, and the runs in a thread, estimated
        candidate.acquire()
        try:
            arrays = [np.concatenate([c[1][i] for c in copies]) for i in range(len(copies[0][1]))]
            if candidate.batcher.inline:
                # A model the batch policy runs on the event loop: run it here, a batch at a time with the loop
                # free in between, without monitoring's batch columns (a shadow answer is only compared).
                size = candidate.batcher.max_batch_size
                parts = []
                spent += time.perf_counter() - started
                for at in range(0, len(arrays[0]), size):
                    await asyncio.sleep(0)
                    ran = time.perf_counter()
                    parts.append(candidate.runtime.run([a[at : at + size] for a in arrays]))
                    spent += time.perf_counter() - ran
                ran = time.perf_counter()
                output, _ = candidate.runtime.split(np.concatenate(parts) if len(parts) > 1 else parts[0])
            else:
                spent += time.perf_counter() - started
                rows = await candidate.batcher.submit(arrays, self.settings.request_timeout_s)
                ran = time.perf_counter()
                spent += len(rows) * candidate.batcher.seconds_per_item
                output, _, _ = candidate.split(rows)
            predictions = candidate.encoder.encode(output)
        except Exception as exc:
            seconds = time.perf_counter() - started
            if _versions_fault(exc):
                self.rollout.observe(name, candidate.version, False, seconds, len(copies))
            self.rollout.metrics.shadow_requests.labels(name, label, "error").inc(len(copies))
            log.debug("shadow run of %s v%d failed: %s", name, candidate.version, exc)
            return
        finally:
            candidate.release()
        seconds = time.perf_counter() - started
        self.rollout.observe(name, candidate.version, True, seconds, len(copies))
        self.rollout.metrics.shadow_requests.labels(name, label, "ok").inc(len(copies))
        stable_predictions = [p for c in copies for p in c[2].predictions]
        self._compare(name, candidate, stable_predictions, predictions)
        at = 0
        for _, _, answered in copies:  # the candidate's answers, split back into the requests they copy
            n = len(answered.predictions)
            self._log(name, copies[0][0], answered, predictions[at : at + n])
            at += n
        self.budget.ran(len(copies), spent + time.perf_counter() - ran)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1

    async def _run(
        self,
        name: str,
        stable: ModelVersion,
        candidate: ModelVersion,
        codec: RequestCodec,
        body: bytes,
        answered: ShadowedRequest,
    ) -> None:
        started = time.perf_counter()
        label = str(candidate.version)
        candidate.acquire()
        try:
            codec.check(candidate)
            step = codec.decode(candidate, body)
            if not isinstance(step, Decoded):
                deadline = time.perf_counter() + self.settings.request_timeout_s
                step = await asyncio.get_running_loop().run_in_executor(
                    self.decode_pool, partial(step, deadline=deadline)
                )
            arrays = step.arrays
            decoded = time.perf_counter()  # in the pool, this counts the wait for a thread as cost too
            output, _, _ = candidate.split(await candidate.batcher.submit(arrays, self.settings.request_timeout_s))
            ran = time.perf_counter()
            predictions = candidate.encoder.encode(output)
        except Exception as exc:
            if _versions_fault(exc):
                self.rollout.observe(name, candidate.version, False, time.perf_counter() - started)
            self.rollout.metrics.shadow_requests.labels(name, label, "error").inc()
            log.debug("shadow run of %s v%d failed: %s", name, candidate.version, exc)
            return
        finally:
            candidate.release()
        self.rollout.observe(name, candidate.version, True, time.perf_counter() - started)
        self.rollout.metrics.shadow_requests.labels(name, label, "ok").inc()
        self._compare(name, candidate, answered.predictions, predictions)
        self._log(name, candidate, answered, predictions)
        self.budget.ran(
            1, decoded - started + len(predictions) * candidate.batcher.seconds_per_item + time.perf_counter() - ran
        )

    def _compare(
        self,
        name: str,
        candidate: ModelVersion,
        stable_predictions: list[dict[str, Any]],
        predictions: list[dict[str, Any]],
    ) -> None:
        label = str(candidate.version)
        compared, disagreed, abs_diff, rel_diff, values = compare(
            candidate.manifest.task, stable_predictions, predictions
        )
        self.rollout.compared(name, candidate.version, compared, disagreed, abs_diff, rel_diff, values)
        self.rollout.metrics.shadow_comparisons.labels(name, label).inc(compared)
        self.rollout.metrics.shadow_disagreements.labels(name, label).inc(disagreed)

    def _log(
        self, name: str, candidate: ModelVersion, answered: ShadowedRequest, predictions: list[dict[str, Any]]
    ) -> None:
        if self.monitor is None:
            return
        stable = (name, answered.version, answered.region, "stable")
        disagreed = disagreeing_items(candidate.manifest.task, answered.predictions, predictions)
        self.monitor.log_shadow(answered.request_id, stable, candidate.version, predictions, disagreed)

    async def drain(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._start_batches()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _versions_fault(exc: Exception) -> bool:
    """Whether a failed shadow copy counts against the candidate: its run failed, or something unexpected did.
    A copy the candidate could not take (its codec refused the body, its queue was full, the deadline passed
    before it ran) is counted as a shadow error only, as the predict pipeline counts requests."""
    return isinstance(exc, InferenceFailed) or not isinstance(exc, ServiceError)
