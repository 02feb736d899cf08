"""What monitoring receives of one answered request, and what it queues for its worker."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.codecs.decoded import RawInputs

if TYPE_CHECKING:
    from service.models.version import ModelVersion
    from service.monitoring.state import VersionState


@dataclass
class ServedRequest:
    """One answered request, as the predict pipeline hands it to the monitor (every protocol alike)."""

    version: ModelVersion
    region: str
    arm: str  # stable, candidate, pinned (or shadow)
    request_id: str
    latency_s: float
    raw: RawInputs  # the inputs as sent
    arrays: list[np.ndarray]  # the model's input arrays
    output: np.ndarray  # the model's first output, one row per item
    predictions: list[dict[str, Any]]  # the encoded predictions; ``ood`` is added to each
    logits: np.ndarray | None = None  # the graph's logits output, where it has one (the energy score)
    columns: np.ndarray | None = None  # monitoring's per-batch columns for these items (service.monitoring.batch)
    client_request_id: str | None = None  # the client's X-Request-Id, logged beside the service's id


@dataclass
class Observation:
    """What one successful request leaves for the worker."""

    state: VersionState
    region: str
    arm: str
    request_id: str
    created_at: float
    latency_ms: float
    output: np.ndarray
    predictions: list[dict[str, Any]]
    summaries: list[list[float]] | None  # each image's summaries, in bundle.monitoring.SUMMARY_KEYS order
    columns: Mapping[str, np.ndarray] | None  # the raw table, one array per column
    images: list[bytes] | None
    logged: bool
    rows: list[Any] | None = None  # the JSON rows as sent, where the table came as JSON
    client_request_id: str | None = None
