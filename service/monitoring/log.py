"""The prediction log: one row per logged request, written in batches by a background thread.

Rows go to a store (``bundle.store``; the schema is ``bundle.prediction_log``'s): a SQLite file of its own
(``prediction_log_path``) for one replica, or the shared PostgreSQL
(``SERVING_STATE_URL=postgresql://...``) for many, where feedback sent to any
replica finds the prediction another one served.

Nothing here blocks a request: :meth:`PredictionLog.append` puts a record
in a bounded buffer and returns. The writer thread inserts up to
``batch_size`` records per statement; while the store is slow or down the
records wait in the buffer (and are retried), and once it is full new ones
are dropped and counted in ``serving_prediction_log_dropped_total``.
Records older than the retention are deleted once a minute.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from bundle.prediction_log import COLUMNS, MIGRATIONS, PREDICTIONS
from bundle.store import InvalidValue, Store, StoreUnavailable

log = logging.getLogger("service.monitoring.log")

_INSERT = (
    f"INSERT INTO {PREDICTIONS} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "
    "ON CONFLICT (request_id) DO NOTHING"
)
Record = Sequence[Any]  # the values of COLUMNS, in order


class LogMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "serving_prediction_log_written", "Prediction log records written to the store.", registry=registry
        )
        self.dropped = Counter(
            "serving_prediction_log_dropped",
            "Prediction log records dropped (reason: buffer_full while the store is slow or down; sampled_out).",
            ["reason"],
            registry=registry,
        )
        self.pending = Gauge(
            "serving_prediction_log_pending", "Records waiting in the prediction log buffer.", registry=registry
        )


class PredictionLog:
    """A bounded buffer in front of the store, drained by one writer thread."""

    def __init__(
        self,
        store: Store,
        metrics: LogMetrics,
        buffer_size: int = 10_000,
        batch_size: int = 500,
        retention_s: float = 30 * 86_400,
        flush_interval_s: float = 0.2,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.retention_s = retention_s
        self.flush_interval_s = flush_interval_s
        self._buffer: deque[Record] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._migrated = False
        self._last_prune = 0.0
        self.written = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        metrics.pending.set_function(lambda: len(self._buffer))

    def start(self) -> None:
        self._thread.start()

    def append(self, record: Record) -> bool:
        """Queue one record; False (and counted) when the buffer is full."""
        with self._lock:
            if len(self._buffer) >= self.buffer_size:
                self.dropped += 1
                self.metrics.dropped.labels("buffer_full").inc()
                return False
            self._buffer.append(record)
            full_batch = len(self._buffer) >= self.batch_size
        if full_batch:
            self._wake.set()
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is buffered (for at most ``timeout_s``), then close the store."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self.store.close()

    def flush(self) -> bool:
        """Write every buffered record now (blocking); False when the store refused."""
        while True:
            with self._lock:
                batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
            if not batch:
                return True
            if not self._write(batch):
                return False

    def ensure_schema(self) -> None:
        """Create the log's tables if this process has not yet (raises StoreUnavailable)."""
        if not self._migrated:
            self.store.migrate(MIGRATIONS)
            self._migrated = True

    def describe(self) -> dict[str, Any]:
        return {**self.store.describe(), "pending": len(self._buffer), "written": self.written, "dropped": self.dropped}

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.flush_interval_s
        while True:
            self._wake.wait(backoff)
            self._wake.clear()
            ok = self.flush()
            if ok:
                self._prune()
            if self._stopping:
                return
            backoff = self.flush_interval_s if ok else min(max(backoff * 2, 0.5), 5.0)

    def _write(self, batch: list[Record]) -> bool:
        try:
            self.ensure_schema()
            self.store.executemany(_INSERT, batch)
        except InvalidValue as exc:  # rows no backend can store (a NUL in text): dropped alone, counted
            bad = set(exc.rows)
            self.dropped += len(bad)
            self.metrics.dropped.labels("invalid_text").inc(len(bad))
            kept = [record for i, record in enumerate(batch) if i not in bad]
            return self._write(kept) if kept else True
        except StoreUnavailable:
            with self._lock:  # keep them for the next try, as far as the buffer has room
                room = self.buffer_size - len(self._buffer)
                kept = batch[len(batch) - max(room, 0) :] if room < len(batch) else batch
                lost = len(batch) - len(kept)
                self._buffer.extendleft(reversed(kept))
            if lost:
                self.dropped += lost
                self.metrics.dropped.labels("buffer_full").inc(lost)
            return False
        self.written += len(batch)
        self.metrics.written.inc(len(batch))
        return True

    def _prune(self) -> None:
        now = time.time()
        if now - self._last_prune < 60.0 or not self._migrated:
            return
        self._last_prune = now
        try:
            removed = self.store.execute(f"DELETE FROM {PREDICTIONS} WHERE created_at < ?", (now - self.retention_s,))
        except StoreUnavailable:
            return
        if removed:
            log.info("prediction log: removed %d records older than the retention", removed)
