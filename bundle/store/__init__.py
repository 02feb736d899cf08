"""The state store: one small interface, two backends (an embedded SQLite file, or a shared PostgreSQL).

``open_store(url, default_path)`` picks the backend from a URL setting; see
:mod:`bundle.store.base` for the interface. Torch-free and service-free, so
the training side reads the prediction log through the same code.
"""

from __future__ import annotations

from pathlib import Path

from bundle.store.base import (
    DEFAULT_TIMEOUT_S,
    InvalidValue,
    Migration,
    Row,
    Store,
    StoreUnavailable,
    Transaction,
    check_text,
)
from bundle.store.postgres import PostgresStore, redacted
from bundle.store.redact import redact_location
from bundle.store.sqlite import SQLiteStore

__all__ = [
    "InvalidValue",
    "Migration",
    "PostgresStore",
    "Row",
    "SQLiteStore",
    "Store",
    "StoreUnavailable",
    "Transaction",
    "check_text",
    "open_store",
    "redact_location",
    "redacted",
]


def open_store(url: str | None, default_path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> Store:
    """The store ``url`` names: empty -> SQLite at ``default_path``; ``sqlite:///path``; ``postgresql://...``.

    ``timeout_s`` bounds every call (see :class:`bundle.store.base.Store`)."""
    if not url:
        return SQLiteStore(default_path, timeout_s)
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url[len("sqlite:///") :]), timeout_s)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, timeout_s)
    raise ValueError(f"state store URL must be empty, sqlite:///PATH or postgresql://...; got {redact_location(url)!r}")
