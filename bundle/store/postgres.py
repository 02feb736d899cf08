"""The shared store: one PostgreSQL database for every replica (psycopg 3, autocommit, reconnecting after failures)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bundle.store.base import Store

_MIGRATION_LOCK_ID = 7_416_001  # pg_advisory_lock key: any constant shared by every replica


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
        return redacted(self.url)

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


def _pg_placeholders(sql: str) -> str:
    # Our SQL never holds a literal '?' or '%': the rewrite is exact.
    return sql.replace("%", "%%").replace("?", "%s")


def redacted(url: str) -> str:
    """The URL without its password, for logs and status pages."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"
