"""The shared store: one PostgreSQL database for every replica (psycopg 3, autocommit, reconnecting after failures)."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any

from bundle.store.base import DEFAULT_TIMEOUT_S, Store
from bundle.store.redact import redact_location

_MIGRATION_LOCK_ID = 7_416_001  # pg_advisory_lock key: any constant shared by every replica


class PostgresStore(Store):
    """One database shared by every replica (psycopg 3, autocommit, reconnecting after failures).

    Three bounds on a call: ``connect_timeout`` (libpq's minimum is 2 s) for the connection, a server-side
    ``statement_timeout`` for a slow statement, and the watchdog (see :class:`bundle.store.base.Watchdog`)
    shutting the socket down for a server that stopped answering."""

    dialect = "postgresql"

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(timeout_s)
        import psycopg  # imported here so a SQLite-only service never needs the driver

        self._psycopg = psycopg
        self.url = url
        self._conn: Any = None
        self._password = _password_of(url)

    def location(self) -> str:
        return self.redacted(self.url)

    def _secrets(self) -> list[str]:
        return [self._password] if self._password else []

    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(2, round(self.timeout_s)),
                options=f"-c statement_timeout={max(1, round(self.timeout_s * 1000))}",
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

    def _interrupt(self) -> None:
        """Shut the connection's socket down: libpq's wait ends with an error, and the call's thread is free.

        Shutting down (not closing) a duplicate of the descriptor is safe while another thread uses the
        connection: the descriptor stays valid, only the socket stops."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        duplicate = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        finally:
            duplicate.close()

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
        self._watchdog.stop()


def _pg_placeholders(sql: str) -> str:
    # Our SQL never holds a literal '?' or '%': the rewrite is exact.
    return sql.replace("%", "%%").replace("?", "%s")


def _password_of(url: str) -> str | None:
    """The password a connection string carries in any of its forms (None when it has none or does not parse)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        password = conninfo_to_dict(url).get("password")
    except Exception:  # a location that does not parse fails at connect, with its message redacted
        return None
    return str(password) if password else None


def redacted(url: str) -> str:
    """The location without its password, for logs and status pages (kept for callers of the old name)."""
    return redact_location(url)
