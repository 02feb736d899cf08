"""The prediction log's tables, and the queries both halves run on them.

The service writes one row per logged request (``service.monitoring.log``)
and one per ground-truth answer (``service.monitoring.feedback``); the
training side reads them back (``python -m training drift``, ``python -m
training dataset`` through :func:`labelled_items`) without importing the
service. The tables live in a :mod:`bundle.store`: a SQLite
file of its own for one replica, or the shared PostgreSQL for many.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
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
    Migration(
        # Where an answer came from: a person in the review queue ("review") or a system through the feedback
        # API ("api"); answers stored before this step read as "api".
        "monitoring-4-feedback-source",
        """
        ALTER TABLE monitoring_feedback ADD COLUMN source TEXT NOT NULL DEFAULT 'api';
        CREATE INDEX IF NOT EXISTS monitoring_feedback_by_model ON monitoring_feedback (model, received_at)
        """,
    ),
]
FEEDBACK_SOURCES = ("review", "api")  # the review queue's people, the feedback API's systems

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


@dataclass(frozen=True)
class LabelledItem:
    """One served item with its ground truth: what the model saw and said, and what the answer was."""

    request_id: str
    item: int  # the item's index in its request
    model: str
    version: int
    served_at: float  # epoch seconds the prediction was made
    region: str
    label: str | None  # the ground truth (classification); None for regression
    value: float | None  # the ground truth (regression)
    source: str  # "review" (a person in the review queue) or "api" (a system, POST /v1/feedback)
    answered_at: float
    predicted: Any  # the served label, value or list of labels
    confidence: float | None  # the probability of the predicted label (classification)
    ood: bool  # flagged out of domain when served
    image: bytes | None  # the image's bytes when the log kept them (review items, a sample, or all)
    row: dict[str, Any] | None  # the table row (tabular models)
    chosen_for_review: bool  # the model itself sent it to review (out of domain or low confidence): a feedback loop


_LABELLED = f"""
SELECT f.request_id, f.item, f.label, f.value, f.source, f.received_at,
       p.created_at, p.model, p.version, p.region, p.inputs, p.outputs, p.ood,
       r.ood AS review_ood, r.low_confidence AS review_low_confidence
FROM {FEEDBACK} f
JOIN {PREDICTIONS} p ON p.request_id = f.request_id
LEFT JOIN {REVIEW} r ON r.request_id = f.request_id AND r.item = f.item
WHERE f.model = ?"""


def labelled_items(
    store: Store,
    model: str,
    since_s: float | None = None,
    region: str | None = None,
    version: int | None = None,
    sources: tuple[str, ...] = FEEDBACK_SOURCES,
    limit: int = 100_000,
    now: float | None = None,
) -> list[LabelledItem]:
    """Every served item of ``model`` that has ground truth, oldest first (raises StoreUnavailable).

    ``since_s`` keeps predictions served in the last so many seconds (before ``now``, default the clock);
    ``region``, ``version`` and ``sources`` (``review``, ``api``) filter. Images come back as bytes only where
    the log kept them (``SERVING_PREDICTION_LOG_IMAGES``); tabular items carry their row."""
    sql = _LABELLED
    params: list[Any] = [model]
    if since_s is not None:
        sql += " AND p.created_at >= ?"
        params.append((time.time() if now is None else now) - since_s)
    if region is not None:
        sql += " AND f.region = ?"
        params.append(region)
    if version is not None:
        sql += " AND f.version = ?"
        params.append(version)
    if not sources:
        return []
    sql += f" AND f.source IN ({', '.join('?' for _ in sources)})"
    params.extend(sources)
    sql += " ORDER BY p.created_at, f.request_id, f.item LIMIT ?"
    params.append(limit)
    return [_labelled(row) for row in store.query(sql, params)]


def _labelled(row: Any) -> LabelledItem:
    item = int(row["item"])
    inputs, outputs, oods = (json.loads(row[key]) for key in ("inputs", "outputs", "ood"))
    given = inputs[item] if item < len(inputs) else {}
    output = outputs[item] if item < len(outputs) else {}
    ood = oods[item] if item < len(oods) else None
    image, table_row = None, None
    if isinstance(given, dict) and "sha256" in given:
        image = _image(given.get("b64"))
    elif isinstance(given, dict):
        table_row = given
    predicted = output.get("label", output.get("labels", output.get("value")))
    probabilities = output.get("probabilities")
    confidence = None
    if isinstance(probabilities, dict) and isinstance(predicted, str) and predicted in probabilities:
        confidence = float(probabilities[predicted])
    return LabelledItem(
        request_id=row["request_id"],
        item=item,
        model=row["model"],
        version=int(row["version"]),
        served_at=float(row["created_at"]),
        region=row["region"],
        label=row["label"],
        value=None if row["value"] is None else float(row["value"]),
        source=row["source"],
        answered_at=float(row["received_at"]),
        predicted=predicted,
        confidence=confidence,
        ood=bool(isinstance(ood, dict) and ood.get("flagged")),
        image=image,
        row=table_row,
        chosen_for_review=bool(row["review_ood"] or row["review_low_confidence"]),
    )


def _image(b64: Any) -> bytes | None:
    if not isinstance(b64, str):
        return None
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
