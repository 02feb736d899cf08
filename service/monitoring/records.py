"""Prediction log records: one row per logged request, as ``bundle.prediction_log.COLUMNS`` lays them out."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import pandas as pd

from bundle import monitoring as mon
from service.monitoring.observation import Observation

Record = tuple[Any, ...]  # the values of bundle.prediction_log.COLUMNS, in order


def log_record(o: Observation, keep_images: bool, image_max_bytes: int) -> Record:
    """The log row of one observation; images are logged by digest, size and summaries (their bytes when
    ``keep_images`` and no larger than ``image_max_bytes``)."""
    if o.rows is not None:
        inputs: Any = o.rows
    elif o.columns is not None:
        inputs = table_records(o.columns)
    else:
        inputs = []
        for i, data in enumerate(o.images or []):
            item: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            if o.summaries is not None:
                item.update(zip(mon.SUMMARY_KEYS, o.summaries[i]))
            if keep_images and len(data) <= image_max_bytes:
                item["b64"] = base64.b64encode(data).decode("ascii")
            inputs.append(item)
    outputs = [p.copy() for p in o.predictions]  # copy and pop: C calls, not a Python loop over keys
    for p in outputs:
        p.pop("ood", None)
    ood = [p.get("ood") for p in o.predictions]
    dumps = orjson.dumps
    return (
        o.request_id,
        o.created_at,
        o.state.name,
        o.state.version,
        o.region,
        o.arm,
        dumps(inputs, default=str).decode(),
        dumps(outputs).decode(),
        dumps(ood).decode(),
        o.latency_ms,
    )


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
