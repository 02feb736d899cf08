"""Shadow runs: the candidate answers a copy of a request after stable has answered it, and is only compared.

Mirroring starts once the stable response has been sent, as a task of its
own, so it can never delay or change what the client gets. It is the first
work shed under load: when too many shadow runs are in flight, or stable's
queue is half full, the copy is skipped (counted in
``serving_shadow_shed_total``). The candidate decodes the body with its own
preprocessing (versions may differ in image size or columns); the
comparison is label disagreement for classification and multi-label, mean
absolute and relative difference for regression.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Any

from service.inputs import media_type_of
from service.registry import ModelRegistry, ModelVersion
from service.rollout_state import RolloutManager
from service.settings import ServiceSettings

log = logging.getLogger("service.shadow")


def compare(task: str, stable: list[dict[str, Any]], candidate: list[dict[str, Any]]) -> tuple[int, int, float, float, int]:
    """(items compared, items disagreeing, sum |diff|, sum |diff|/|stable|, values differenced)."""
    compared = min(len(stable), len(candidate))
    disagreed, abs_diff, rel_diff, values = 0, 0.0, 0.0, 0
    for s, c in zip(stable, candidate):
        if task == "classification":
            disagreed += s.get("label") != c.get("label")
        elif task == "multilabel":
            disagreed += set(s.get("labels", ())) != set(c.get("labels", ()))
        else:
            pairs = [(s["value"], c.get("value"))] if "value" in s else [
                (v, c.get("values", {}).get(k)) for k, v in s.get("values", {}).items()]  # fmt: skip
            for a, b in pairs:
                if a is None or b is None:
                    continue
                difference = abs(float(b) - float(a))
                abs_diff += difference
                rel_diff += difference / max(abs(float(a)), 1e-12)
                values += 1
    return compared, disagreed, abs_diff, rel_diff, values


class ShadowRunner:
    """Mirrors shadowed requests to the candidate off the request path, within a bound."""

    def __init__(self, settings: ServiceSettings, registry: ModelRegistry, rollout: RolloutManager) -> None:
        self.settings = settings
        self.registry = registry
        self.rollout = rollout
        self.preprocess_pool: Executor | None = None
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def mirror(self, name: str, key: str, stable: ModelVersion, content_type: str, body: bytes,
               stable_predictions: list[dict[str, Any]]) -> None:  # fmt: skip
        """Called after stable's answer is sent; starts the shadow run or sheds it. Never raises."""
        target = self.rollout.shadow_target(name, key, stable.version)
        if target is None:
            return
        try:
            candidate = self.registry.get(name, target)
        except Exception:  # a candidate that is not loaded gets no shadow traffic; the policy reports it
            return
        half_queue = self.settings.max_queue_size // 2
        if (
            self.in_flight >= self.settings.shadow_max_in_flight
            or stable.batcher.queue_depth > half_queue
            or candidate.batcher.queue_depth > half_queue
        ):
            self.rollout.metrics.shadow_shed.labels(name).inc()
            return
        self.in_flight += 1
        task = asyncio.create_task(self._run(name, stable, candidate, content_type, body, stable_predictions))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.in_flight -= 1

    async def _run(self, name: str, stable: ModelVersion, candidate: ModelVersion, content_type: str, body: bytes,
                   stable_predictions: list[dict[str, Any]]) -> None:  # fmt: skip
        started = time.perf_counter()
        label = str(candidate.version)
        candidate.acquire()
        try:
            media_type = media_type_of(content_type)
            decoder = candidate.inputs
            arrays = decoder.decode_in_place(media_type, content_type, body)
            if arrays is None:
                loop = asyncio.get_running_loop()
                arrays = await loop.run_in_executor(self.preprocess_pool, decoder.decode, media_type, content_type,
                                                    body)  # fmt: skip
            output, _ = candidate.runtime.split(await candidate.batcher.submit(arrays, self.settings.request_timeout_s))
            predictions = candidate.encoder.encode(output)
        except Exception as exc:
            self.rollout.observe(name, candidate.version, False, time.perf_counter() - started)
            self.rollout.metrics.shadow_requests.labels(name, label, "error").inc()
            log.debug("shadow run of %s v%d failed: %s", name, candidate.version, exc)
            return
        finally:
            candidate.release()
        self.rollout.observe(name, candidate.version, True, time.perf_counter() - started)
        self.rollout.metrics.shadow_requests.labels(name, label, "ok").inc()
        compared, disagreed, abs_diff, rel_diff, values = compare(stable.manifest.task, stable_predictions,
                                                                  predictions)  # fmt: skip
        self.rollout.compared(name, candidate.version, compared, disagreed, abs_diff, rel_diff, values)
        self.rollout.metrics.shadow_comparisons.labels(name, label).inc(compared)
        self.rollout.metrics.shadow_disagreements.labels(name, label).inc(disagreed)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
