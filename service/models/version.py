"""One served version: its manifest, runtime, batcher, input decoder and output encoder, and its leases."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from bundle.manifest import ONNX_FILE
from service.metrics import VersionMetrics
from service.models.batcher import DynamicBatcher
from service.models.loader import LoadedBundle
from service.models.repository import Fingerprint, VersionKey
from service.settings import ServiceSettings

if TYPE_CHECKING:
    from service.monitoring.batch import BatchColumns

log = logging.getLogger("service.models")


class ModelVersion:
    """One served version: its manifest, runtime, batcher, input decoder and output encoder."""

    def __init__(
        self,
        key: VersionKey,
        loaded: LoadedBundle,
        fingerprint: Fingerprint,
        settings: ServiceSettings,
        metrics: VersionMetrics,
        columns: BatchColumns | None = None,
    ) -> None:
        self.name, self.version = key
        self.path = loaded.path
        self.manifest = loaded.manifest
        self.runtime = loaded.runtime
        self.inputs = loaded.inputs
        self.encoder = loaded.encoder
        self.plan = loaded.plan
        self.columns = columns  # monitoring's per-batch columns, appended to each batch's rows
        self.fingerprint = fingerprint
        self.metrics = metrics
        self.sha256 = loaded.manifest.files.get(ONNX_FILE, "")
        self.response_headers = [(b"x-model-version", str(self.version).encode())]
        self.loaded_at = time.time()
        self.state = "ready"
        self.executor = ThreadPoolExecutor(
            settings.batches_in_flight, thread_name_prefix=f"ort-{self.name}-{self.version}"
        )
        self.batcher = DynamicBatcher(
            columns.wrap(self.runtime.run) if columns is not None else self.runtime.run,
            self.executor,
            max_batch_size=loaded.plan.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            max_queue_size=settings.max_queue_size,
            max_queue_wait_s=settings.max_queue_wait_s,
            batches_in_flight=settings.batches_in_flight,
            pad_batches=settings.pad_batches,
            inline=loaded.plan.inline,
            retry_after_s=settings.retry_after_s,
            observer=metrics,
            run_seconds=loaded.plan.seconds_per_run,  # admission's backlog estimate before any traffic
        )
        self._leases = 0
        self._released: asyncio.Event | None = None

    def split(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """A request's rows from the batcher as (the first output, the logits or None, monitoring's columns or None)."""
        columns = None
        if self.columns is not None:
            rows, columns = self.columns.split(rows)
        output, logits = self.runtime.split(rows)
        return output, logits, columns

    def acquire(self) -> None:
        """Hold the version while a request uses it, so draining waits for the request."""
        self._leases += 1

    def release(self) -> None:
        self._leases -= 1
        if self._leases == 0 and self._released is not None:
            self._released.set()

    async def drain(self) -> None:
        """Wait for the requests holding this version, run what is queued, then free the runtime."""
        self.state = "draining"
        if self._leases:
            self._released = asyncio.Event()
            await self._released.wait()
        await self.batcher.drain()
        self.executor.shutdown(wait=False)
        self.metrics.unloaded()
        self.state = "unloaded"
        log.info("unloaded %s v%d", self.name, self.version)

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "version": self.version,
            "state": self.state,
            "task": m.task,
            "input_kind": m.input_kind,
            "provider": self.runtime.provider,
            "sha256": self.sha256,
            "created_at": m.created_at,
            "metrics": m.metrics,
            "parity": m.parity.model_dump() if m.parity is not None else None,
            "training": m.training,
            "queue_depth": self.batcher.queue_depth,
            "batching": self.plan.describe(),
        }
