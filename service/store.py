"""The state store: one small interface, two backends (an embedded SQLite file, or a shared PostgreSQL).

Everything that must outlive a process or be shared by replicas lives here:
rollout state and its audit trail, the prediction log, feedback. One replica
needs nothing running (``SERVING_STATE_URL`` empty: a SQLite file beside the
service); many replicas share one PostgreSQL database
(``SERVING_STATE_URL=postgresql://...``).

The interface is plain SQL written once with ``?`` placeholders, which the
PostgreSQL backend rewrites to psycopg's ``%s``. Portable types only: TEXT,
BIGINT, DOUBLE PRECISION (times are epoch seconds), JSON as TEXT. Where the
dialects differ (auto-increment keys), a :class:`Migration` carries both.
Migrations run in order, once, recorded in ``schema_migrations``; on
PostgreSQL under an advisory lock, so replicas starting together migrate once.

Calls block: run them off the event loop (``asyncio.to_thread``). Every
driver error surfaces as :class:`StoreUnavailable`, and the store remembers
its health (``healthy``, ``last_error``) so callers can keep serving on
their last known state and report it, never failing a prediction.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

log = logging.getLogger("service.store")

Row = dict[str, Any]
_MIGRATION_LOCK_ID = 7_416_001  # pg_advisory_lock key: any constant shared by every replica
# "... VALUES (?, ?, ...) ..." : an insert SQLite can take many rows of in one statement
_VALUES = re.compile(r"\bVALUES\s*(\(\s*\?(?:\s*,\s*\?)*\s*\))", re.IGNORECASE)
_MAX_ROWS_PER_INSERT = 256  # and at most SQLite's limit on ? in one statement / columns
_SQLITE_MAX_VARIABLES = 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


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


# Every table of every component, in order. Append new steps at the end; never edit an applied one.
MIGRATIONS: list[Migration] = [
    # the prediction log and feedback (service.monitoring)
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
]


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

    def migrate(self, migrations: Sequence[Migration] | None = None) -> list[str]:
        """Apply the steps not applied yet, in order; returns their ids."""
        steps = list(MIGRATIONS if migrations is None else migrations)
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
                self._run("INSERT INTO schema_migrations (id, applied_at) VALUES (?, ?)", (step.id, time.time()),
                          fetch=False)  # fmt: skip
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


class SQLiteStore(Store):
    """A file on local disk: one replica, survives restarts. WAL mode, so readers never wait for the writer."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    def location(self) -> str:
        return str(self.path)

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn = conn
        return self._conn

    def _run(self, sql: str, params: Sequence[Any], fetch: bool) -> Any:
        cursor = self._connect().execute(sql, tuple(params))
        if fetch:
            return [dict(row) for row in cursor.fetchall()]
        return cursor.rowcount

    def _run_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        """In one transaction; an ``INSERT ... VALUES (?, ...)`` as multi-row statements.

        Python's sqlite3 lets go of the GIL around every statement step, and ``executemany`` steps once per
        row: while the event loop is busy, each row then waits for the GIL to come back (a forced switch,
        up to the switch interval). With a busy thread beside the writer that cost 36-41 us of CPU and
        2.2 ms of wall time per row; with up to 256 rows per statement, 9 us and 91 us.
        """
        conn = self._connect()
        conn.execute("BEGIN")
        try:
            values = _VALUES.search(sql)
            if values is None:
                conn.executemany(sql, [tuple(r) for r in rows])
            else:
                self._insert_rows(conn, sql, values, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @staticmethod
    def _insert_rows(conn: sqlite3.Connection, sql: str, values: re.Match[str], rows: list[Sequence[Any]]) -> None:
        """Chunks of a power-of-two number of rows, so the few statement texts stay in sqlite3's cache."""
        group = values.group(1)
        largest = max(1, min(_MAX_ROWS_PER_INSERT, _SQLITE_MAX_VARIABLES // group.count("?")))
        start = 0
        while start < len(rows):
            n = min(largest, 1 << ((len(rows) - start).bit_length() - 1))
            statement = sql[: values.start(1)] + ", ".join([group] * n) + sql[values.end(1) :]
            conn.execute(statement, [v for row in rows[start : start + n] for v in row])
            start += n

    def _begin_migration(self) -> None:
        self._connect().execute("BEGIN IMMEDIATE")

    def _end_migration(self) -> None:
        conn = self._connect()
        if conn.in_transaction:
            conn.execute("COMMIT")

    def _broken(self, exc: BaseException) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._conn = None

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error, OSError)

    def close(self) -> None:
        with self._lock:
            self._broken(RuntimeError("closed"))


class PostgresStore(Store):
    """One database shared by every replica (psycopg 3, autocommit, reconnecting after failures)."""

    dialect = "postgresql"

    def __init__(self, url: str, connect_timeout_s: float = 2.0, statement_timeout_ms: int = 5_000) -> None:
        super().__init__()
        import psycopg  # imported here so a SQLite-only service never needs the driver

        self._psycopg = psycopg
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_ms = statement_timeout_ms
        self._conn: Any = None

    def location(self) -> str:
        return _redacted(self.url)

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, round(self.connect_timeout_s)),
                options=f"-c statement_timeout={self.statement_timeout_ms}",
                row_factory=self._psycopg.rows.dict_row,
            )
        return self._conn

    def _run(self, sql: str, params: Sequence[Any], fetch: bool) -> Any:
        with self._connect().cursor() as cursor:
            cursor.execute(_pg_placeholders(sql), tuple(params))
            if fetch:
                return list(cursor.fetchall())
            return cursor.rowcount

    def _run_many(self, sql: str, rows: list[Sequence[Any]]) -> None:
        conn = self._connect()
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(_pg_placeholders(sql), [tuple(r) for r in rows])

    def _begin_migration(self) -> None:
        self._run("SELECT pg_advisory_lock(?)", (_MIGRATION_LOCK_ID,), fetch=False)

    def _end_migration(self) -> None:
        try:
            self._run("SELECT pg_advisory_unlock(?)", (_MIGRATION_LOCK_ID,), fetch=False)
        except self._driver_errors():  # the connection broke: the lock went with it
            pass

    def _broken(self, exc: BaseException) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
        self._conn = None

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        return (self._psycopg.Error, OSError)

    def close(self) -> None:
        with self._lock:
            self._broken(RuntimeError("closed"))


def open_store(url: str | None, default_path: Path) -> Store:
    """The store ``url`` names: empty -> SQLite at ``default_path``; ``sqlite:///path``; ``postgresql://...``."""
    if not url:
        return SQLiteStore(default_path)
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url[len("sqlite:///") :]))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise ValueError(f"state store URL must be empty, sqlite:///PATH or postgresql://...; got {_redacted(url)!r}")


def _pg_placeholders(sql: str) -> str:
    # Our SQL never holds a literal '?' or '%': the rewrite is exact.
    return sql.replace("%", "%%").replace("?", "%s")


def _redacted(url: str) -> str:
    """The URL without its password, for logs and status pages."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{text[0] if text else type(exc).__name__}"
