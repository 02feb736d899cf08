"""The review queue: logged predictions a person should look at, newest first, until someone answers them.

An item is flagged when the service marked it out-of-domain (``ood``) or its top probability is under
``low_confidence`` (``low_confidence``); every other logged item is a ``sample``. An item that has
feedback is reviewed and leaves the queue. Read by ``GET /v1/predictions`` and the ``/ui/review`` page.
"""

from __future__ import annotations

import json
from typing import Any

from bundle.prediction_log import FEEDBACK, PREDICTIONS
from bundle.store import Store

LOW_CONFIDENCE = 0.6
_SCAN_FACTOR = 5  # rows read per item asked for, so filtering in Python still fills the page


def item_reasons(output: dict[str, Any], ood: dict[str, Any] | None, low_confidence: float) -> list[str]:
    reasons = []
    if ood and ood.get("flagged"):
        reasons.append("ood")
    probabilities = output.get("probabilities")
    if isinstance(probabilities, dict) and probabilities and "labels" not in output:
        if max(probabilities.values()) < low_confidence:
            reasons.append("low_confidence")
    return reasons or ["sample"]


def review_queue(
    store: Store,
    *,
    model: str | None = None,
    version: int | None = None,
    region: str | None = None,
    reason: str | None = None,
    flagged: bool = True,
    reviewed: bool = False,
    limit: int = 50,
    low_confidence: float = LOW_CONFIDENCE,
) -> list[dict[str, Any]]:
    """One entry per logged item, newest first (blocking: run it in a thread)."""
    where, params = [], []
    for column, value in (("model", model), ("version", version), ("region", region)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    sql = f"SELECT request_id, created_at, model, version, region, arm, inputs, outputs, ood FROM {PREDICTIONS}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC LIMIT ?"
    rows = store.query(sql, (*params, limit * _SCAN_FACTOR))
    answered: set[tuple[str, int]] = set()
    if rows:
        marks = ", ".join("?" for _ in rows)
        found = store.query(
            f"SELECT request_id, item FROM {FEEDBACK} WHERE request_id IN ({marks})",
            [r["request_id"] for r in rows],
        )
        answered = {(f["request_id"], int(f["item"])) for f in found}
    queue: list[dict[str, Any]] = []
    for row in rows:
        outputs, oods = json.loads(row["outputs"]), json.loads(row["ood"])
        for item, output in enumerate(outputs):
            reasons = item_reasons(output, oods[item] if item < len(oods) else None, low_confidence)
            if flagged and reasons == ["sample"]:
                continue
            if reason is not None and reason not in reasons:
                continue
            if ((row["request_id"], item) in answered) != reviewed:
                continue
            queue.append(
                {
                    "request_id": row["request_id"],
                    "item": item,
                    "created_at": row["created_at"],
                    "model": row["model"],
                    "version": int(row["version"]),
                    "region": row["region"],
                    "arm": row["arm"],
                    "reasons": reasons,
                    "reviewed": reviewed,
                    "inputs": json.loads(row["inputs"]),
                    "outputs": outputs,
                    "ood": oods,
                }
            )
            if len(queue) >= limit:
                return queue
    return queue
