"""Prediction log records: one row per logged request, as ``bundle.prediction_log.COLUMNS`` lays them out, and
the review rows of its flagged items.

Inputs are the client's data, and JSON cannot carry all of what a client can send (a lone surrogate such as
``"\\ud800"``, an integer past 64 bits): such a value is repaired (the surrogate becomes U+FFFD, the integer its
decimal text) and the record says so; one that still cannot be encoded raises :class:`Unencodable`, for that
record alone.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd

from bundle import monitoring as mon
from service.monitoring.observation import Observation
from service.monitoring.review import LOW_CONFIDENCE, item_reasons

Row = tuple[Any, ...]  # the values of bundle.prediction_log.COLUMNS (or REVIEW_COLUMNS), in order

_INT64 = (-(2**63), 2**63 - 1)


class Unencodable(ValueError):
    """A record that cannot be written as JSON even after repair."""


@dataclass(frozen=True)
class LogRecord:
    """One row of the log, the review rows of its flagged items, and the stable items a shadow record disagrees on."""

    row: Row
    flags: list[Row] = field(default_factory=list)  # served items that are out of domain or of low confidence
    disagreements: list[Row] = field(default_factory=list)  # the stable request's items the candidate disagreed on
    repaired: bool = False


def log_record(
    o: Observation, images: str, image_max_bytes: int, sample: float = 0.0, draw: Callable[[], float] = random.random
) -> LogRecord:
    """The log record of one observation; images are logged by digest, size and summaries, and with their bytes
    (no larger than ``image_max_bytes``) as ``images`` says: ``all``, ``none``, or ``sample``: the items flagged
    for review and a ``sample`` share of the others (``draw`` in [0, 1) below it)."""
    outputs = [p.copy() for p in o.predictions]  # copy and pop: C calls, not a Python loop over keys
    for p in outputs:
        p.pop("ood", None)
    ood = [p.get("ood") for p in o.predictions]
    name, version = o.state.name, o.state.version
    flags = []
    for index, (output, item_ood) in enumerate(zip(outputs, ood)):
        reasons = item_reasons(output, item_ood, LOW_CONFIDENCE)
        if reasons != ["sample"]:
            flags.append(
                (o.request_id, index, o.created_at, name, version, o.region, o.arm)
                + (int("ood" in reasons), int("low_confidence" in reasons), 0)
            )
    if o.rows is not None:
        inputs: Any = o.rows
    elif o.columns is not None:
        inputs = table_records(o.columns)
    else:
        flagged = {flag[1] for flag in flags}
        inputs = []
        for i, data in enumerate(o.images or []):
            item: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            if o.summaries is not None:
                item.update(zip(mon.SUMMARY_KEYS, o.summaries[i]))
            if len(data) <= image_max_bytes and keeps_image(images, i in flagged, sample, draw):
                item["b64"] = base64.b64encode(data).decode("ascii")
            inputs.append(item)
    (inputs_text, outputs_text, ood_text), repaired = encoded((inputs, outputs, ood))
    row: Row = (o.request_id, o.created_at, name, version, o.region, o.arm, inputs_text, outputs_text, ood_text)
    row += (o.latency_ms, o.client_request_id, None, len(outputs))
    return LogRecord(row, flags, [], repaired)


def keeps_image(images: str, flagged: bool, sample: float, draw: Callable[[], float]) -> bool:
    """Whether an image's bytes are logged: every one (``all``), none, or the flagged ones and a sample."""
    if images == "all":
        return True
    if images == "none":
        return False
    return flagged or (sample > 0 and draw() < sample)


def shadow_record(
    request_id: str,
    created_at: float,
    stable: tuple[str, int, str, str],
    candidate_version: int,
    stable_of: str,
    disagreed: Sequence[int],
    predictions: list[dict[str, Any]],
) -> LogRecord:
    """The candidate's answer to a copy of request ``stable_of`` (arm ``shadow``), and review rows flagging the
    stable items it disagreed on. ``stable`` is (model, version, region, arm) of the answer that was served;
    the inputs are that request's, so they are not logged twice."""
    model, version, region, arm = stable
    (outputs_text,), repaired = encoded((predictions,))
    row: Row = (request_id, created_at, model, candidate_version, region, "shadow", "[]", outputs_text, "[]", None)
    row += (None, stable_of, len(predictions))
    flags = [(stable_of, item, created_at, model, version, region, arm, 0, 0, 1) for item in disagreed]
    return LogRecord(row, [], flags, repaired)


def encoded(values: tuple[Any, ...]) -> tuple[tuple[str, ...], bool]:
    """Each value as JSON text, and whether any had to be repaired first; raises Unencodable."""
    try:
        return tuple(_json(v) for v in values), False
    except (orjson.JSONEncodeError, TypeError):
        pass
    try:
        return tuple(_json(_repaired(v)) for v in values), True
    except (orjson.JSONEncodeError, TypeError, ValueError, RecursionError) as exc:
        raise Unencodable(str(exc)) from exc


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _repaired(value: Any) -> Any:
    """``value`` with what JSON cannot carry replaced: lone surrogates by U+FFFD, integers past 64 bits by text."""
    if isinstance(value, str):
        # UTF-16 pairs the surrogates that belong together and replaces the lone ones
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else str(value)
    if isinstance(value, Mapping):
        return {_repaired(str(k)): _repaired(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_repaired(v) for v in value]
    return value  # anything else is written as its str() (orjson's default), which a str can always carry


def table_records(columns: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """The table as one JSON object per row, missing values (None, NaN, pd.NA) as null."""
    names = list(columns)
    values = []
    for name in names:
        column = np.asarray(columns[name])
        missing = pd.isna(column)
        column = column.astype(object)
        column[missing] = None
        values.append(column.tolist())
    return [dict(zip(names, row)) for row in zip(*values)]
