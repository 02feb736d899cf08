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
COLUMNS = ("request_id", "created_at", "model", "version", "region", "arm", "inputs", "outputs", "ood", "latency_ms")

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
