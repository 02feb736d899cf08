"""The prediction log: one row per logged request, written in batches by a background thread.

Rows go to a store (``bundle.store``; the schema is ``bundle.prediction_log``'s): a SQLite file of its own
(``prediction_log_path``) for one replica, or the shared PostgreSQL
(``SERVING_STATE_URL=postgresql://...``) for many, where feedback sent to any
replica finds the prediction another one served.

Nothing here blocks a request: :meth:`PredictionLog.append` puts a record
in a bounded buffer and returns. The writer thread inserts up to
``batch_size`` records per statement; while the store is slow or down the
records wait in the buffer (and are retried), and once it is full new ones
are dropped and counted in ``serving_prediction_log_dropped_total``. No record
is lost silently: what cannot be encoded is dropped alone (``unencodable``,
by the monitor), what is still buffered when the service stops and cannot be
written then is counted (``shutdown``), and ``serving_prediction_log_written_total``
counts the rows the store actually inserted.

Housekeeping, on the writer thread: records older than the retention go once a minute, and the log is kept
within its size budget (``max_bytes``; on PostgreSQL as rows, ``max_rows``), oldest first, checked every
``budget_check_s``. A record's feedback and review rows go with it.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from bundle.prediction_log import COLUMNS, FEEDBACK, MIGRATIONS, PREDICTIONS, REVIEW, REVIEW_COLUMNS
from bundle.store import InvalidValue, Store, StoreUnavailable, check_text
from service.monitoring.records import LogRecord, Row

log = logging.getLogger("service.monitoring.log")

_INSERT = f"INSERT INTO {PREDICTIONS} ({', '.join(COLUMNS)}) VALUES {{values}} ON CONFLICT (request_id) DO NOTHING"
_REVIEW_INSERT = f"INSERT INTO {REVIEW} ({', '.join(REVIEW_COLUMNS)}) VALUES {{values}} ON CONFLICT (request_id, item) "
# A served item's flags and a shadow's disagreement may reach the store in either order: each sets its own.
_FLAGS_UPSERT = _REVIEW_INSERT + (
    "DO UPDATE SET created_at = excluded.created_at, model = excluded.model, version = excluded.version, "
    "region = excluded.region, arm = excluded.arm, ood = excluded.ood, low_confidence = excluded.low_confidence"
)
_DISAGREEMENT_UPSERT = _REVIEW_INSERT + "DO UPDATE SET disagreement = 1"
_MAX_ROWS_PER_STATEMENT = 256
# the most parameters one statement may bind: SQLite's limit (999 before 3.32), PostgreSQL's 65,535
_MAX_PARAMETERS = {"sqlite": 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999, "postgresql": 65_535}

PRUNE_INTERVAL_S = 60.0
BUDGET_TARGET = 0.9  # a log over its budget is cut to this share of it, so it is not cut again at every check
PG_ROW_OVERHEAD_BYTES = 300  # per row beside its JSON: the other columns, the tuple header, the indexes' entries
PG_SAMPLE_ROWS = 1_000  # the newest rows whose average size derives max_rows


class LogMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "serving_prediction_log_written", "Prediction log records inserted into the store.", registry=registry
        )
        self.dropped = Counter(
            "serving_prediction_log_dropped",
            "Prediction log records dropped (reason: buffer_full while the store is slow or down; unencodable, "
            "a record JSON cannot carry even after repair; shutdown, still buffered when the service stopped).",
            ["reason"],
            registry=registry,
        )
        self.repaired = Counter(
            "serving_prediction_log_repaired",
            "Records whose inputs JSON could not carry as sent (lone surrogates, huge integers), written repaired.",
            registry=registry,
        )
        self.pruned = Counter(
            "serving_prediction_log_pruned",
            "Records removed from the log (reason: retention, size: over prediction_log_max_bytes).",
            ["reason"],
            registry=registry,
        )
        self.pending = Gauge(
            "serving_prediction_log_pending",
            "Records waiting in the prediction log buffer.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.up = Gauge(
            "serving_prediction_log_up",
            "1 while the prediction log's store answers, 0 while it fails (predictions are still served).",
            multiprocess_mode="livemin",
            registry=registry,
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
        max_bytes: int = 1 << 30,
        max_rows: int = 0,
        budget_check_s: float = 10.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.retention_s = retention_s
        self.flush_interval_s = flush_interval_s
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        # PostgreSQL's check walks up to max_rows index entries: shared by every replica, so less often
        self.budget_check_s = budget_check_s if store.dialect == "sqlite" else max(budget_check_s, PRUNE_INTERVAL_S)
        self._buffer: deque[LogRecord] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._closed = False  # stopped: a record that cannot be written now never will be
        self._migrated = False
        self._last_prune = 0.0
        self._last_budget_check = 0.0
        self.written = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        metrics.pending.set_function(lambda: len(self._buffer))
        metrics.up.set_function(lambda: 1.0 if store.healthy else 0.0)

    def start(self) -> None:
        self._thread.start()

    def append(self, record: LogRecord) -> bool:
        """Queue one record; False (and counted) when the buffer is full."""
        with self._lock:
            if self._closed:
                reason = "shutdown"
            elif len(self._buffer) >= self.buffer_size:
                reason = "buffer_full"
            else:
                self._buffer.append(record)
                full_batch = len(self._buffer) >= self.batch_size
                reason = ""
        if reason:
            self.drop(reason)
            return False
        if record.repaired:
            self.metrics.repaired.inc()
        if full_batch:
            self._wake.set()
        return True

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` records that will never be written."""
        self.dropped += n
        self.metrics.dropped.labels(reason).inc(n)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is buffered (for at most ``timeout_s``), count what could not be, then close the store."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        elif self._thread.ident is None:  # never started: write here what was buffered
            self.flush()
        with self._lock:
            self._closed = True
            left = len(self._buffer)
            self._buffer.clear()
        if left:
            log.warning("prediction log: %d records could not be written before shutdown; dropped", left)
            self.drop("shutdown", left)
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

    def status(self) -> dict[str, Any]:
        """What readiness shows: whether the log's store answers (no location, no error text: it is public)."""
        return {
            "status": "ok" if self.store.healthy else "failing",
            "pending": len(self._buffer),
            "dropped": self.dropped,
        }

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.flush_interval_s
        while True:
            self._wake.wait(backoff)
            self._wake.clear()
            ok = self._schema_ready() and self.flush()
            if ok:
                self._housekeeping(time.time())
            # the gauges read these when scraped; with several processes the scrape reads shared files instead
            self.metrics.pending.set(len(self._buffer))
            self.metrics.up.set(1.0 if self.store.healthy else 0.0)
            if self._stopping:
                return
            backoff = self.flush_interval_s if ok else min(max(backoff * 2, 0.5), 5.0)

    def _schema_ready(self) -> bool:
        try:  # at start too, so the store's health (serving_prediction_log_up) is known before any traffic
            self.ensure_schema()
        except StoreUnavailable:
            return False
        return True

    def _write(self, batch: list[LogRecord]) -> bool:
        try:
            self.ensure_schema()
            # each statement is counted as it succeeds: a retried batch inserts (and counts) only what is new
            self._insert(_INSERT, [r.row for r in batch], count=True)
            self._insert(_FLAGS_UPSERT, _by_key([f for r in batch for f in r.flags]))
            self._insert(_DISAGREEMENT_UPSERT, _by_key([d for r in batch for d in r.disagreements]))
        except StoreUnavailable:
            if self._closed:
                self.drop("shutdown", len(batch))
                return False
            with self._lock:  # keep them for the next try, as far as the buffer has room
                room = self.buffer_size - len(self._buffer)
                kept = batch[len(batch) - max(room, 0) :] if room < len(batch) else batch
                lost = len(batch) - len(kept)
                self._buffer.extendleft(reversed(kept))
            if lost:
                self.drop("buffer_full", lost)
            return False
        return True

    def _storable(self, batch: list[LogRecord]) -> list[LogRecord]:
        """The records every backend can store; one with a NUL in its text is dropped alone, counted."""
        kept = []
        for record in batch:
            try:
                check_text(record.row)
            except InvalidValue:
                self.drop("invalid_text", 1)
                continue
            kept.append(record)
        return kept

    def _insert(self, sql: str, rows: Sequence[Row], count: bool = False) -> None:
        """Multi-row statements of a power-of-two number of rows, so the few statement texts stay cached."""
        if not rows:
            return
        marks = "(" + ", ".join("?" for _ in rows[0]) + ")"
        largest = min(_MAX_ROWS_PER_STATEMENT, _MAX_PARAMETERS.get(self.store.dialect, 999) // len(rows[0]))
        start = 0
        while start < len(rows):
            n = min(largest, 1 << ((len(rows) - start).bit_length() - 1))
            chunk = rows[start : start + n]
            inserted = self.store.execute(sql.format(values=", ".join([marks] * n)), [v for r in chunk for v in r])
            if count and inserted > 0:
                self.written += inserted
                self.metrics.written.inc(inserted)
            start += n

    # -- housekeeping: retention and the size budget --------------------------------------------

    def prune(self, now: float | None = None) -> None:
        """Remove now what is past the retention or over the size budget (blocking; raises StoreUnavailable).
        The writer thread does this on its own schedule."""
        now = time.time() if now is None else now
        self.ensure_schema()
        self._remove_before(now - self.retention_s, "retention")
        self._keep_within_budget()

    def _housekeeping(self, now: float) -> None:
        if not self._migrated:
            return
        try:
            if now - self._last_prune >= PRUNE_INTERVAL_S:
                self._last_prune = now
                self._remove_before(now - self.retention_s, "retention")
            if now - self._last_budget_check >= self.budget_check_s:
                self._last_budget_check = now
                self._keep_within_budget()
        except StoreUnavailable:
            return

    def _keep_within_budget(self) -> None:
        keep = self._rows_to_keep()
        if keep is None:
            return
        # the oldest record kept; everything older goes (records logged in the same instant go or stay together)
        row = self.store.query_one(
            f"SELECT created_at FROM {PREDICTIONS} ORDER BY created_at DESC LIMIT 1 OFFSET ?", (max(keep - 1, 0),)
        )
        if row is not None:
            cutoff = row["created_at"] if keep > 0 else math.inf
            self._remove_before(cutoff, "size")

    def _rows_to_keep(self) -> int | None:
        """How many of the newest records fit the budget, or None when the log is within it."""
        if self.store.dialect == "sqlite":
            # the file's used pages: pages freed by removing records are reused, so the file stays at the budget
            pages = self.store.query_one("PRAGMA page_count")
            free = self.store.query_one("PRAGMA freelist_count")
            size = self.store.query_one("PRAGMA page_size")
            assert pages is not None and free is not None and size is not None
            used = (int(pages["page_count"]) - int(free["freelist_count"])) * int(size["page_size"])
            if used <= self.max_bytes:
                return None
            counted = self.store.query_one(f"SELECT COUNT(*) AS n FROM {PREDICTIONS}")
            rows = int(counted["n"]) if counted is not None else 0
            return int(rows * BUDGET_TARGET * self.max_bytes / used)
        max_rows = self.max_rows or self._derived_max_rows()
        over = self.store.query_one(
            f"SELECT created_at FROM {PREDICTIONS} ORDER BY created_at DESC LIMIT 1 OFFSET ?", (max_rows,)
        )
        return int(max_rows * BUDGET_TARGET) if over is not None else None

    def _derived_max_rows(self) -> int:
        """max_bytes over the newest records' average size (their JSON, plus what each row costs beside it)."""
        row = self.store.query_one(
            "SELECT AVG(octet_length(inputs) + octet_length(outputs) + octet_length(ood)) AS bytes FROM "
            f"(SELECT inputs, outputs, ood FROM {PREDICTIONS} ORDER BY created_at DESC LIMIT {PG_SAMPLE_ROWS}) newest"
        )
        average = float(row["bytes"]) if row is not None and row["bytes"] is not None else 0.0
        return max(1, int(self.max_bytes // (average + PG_ROW_OVERHEAD_BYTES)))

    def _remove_before(self, cutoff: float, reason: str) -> None:
        """Records logged before ``cutoff``, with their feedback and review rows (feedback first: it names them)."""
        self.store.execute(
            f"DELETE FROM {FEEDBACK} WHERE received_at < ? OR request_id IN "
            f"(SELECT request_id FROM {PREDICTIONS} WHERE created_at < ?)",
            (cutoff, cutoff),
        )
        self.store.execute(f"DELETE FROM {REVIEW} WHERE created_at < ?", (cutoff,))
        removed = self.store.execute(f"DELETE FROM {PREDICTIONS} WHERE created_at < ?", (cutoff,))
        if removed > 0:
            self.metrics.pruned.labels(reason).inc(removed)
            log.info("prediction log: removed %d records (%s)", removed, reason)


def _by_key(rows: list[Row]) -> list[Row]:
    """Review rows with one per (request id, item), the last: one statement may not update a row twice."""
    if len(rows) < 2:
        return rows
    return list({(r[0], r[1]): r for r in rows}.values())
