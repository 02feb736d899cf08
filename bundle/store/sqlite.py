"""The embedded store: one SQLite file on local disk for one replica (WAL mode: readers never wait for the writer)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bundle.store.base import DEFAULT_TIMEOUT_S, Store

# "... VALUES (?, ?, ...) ..." : an insert SQLite can take many rows of in one statement
_VALUES = re.compile(r"\bVALUES\s*(\(\s*\?(?:\s*,\s*\?)*\s*\))", re.IGNORECASE)
_MAX_ROWS_PER_INSERT = 256  # and at most SQLite's limit on ? in one statement / columns
_SQLITE_MAX_VARIABLES = 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


class SQLiteStore(Store):
    """A file on local disk: one replica, survives restarts. WAL mode, so readers never wait for the writer."""

    dialect = "sqlite"

    def __init__(self, path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(timeout_s)
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    def location(self) -> str:
        return str(self.path)

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, check_same_thread=False, isolation_level=None)
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
        up to the switch interval). Many rows per statement pay that once (docs/performance.md).
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

    def _begin(self) -> None:
        self._connect().execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock later

    def _interrupt(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.interrupt()  # thread-safe: the running statement fails with "interrupted"

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
        self._watchdog.stop()
