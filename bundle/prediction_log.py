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
    label: str | list[str] | None  # the ground truth: a class, or a multi-label answer's classes; None for regression
    value: float | None  # the ground truth (regression)
    source: str  # "review" (the review queue), "api" (a system, POST /v1/feedback) or "predictions" (see below)
    answered_at: float | None  # None for a "predictions" item: nobody answered it
    predicted: Any  # the served label, value or list of labels
    confidence: float | None  # the probability of the predicted label (classification)
    ood: bool  # flagged out of domain when served
    reasons: tuple[str, ...]  # why the model itself chose to show it: ood, low_confidence, disagreement
    image: bytes | None  # the image's bytes when the log kept them (review items, a sample, or all)
    row: dict[str, Any] | None  # the table row (tabular models)

    @property
    def answer(self) -> Any:
        """The ground truth, whichever the task: a class, a list of classes or a number."""
        return self.value if self.label is None else self.label

    @property
    def chosen_by_model(self) -> bool:
        """The model sent it to review itself: answers to these are a selection the model made (a feedback loop)."""
        return bool(self.reasons)

    @property
    def has_input(self) -> bool:
        """False for an image logged without its bytes: nothing to learn from."""
        return self.image is not None or self.row is not None


# f.* last: a log from before "monitoring-4-feedback-source" has no source column, and the row then has no "source"
_ANSWERED = f"""
SELECT p.created_at, p.model, p.inputs, p.outputs, p.ood, r.request_id AS r_id, r.ood AS r_ood,
       r.low_confidence AS r_low, r.disagreement AS r_disagree, f.*
FROM {FEEDBACK} f
JOIN {PREDICTIONS} p ON p.request_id = f.request_id AND p.shadow_of IS NULL
LEFT JOIN {REVIEW} r ON r.request_id = f.request_id AND r.item = f.item
WHERE f.model = ? AND f.received_at < ?"""
_UNANSWERED = f"""
SELECT p.request_id, p.created_at, p.model, p.version, p.region, p.inputs, p.outputs, p.ood
FROM {PREDICTIONS} p
WHERE p.model = ? AND p.shadow_of IS NULL AND p.created_at < ?"""


def labelled_items(
    store: Store,
    model: str,
    since_s: float | None = None,
    region: str | None = None,
    version: int | None = None,
    sources: tuple[str, ...] = FEEDBACK_SOURCES,
    limit: int | None = 100_000,
    until: float | None = None,
) -> list[LabelledItem]:
    """The served items of ``model`` that have ground truth, oldest answer first (raises StoreUnavailable).

    The window is when the answer arrived: ``since_s`` seconds before ``until`` (epoch seconds, default the
    clock; no start without ``since_s``), ``until`` itself left out. ``region``, ``version`` and ``sources``
    filter; ``limit`` keeps the newest (None: all). ``sources`` are the log's: ``review``, ``api`` and, only when named,
    ``predictions``: the items served in the window that nobody answered, labelled with the model's own answer
    (training on them teaches the model what it already says). Images come back as bytes only where the log
    kept them (``SERVING_PREDICTION_LOG_IMAGES``); tabular items carry their row."""
    end = time.time() if until is None else until
    start = None if since_s is None else end - since_s

    def filters(table: str) -> list[tuple[str, Any]]:
        return [(f"{table}.region =", region), (f"{table}.version =", version)]

    answered = [
        item
        for row in store.query(*_where(_ANSWERED, [model, end], [("f.received_at >=", start), *filters("f")]))
        if (item := _answered(row)) is not None
    ]
    items = [i for i in answered if i.source in sources]
    if "predictions" in sources:
        keys = {(i.request_id, i.item) for i in answered}
        for row in store.query(*_where(_UNANSWERED, [model, end], [("p.created_at >=", start), *filters("p")])):
            items.extend(i for i in _unanswered(row) if (i.request_id, i.item) not in keys)
    items.sort(key=lambda i: (i.answered_at or i.served_at, i.request_id, i.item))
    return items if limit is None else items[max(len(items) - limit, 0) :]


def _where(sql: str, params: list[Any], conditions: list[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """``sql`` and ``params`` with each condition whose value is not None added."""
    for condition, value in conditions:
        if value is not None:
            sql += f" AND {condition} ?"
            params = [*params, value]
    return sql, params


def _answered(row: dict[str, Any]) -> LabelledItem | None:
    index = int(row["item"])
    inputs, outputs, oods = (json.loads(row[key] or "[]") for key in ("inputs", "outputs", "ood"))
    if index >= len(outputs):
        return None
    reasons = tuple(
        name
        for name, key in (("ood", "r_ood"), ("low_confidence", "r_low"), ("disagreement", "r_disagree"))
        if row.get(key)
    )
    ood = _flagged(oods, index)
    label = row["label"]
    if isinstance(label, str) and label.startswith("["):
        label = json.loads(label)  # a multi-label answer is stored as its JSON list
    # a log from before the source column: the review queue's items count as answered there
    source = row.get("source") or ("review" if row.get("r_id") else "api")
    return LabelledItem(
        request_id=row["request_id"],
        item=index,
        model=row["model"],
        version=int(row["version"]),
        served_at=float(row["created_at"]),
        region=row["region"],
        label=label,
        value=None if row["value"] is None else float(row["value"]),
        source="review" if source == "review" else "api",
        answered_at=float(row["received_at"]),
        predicted=_predicted(outputs[index]),
        confidence=_confidence(outputs[index]),
        ood=ood,
        reasons=reasons or (("ood",) if ood else ()),
        **_logged_input(inputs[index] if index < len(inputs) else None),
    )


def _unanswered(row: dict[str, Any]) -> list[LabelledItem]:
    inputs, outputs, oods = (json.loads(row[key] or "[]") for key in ("inputs", "outputs", "ood"))
    items = []
    for index, output in enumerate(outputs):
        predicted = _predicted(output)
        if predicted is None:
            continue
        ood = _flagged(oods, index)
        number = isinstance(predicted, int | float) and not isinstance(predicted, bool)
        items.append(
            LabelledItem(
                request_id=row["request_id"],
                item=index,
                model=row["model"],
                version=int(row["version"]),
                served_at=float(row["created_at"]),
                region=row["region"],
                label=None if number else predicted,
                value=float(predicted) if number else None,
                source="predictions",
                answered_at=None,
                predicted=predicted,
                confidence=_confidence(output),
                ood=ood,
                reasons=("ood",) if ood else (),
                **_logged_input(inputs[index] if index < len(inputs) else None),
            )
        )
    return items


def _logged_input(logged: Any) -> dict[str, Any]:
    """The image's bytes (when the log kept them) or the table row."""
    if not isinstance(logged, dict):
        return {"image": None, "row": None}
    if "sha256" in logged and "bytes" in logged:
        return {"image": _image(logged.get("b64")), "row": None}
    return {"image": None, "row": logged}


def _flagged(oods: list[Any], index: int) -> bool:
    ood = oods[index] if index < len(oods) else None
    return bool(isinstance(ood, dict) and ood.get("flagged"))


def _predicted(output: dict[str, Any]) -> Any:
    return next((output[key] for key in ("label", "labels", "value") if key in output), None)


def _confidence(output: dict[str, Any]) -> float | None:
    probabilities, predicted = output.get("probabilities"), output.get("label")
    if isinstance(probabilities, dict) and isinstance(predicted, str) and predicted in probabilities:
        return float(probabilities[predicted])
    return None


def _image(b64: Any) -> bytes | None:
    if not isinstance(b64, str):
        return None
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
