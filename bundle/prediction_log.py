"""The prediction log's tables, and the queries both halves run on them.

The service writes one row per logged request (``service.monitoring.log``)
and one per ground-truth answer (``service.monitoring.feedback``); the
training side reads them back (``python -m training drift``) without
importing the service. The tables live in a :mod:`bundle.store`: a SQLite
file of its own for one replica, or the shared PostgreSQL for many.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bundle.store import Migration, Store, open_store

PREDICTIONS = "monitoring_predictions"
FEEDBACK = "monitoring_feedback"
REVIEW = "monitoring_review"
# request_id is always an id the service made (the key); client_request_id is the client's X-Request-Id, a label.
# A shadow record (arm "shadow") is the candidate's answer to a copy of the request named by shadow_of.
COLUMNS = (
    "request_id",
    "created_at",
    "model",
    "version",
    "region",
    "arm",
    "inputs",
    "outputs",
    "ood",
    "latency_ms",
    "client_request_id",
    "shadow_of",
    "items",
)
# One row per flagged item (out of domain, low confidence, shadow disagreement): the review queue pages these.
REVIEW_COLUMNS = (
    "request_id",
    "item",
    "created_at",
    "model",
    "version",
    "region",
    "arm",
    "ood",
    "low_confidence",
    "disagreement",
)

# The log's schema, in order. Append new steps at the end; never edit an applied one.
MIGRATIONS: list[Migration] = [
    Migration(
        "monitoring-1-prediction-log",
        """
        CREATE TABLE IF NOT EXISTS monitoring_predictions (
            request_id TEXT PRIMARY KEY,
            created_at DOUBLE PRECISION NOT NULL,
            model TEXT NOT NULL,
            version BIGINT NOT NULL,
            region TEXT NOT NULL,
            arm TEXT NOT NULL,
            inputs TEXT NOT NULL,
            outputs TEXT NOT NULL,
            ood TEXT NOT NULL,
            latency_ms DOUBLE PRECISION
        );
        CREATE INDEX IF NOT EXISTS monitoring_predictions_by_model ON monitoring_predictions (model, version, created_at);
        CREATE INDEX IF NOT EXISTS monitoring_predictions_by_time ON monitoring_predictions (created_at)
        """,
    ),
    Migration(
        "monitoring-2-feedback",
        """
        CREATE TABLE IF NOT EXISTS monitoring_feedback (
            request_id TEXT NOT NULL,
            item BIGINT NOT NULL,
            model TEXT NOT NULL,
            version BIGINT NOT NULL,
            region TEXT NOT NULL,
            label TEXT,
            value DOUBLE PRECISION,
            correct BIGINT,
            error DOUBLE PRECISION,
            received_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (request_id, item)
        )
        """,
    ),
    Migration(
        # Records logged before this step have no item count (the review queue's total counts them as one item)
        # and no review rows (they are listed with flagged=false).
        "monitoring-3-client-ids-shadows-review",
        """
        ALTER TABLE monitoring_predictions ADD COLUMN client_request_id TEXT;
        ALTER TABLE monitoring_predictions ADD COLUMN shadow_of TEXT;
        ALTER TABLE monitoring_predictions ADD COLUMN items BIGINT;
        CREATE INDEX IF NOT EXISTS monitoring_predictions_by_shadow_of
            ON monitoring_predictions (shadow_of) WHERE shadow_of IS NOT NULL;
        CREATE TABLE IF NOT EXISTS monitoring_review (
            request_id TEXT NOT NULL,
            item BIGINT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            model TEXT NOT NULL,
            version BIGINT NOT NULL,
            region TEXT NOT NULL,
            arm TEXT NOT NULL,
            ood BIGINT NOT NULL DEFAULT 0,
            low_confidence BIGINT NOT NULL DEFAULT 0,
            disagreement BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (request_id, item)
        );
        CREATE INDEX IF NOT EXISTS monitoring_review_by_time ON monitoring_review (created_at, request_id, item);
        CREATE INDEX IF NOT EXISTS monitoring_feedback_by_time ON monitoring_feedback (received_at)
        """,
    ),
]

_URL_PREFIXES = ("postgresql://", "postgres://", "sqlite:///")


def open_log(location: str) -> Store:
    """The store behind a log given as a file path or a URL (``postgresql://...``, ``sqlite:///...``)."""
    if location.startswith(_URL_PREFIXES):
        return open_store(location, Path("unused"))
    if not Path(location).is_file():
        raise FileNotFoundError(f"{location} is neither a prediction log file nor a postgresql:// URL")
    return open_store("", Path(location))


def logged_inputs(
    store: Store,
    model: str,
    version: int,
    since_s: float | None = None,
    region: str | None = None,
    limit: int = 100_000,
) -> list[dict[str, Any]]:
    """The input items of one version's logged predictions, newest first (raises StoreUnavailable)."""
    sql = f"SELECT inputs FROM {PREDICTIONS} WHERE model = ? AND version = ?"
    params: list[Any] = [model, version]
    if since_s is not None:
        sql += " AND created_at >= ?"
        params.append(time.time() - since_s)
    if region is not None:
        sql += " AND region = ?"
        params.append(region)
    sql += " ORDER BY created_at DESC LIMIT ?"
    params.append(limit)
    items: list[dict[str, Any]] = []
    for row in store.query(sql, params):
        for item in json.loads(row["inputs"]):
            items.append(item)
            if len(items) >= limit:
                return items
    return items
