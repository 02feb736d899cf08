"""The review queue: logged predictions a person should look at, newest first, until someone answers them.

An item is flagged when the service marked it out-of-domain (``ood``), its top probability is under
``LOW_CONFIDENCE`` (``low_confidence``), or the shadow candidate answered a copy of it differently
(``disagreement``, classification and multi-label); every other logged item is a ``sample``. The log writer
keeps one row per flagged item (``monitoring_review``), so the queue pages through every flagged item with
its real count, however much ordinary traffic came after. An item that has feedback is reviewed and leaves the
queue. Read by ``GET /v1/predictions`` and the ``/ui/review`` page.

Pages are keyset pages: newest first, ordered by (time, request id, item); ``next`` is an opaque cursor that
continues after the last item of the page, so items logged meanwhile never shift a page.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from bundle.prediction_log import FEEDBACK, PREDICTIONS, REVIEW
from bundle.store import Row, Store
from service.http.errors import InvalidInput

LOW_CONFIDENCE = 0.6
FLAGS = ("ood", "low_confidence", "disagreement")  # the review table's columns, one per reason
REASONS = (*FLAGS, "sample")


def item_reasons(output: dict[str, Any], ood: dict[str, Any] | None, low_confidence: float) -> list[str]:
    """Why a served item is flagged, as the prediction says (a shadow's disagreement comes later, on its own)."""
    reasons = []
    if ood and ood.get("flagged"):
        reasons.append("ood")
    probabilities = output.get("probabilities")
    if isinstance(probabilities, dict) and probabilities and "labels" not in output:
        if max(probabilities.values()) < low_confidence:
            reasons.append("low_confidence")
    return reasons or ["sample"]


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last item listed."""

    created_at: float
    request_id: str
    item: int

    def encode(self) -> str:
        text = json.dumps([self.created_at, self.request_id, self.item], separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            created_at, request_id, item = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            if isinstance(created_at, (int, float)) and isinstance(request_id, str) and type(item) is int:
                if request_id.isprintable() and len(request_id) <= 128 and 0 <= item < 2**31:
                    return cls(float(created_at), request_id, item)
        except (ValueError, TypeError, UnicodeDecodeError):
            pass
        raise InvalidInput("cursor: not a cursor this service gave; send the 'next' of the previous page")


@dataclass(frozen=True)
class QueueFilter:
    model: str | None = None
    version: int | None = None
    region: str | None = None
    reason: str | None = None  # decides on its own; without one, ``flagged`` chooses flagged or every item
    flagged: bool = True
    reviewed: bool = False

    def where(self, table: str) -> tuple[list[str], list[Any]]:
        clauses, params = [], []
        for column, value in (("model", self.model), ("version", self.version), ("region", self.region)):
            if value is not None:
                clauses.append(f"{table}.{column} = ?")
                params.append(value)
        return clauses, params


def review_queue(store: Store, queue: QueueFilter, limit: int = 50, cursor: Cursor | None = None) -> dict[str, Any]:
    """One page of the queue, its real size (``total``) and the cursor of the next page (blocking: run it in a
    thread)."""
    if queue.reason in FLAGS or (queue.reason is None and queue.flagged):
        page = _flagged_page(store, queue, limit, cursor)
        total = _flagged_count(store, queue, queue.reviewed)
    else:
        page = _logged_page(store, queue, limit, cursor)
        total = _logged_count(store, queue)
    _add_shadows(store, page)
    following = None
    if len(page) == limit:
        last = page[-1]
        following = Cursor(last["created_at"], last["request_id"], last["item"]).encode()
    return {"predictions": page, "total": total, "next": following}


# -- flagged items: the review table ------------------------------------------------------------------


def _flagged_where(queue: QueueFilter, reviewed: bool) -> tuple[str, list[Any]]:
    clauses, params = queue.where("r")
    if queue.reason in FLAGS:
        clauses.append(f"r.{queue.reason} = 1")
    answered = f"EXISTS (SELECT 1 FROM {FEEDBACK} f WHERE f.request_id = r.request_id AND f.item = r.item)"
    clauses.append(answered if reviewed else f"NOT {answered}")
    return " AND ".join(clauses), params


def _flagged_page(store: Store, queue: QueueFilter, limit: int, cursor: Cursor | None) -> list[dict[str, Any]]:
    where, params = _flagged_where(queue, queue.reviewed)
    if cursor is not None:
        where += (
            " AND (r.created_at < ? OR (r.created_at = ? AND (r.request_id < ? OR (r.request_id = ? AND r.item > ?))))"
        )
        params += [cursor.created_at, cursor.created_at, cursor.request_id, cursor.request_id, cursor.item]
    rows = store.query(
        "SELECT r.request_id, r.item, r.created_at, r.ood AS is_ood, r.low_confidence, r.disagreement, "
        "p.model, p.version, p.region, p.arm, p.inputs, p.outputs, p.ood "
        f"FROM {REVIEW} r JOIN {PREDICTIONS} p ON p.request_id = r.request_id WHERE {where} "
        "ORDER BY r.created_at DESC, r.request_id DESC, r.item ASC LIMIT ?",
        [*params, limit],
    )
    return [_entry(row, int(row["item"]), _flags(row), queue.reviewed, row["created_at"]) for row in rows]


def _flagged_count(store: Store, queue: QueueFilter, reviewed: bool) -> int:
    where, params = _flagged_where(queue, reviewed)
    found = store.query_one(
        f"SELECT COUNT(*) AS n FROM {REVIEW} r JOIN {PREDICTIONS} p ON p.request_id = r.request_id WHERE {where}",
        params,
    )
    return int(found["n"]) if found is not None else 0


def _flags(row: Row) -> list[str]:
    return [reason for reason, column in zip(FLAGS, ("is_ood", "low_confidence", "disagreement")) if row[column]]


# -- every logged item (flagged=false, reason=sample): the log itself ---------------------------------------


def _logged_where(queue: QueueFilter) -> tuple[list[str], list[Any]]:
    clauses, params = queue.where("p")
    clauses.append("p.shadow_of IS NULL")  # the candidate's answers to copies are shown beside the served ones
    return clauses, params


def _logged_page(store: Store, queue: QueueFilter, limit: int, cursor: Cursor | None) -> list[dict[str, Any]]:
    """Items of logged requests, newest first; the SQL picks requests with a matching item, Python the items."""
    clauses, params = _logged_where(queue)
    answers = f"(SELECT COUNT(*) FROM {FEEDBACK} f WHERE f.request_id = p.request_id)"
    clauses.append(f"{answers} > 0" if queue.reviewed else f"COALESCE(p.items, 1) > {answers}")
    if queue.reason == "sample":
        clauses.append(f"COALESCE(p.items, 1) > (SELECT COUNT(*) FROM {REVIEW} r WHERE r.request_id = p.request_id)")
    page: list[dict[str, Any]] = []
    after, within = cursor, True  # a client's cursor may end within a request: that request is read again
    while len(page) < limit:
        where, values = list(clauses), list(params)
        if after is not None:
            where.append(f"(p.created_at < ? OR (p.created_at = ? AND p.request_id {'<=' if within else '<'} ?))")
            values += [after.created_at, after.created_at, after.request_id]
        rows = store.query(
            "SELECT p.request_id, p.created_at, p.model, p.version, p.region, p.arm, p.inputs, p.outputs, p.ood "
            f"FROM {PREDICTIONS} p WHERE {' AND '.join(where)} "
            "ORDER BY p.created_at DESC, p.request_id DESC LIMIT ?",
            [*values, limit],
        )
        if not rows:
            break
        ids = [row["request_id"] for row in rows]
        answered = _keys(store, FEEDBACK, ids)
        flags = _review_flags(store, ids)
        for row in rows:
            key = row["request_id"]
            for item in range(len(json.loads(row["outputs"]))):
                if within and after is not None and key == after.request_id and item <= after.item:
                    continue
                reasons = flags.get((key, item), ["sample"])
                if ((key, item) in answered) != queue.reviewed or (queue.reason == "sample" and reasons != ["sample"]):
                    continue
                page.append(_entry(row, item, reasons, queue.reviewed, row["created_at"]))
                if len(page) == limit:
                    return page
        last = rows[-1]
        after, within = Cursor(last["created_at"], last["request_id"], 0), False
        if len(rows) < limit:
            break
    return page


def _logged_count(store: Store, queue: QueueFilter) -> int:
    clauses, params = _logged_where(queue)
    where = " AND ".join(clauses)
    items = store.query_one(f"SELECT SUM(COALESCE(p.items, 1)) AS n FROM {PREDICTIONS} p WHERE {where}", params)
    answered = store.query_one(
        f"SELECT COUNT(*) AS n FROM {FEEDBACK} f JOIN {PREDICTIONS} p ON p.request_id = f.request_id WHERE {where}",
        params,
    )
    logged = int(items["n"] or 0) if items is not None else 0
    reviewed = int(answered["n"]) if answered is not None else 0
    total = reviewed if queue.reviewed else logged - reviewed
    if queue.reason == "sample":  # every item but the flagged ones
        every = QueueFilter(queue.model, queue.version, queue.region, None, True, queue.reviewed)
        total -= _flagged_count(store, every, queue.reviewed)
    return max(total, 0)


def _keys(store: Store, table: str, ids: list[str]) -> set[tuple[str, int]]:
    marks = ", ".join("?" for _ in ids)
    rows = store.query(f"SELECT request_id, item FROM {table} WHERE request_id IN ({marks})", ids)
    return {(row["request_id"], int(row["item"])) for row in rows}


def _review_flags(store: Store, ids: list[str]) -> dict[tuple[str, int], list[str]]:
    marks = ", ".join("?" for _ in ids)
    rows = store.query(
        f"SELECT request_id, item, ood AS is_ood, low_confidence, disagreement FROM {REVIEW} "
        f"WHERE request_id IN ({marks})",
        ids,
    )
    return {(row["request_id"], int(row["item"])): _flags(row) or ["sample"] for row in rows}


# -- entries --------------------------------------------------------------------------------------------------


def _entry(row: Row, item: int, reasons: list[str], reviewed: bool, created_at: float) -> dict[str, Any]:
    return {
        "request_id": row["request_id"],
        "item": item,
        "created_at": created_at,
        "model": row["model"],
        "version": int(row["version"]),
        "region": row["region"],
        "arm": row["arm"],
        "reasons": reasons,
        "reviewed": reviewed,
        "inputs": json.loads(row["inputs"]),
        "outputs": json.loads(row["outputs"]),
        "ood": json.loads(row["ood"]),
    }


def _add_shadows(store: Store, page: list[dict[str, Any]]) -> None:
    """Beside each entry whose request was shadowed: the candidate's answer (``shadow``: version, outputs)."""
    ids = sorted({entry["request_id"] for entry in page})
    if not ids:
        return
    marks = ", ".join("?" for _ in ids)
    rows = store.query(f"SELECT shadow_of, version, outputs FROM {PREDICTIONS} WHERE shadow_of IN ({marks})", ids)
    shadows = {
        row["shadow_of"]: {"version": int(row["version"]), "outputs": json.loads(row["outputs"])} for row in rows
    }
    for entry in page:
        shadow = shadows.get(entry["request_id"])
        if shadow is not None:
            entry["shadow"] = shadow
