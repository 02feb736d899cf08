"""Labelled items from the prediction log: each logged prediction that got ground truth, with what it was.

A labelled item is one served item (not a shadow's answer to a copy) whose
answer arrived through ``POST /v1/feedback`` (a reviewer working the review
queue, or an outside system): the input (image bytes or a table row), the
answer, what the model predicted, and whether the model itself chose to show
it (the review queue's flags: out of domain, low confidence, a shadow's
disagreement). Where the log records where an answer came from (a ``source``
column), that is the source; otherwise an item the review queue listed counts
as ``review`` and any other as ``feedback``.

``predictions`` is a third source, off by default: logged items nobody
answered, labelled with the model's own answer. Training on it teaches the
model what it already says (the course's feedback loop), so it is only used
when asked for by name.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from bundle.prediction_log import FEEDBACK, PREDICTIONS, REVIEW, open_log
from bundle.store import StoreUnavailable

SOURCES = ("review", "feedback", "predictions")
HUMAN_SOURCES = ("review", "feedback")  # answers from people or outside systems: the default

_ANSWERED = f"""
SELECT f.request_id, f.item, f.version, f.region, f.label, f.value, f.received_at, p.created_at,
       p.inputs, p.outputs, p.ood, r.ood AS r_ood, r.low_confidence AS r_low, r.disagreement AS r_disagree,
       r.request_id AS r_id, f.*
FROM {FEEDBACK} f
JOIN {PREDICTIONS} p ON p.request_id = f.request_id AND p.shadow_of IS NULL
LEFT JOIN {REVIEW} r ON r.request_id = f.request_id AND r.item = f.item
WHERE f.model = ? AND f.received_at >= ? AND f.received_at < ?
"""

_UNANSWERED = f"""
SELECT p.request_id, p.version, p.region, p.created_at, p.inputs, p.outputs, p.ood
FROM {PREDICTIONS} p
WHERE p.model = ? AND p.shadow_of IS NULL AND p.created_at >= ? AND p.created_at < ?
"""


class LogReadError(ValueError):
    """The prediction log could not be opened or read (the message names ``--log``)."""


@dataclass
class LabelledItem:
    request_id: str
    item: int
    version: int
    region: str
    served_at: float
    answered_at: float | None
    source: str  # review | feedback | predictions
    label: Any  # the answer: a class name, a list of them (multi-label) or a number (regression)
    predicted: Any
    confidence: float | None
    reasons: list[str] = field(default_factory=list)  # why the model chose to show it: ood, low_confidence, ...
    image: bytes | None = None
    row: dict[str, Any] | None = None
    has_input: bool = True  # False: an image logged without its bytes

    @property
    def chosen_by_model(self) -> bool:
        return bool(self.reasons)


def read_labelled(
    log: str,
    model: str,
    since: float,
    until: float,
    region: str | None = None,
    sources: tuple[str, ...] = HUMAN_SOURCES,
) -> list[LabelledItem]:
    """The model's labelled items whose answers arrived in ``[since, until)`` (epoch seconds), oldest first.

    ``predictions`` in ``sources`` adds the items served in that window that nobody answered, labelled with
    what the model said (the feedback loop the default avoids).
    """
    try:
        store = open_log(log)
    except FileNotFoundError as exc:
        raise LogReadError(f"--log: {exc}") from None
    try:
        items = [_answered(row) for row in store.query(_ANSWERED, [model, since, until])]
        items = [item for item in items if item is not None]
        if "predictions" in sources:
            answered = {(i.request_id, i.item) for i in items}
            for row in store.query(_UNANSWERED, [model, since, until]):
                items.extend(i for i in _unanswered(row) if (i.request_id, i.item) not in answered)
    except StoreUnavailable as exc:
        raise LogReadError(f"--log: cannot read the prediction log: {exc}") from exc
    finally:
        store.close()
    if region is not None:
        items = [i for i in items if i.region == region]
    items = [i for i in items if i.source in sources]
    return sorted(items, key=lambda i: (i.answered_at or i.served_at, i.request_id, i.item))


def _answered(row: dict[str, Any]) -> LabelledItem | None:
    index = int(row["item"])
    inputs, outputs, oods = (json.loads(row[k] or "[]") for k in ("inputs", "outputs", "ood"))
    if index >= len(outputs):
        return None
    reasons = [
        name
        for name, key in (("ood", "r_ood"), ("low_confidence", "r_low"), ("disagreement", "r_disagree"))
        if row.get(key)
    ]
    # the log records who answered (review: the review queue; api: a system); logs from before it, by the queue
    source = row.get("source") or ("review" if row.get("r_id") else "api")
    source = "review" if source == "review" else "feedback"
    label: Any = row["label"]
    if row.get("value") is not None and label is None:
        label = float(row["value"])
    elif isinstance(label, str) and label.startswith("["):
        label = json.loads(label)  # a multi-label answer is stored as its JSON list
    item = LabelledItem(
        request_id=row["request_id"],
        item=index,
        version=int(row["version"]),
        region=row["region"],
        served_at=float(row["created_at"]),
        answered_at=float(row["received_at"]),
        source=source,
        label=label,
        predicted=_predicted(outputs[index]),
        confidence=_confidence(outputs[index]),
        reasons=reasons,
    )
    _attach_input(item, inputs[index] if index < len(inputs) else None)
    if not reasons and index < len(oods) and isinstance(oods[index], dict) and oods[index].get("flagged"):
        item.reasons = ["ood"]
    return item


def _unanswered(row: dict[str, Any]) -> list[LabelledItem]:
    inputs, outputs, oods = (json.loads(row[k] or "[]") for k in ("inputs", "outputs", "ood"))
    items = []
    for index, output in enumerate(outputs):
        predicted = _predicted(output)
        if predicted is None:
            continue
        ood = oods[index] if index < len(oods) and isinstance(oods[index], dict) else {}
        item = LabelledItem(
            request_id=row["request_id"],
            item=index,
            version=int(row["version"]),
            region=row["region"],
            served_at=float(row["created_at"]),
            answered_at=None,
            source="predictions",
            label=predicted,
            predicted=predicted,
            confidence=_confidence(output),
            reasons=["ood"] if ood.get("flagged") else [],
        )
        _attach_input(item, inputs[index] if index < len(inputs) else None)
        items.append(item)
    return items


def _attach_input(item: LabelledItem, logged: Any) -> None:
    if not isinstance(logged, dict):
        item.has_input = False
    elif "sha256" in logged and "bytes" in logged:  # an image: its bytes only when the log kept them
        if isinstance(logged.get("b64"), str):
            item.image = base64.b64decode(logged["b64"])
        else:
            item.has_input = False
    else:
        item.row = logged


def _predicted(output: dict[str, Any]) -> Any:
    for key in ("label", "labels", "value"):
        if key in output:
            return output[key]
    return None


def _confidence(output: dict[str, Any]) -> float | None:
    probabilities = output.get("probabilities")
    if isinstance(probabilities, dict) and probabilities and "labels" not in output:
        return float(max(probabilities.values()))
    return None
