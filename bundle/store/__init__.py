"""The state store: one small interface, two backends (an embedded SQLite file, or a shared PostgreSQL).

``open_store(url, default_path)`` picks the backend from a URL setting; see
:mod:`bundle.store.base` for the interface. Torch-free and service-free, so
the training side reads the prediction log through the same code.
"""

from __future__ import annotations

from pathlib import Path

from bundle.store.base import Migration, Row, Store, StoreUnavailable
from bundle.store.postgres import PostgresStore, redacted
from bundle.store.sqlite import SQLiteStore

__all__ = ["Migration", "PostgresStore", "Row", "SQLiteStore", "Store", "StoreUnavailable", "open_store", "redacted"]


def open_store(url: str | None, default_path: Path) -> Store:
    """The store ``url`` names: empty -> SQLite at ``default_path``; ``sqlite:///path``; ``postgresql://...``."""
    if not url:
        return SQLiteStore(default_path)
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url[len("sqlite:///") :]))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise ValueError(f"state store URL must be empty, sqlite:///PATH or postgresql://...; got {redacted(url)!r}")
