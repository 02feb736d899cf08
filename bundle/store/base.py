"""The store's common half: one small interface (plain SQL with ``?`` placeholders), migrations once, health kept.

Everything that must outlive a process or be shared by replicas lives in a
store: rollout state and its audit trail, the prediction log, feedback. One
replica needs nothing running (a SQLite file, :mod:`bundle.store.sqlite`);
many replicas share one PostgreSQL database (:mod:`bundle.store.postgres`).
Portable types only: TEXT, BIGINT, DOUBLE PRECISION (times are epoch
seconds), JSON as TEXT. Where the dialects differ (auto-increment keys), a
:class:`Migration` carries both. Each table's owner keeps its migrations and
hands them to :meth:`Store.migrate`, which applies the new ones in order,
once, recorded in ``schema_migrations``.

Calls block: run them off the event loop (``asyncio.to_thread``). Every
driver error surfaces as :class:`StoreUnavailable`, and the store remembers
its health (``healthy``, ``last_error``) so callers can keep serving on
their last known state and report it, never failing a prediction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("bundle.store")

Row = dict[str, Any]
T = TypeVar("T")


class StoreUnavailable(Exception):
    """The store could not be reached or the statement failed; the caller keeps its last known state."""


@dataclass(frozen=True)
class Migration:
    """One schema step. ``postgres`` overrides ``sql`` where the dialects differ."""

    id: str
    sql: str
    postgres: str | None = None

    def for_dialect(self, dialect: str) -> str:
        return self.postgres if dialect == "postgresql" and self.postgres is not None else self.sql


class Store:
    """The common half: health bookkeeping and migrations; backends supply ``_run`` and ``_run_many``."""

    dialect = ""

    def __init__(self) -> None:
        self.healthy = True
        self.last_error: str | None = None
        self.last_ok_at: float | None = None
        self._lock = threading.Lock()

    # -- the interface ---------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        return self._guard(lambda: self._run(sql, params, fetch=False))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for many parameter rows, in one transaction."""
        rows = list(rows)
        if rows:
            self._guard(lambda: self._run_many(sql, rows))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Rows as dicts keyed by column name."""
        return self._guard(lambda: self._run(sql, params, fetch=True))

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def migrate(self, migrations: Sequence[Migration]) -> list[str]:
        """Apply the steps of ``migrations`` not applied yet, in order; returns their ids."""
        steps = list(migrations)
        return self._guard(lambda: self._migrate(steps))

    def ping(self) -> bool:
        """Check the connection (and reconnect); updates ``healthy``."""
        try:
            self.query("SELECT 1 AS ok")
        except StoreUnavailable:
            return False
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.dialect,
            "location": self.location(),
            "healthy": self.healthy,
            "last_error": self.last_error,
            "last_ok_at": self.last_ok_at,
        }

    def close(self) -> None:  # pragma: no cover - backends override
        pass

    def location(self) -> str:  # pragma: no cover - backends override
        return ""

    # -- shared machinery ------------------------------------------------------------------

    def _guard(self, call: Any) -> Any:
        with self._lock:
            try:
                result = call()
            except self._driver_errors() as exc:
                self._broken(exc)
                if self.healthy or self.last_error != _one_line(exc):
                    log.warning("state store %s unavailable: %s", self.location(), _one_line(exc))
                self.healthy = False
                self.last_error = _one_line(exc)
                raise StoreUnavailable(self.last_error) from exc
            if not self.healthy:
                log.info("state store %s is reachable again", self.location())
            self.healthy = True
            self.last_error = None
            self.last_ok_at = time.time()
            return result

    def _migrate(self, steps: list[Migration]) -> list[str]:
        self._begin_migration()
        try:
            self._run(
                "CREATE TABLE IF NOT EXISTS schema_migrations (id TEXT PRIMARY KEY, applied_at DOUBLE PRECISION)",
                (),
                fetch=False,
            )
            done = {row["id"] for row in self._run("SELECT id FROM schema_migrations", (), fetch=True)}
            applied = []
            for step in steps:
                if step.id in done:
                    continue
                self._run_script(step.for_dialect(self.dialect))
                self._run(
                    "INSERT INTO schema_migrations (id, applied_at) VALUES (?, ?)", (step.id, time.time()), fetch=False
                )
                applied.append(step.id)
                log.info("state store %s: applied migration %s", self.location(), step.id)
            return applied
        finally:
            self._end_migration()

    def _run(self, sql: str, params: Sequence[Any], fetch: bool) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run_many(self, sql: str, rows: list[Sequence[Any]]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run_script(self, sql: str) -> None:
        for statement in (part.strip() for part in sql.split(";")):
            if statement:
                self._run(statement, (), fetch=False)

    def _begin_migration(self) -> None:
        pass

    def _end_migration(self) -> None:
        pass

    def _broken(self, exc: BaseException) -> None:
        """Forget a connection that failed, so the next call reconnects."""

    def _driver_errors(self) -> tuple[type[BaseException], ...]:  # pragma: no cover - abstract
        raise NotImplementedError


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{text[0] if text else type(exc).__name__}"
