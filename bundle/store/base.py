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
call is bounded by ``timeout_s``, twice over: waiting for the store's lock
(one call at a time per connection) gives up after it, and a call that
outlives it is cut off by a watchdog (a server that accepts and never
answers cannot hold a thread, nor every thread queued behind it). Every
driver error surfaces as :class:`StoreUnavailable`, and the store remembers
its health (``healthy``, ``last_error``, :meth:`Store.up`) so callers can
keep serving on their last known state and report it, never failing a
prediction. A value no backend can store (a NUL character in text) is the
caller's input, not the store's health: :class:`InvalidValue`, raised
before anything is sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from bundle.store.redact import redact_location

log = logging.getLogger("bundle.store")

Row = dict[str, Any]
T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0
SICK_WAIT_S = 0.1  # how long a call waits for the lock while the store is known to be failing
STALL_S = 1.0  # a call still waiting after this long says the store is down (gauges, readiness) before it times out


class StoreUnavailable(Exception):
    """The store could not be reached or the statement failed; the caller keeps its last known state."""


class InvalidValue(ValueError):
    """A parameter no backend can store (text with a NUL character); nothing was sent, the store stays healthy.

    ``rows`` holds the indexes of the offending rows of an ``executemany``, so its caller can drop them alone."""

    def __init__(self, message: str, rows: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.rows = list(rows)


@dataclass(frozen=True)
class Migration:
    """One schema step. ``postgres`` overrides ``sql`` where the dialects differ."""

    id: str
    sql: str
    postgres: str | None = None

    def for_dialect(self, dialect: str) -> str:
        return self.postgres if dialect == "postgresql" and self.postgres is not None else self.sql


class Transaction:
    """The statements of one :meth:`Store.transaction`: all of them land, or none."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        check_text(params)
        return int(self._store._run(sql, params, fetch=False))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        check_text(params)
        rows: list[Row] = self._store._run(sql, params, fetch=True)
        return rows


class Store:
    """The common half: health bookkeeping, timeouts and migrations; backends supply ``_run`` and ``_run_many``."""

    dialect = ""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.healthy = True
        self.last_error: str | None = None
        self.last_ok_at: float | None = None
        self._lock = threading.Lock()
        self._watchdog = Watchdog()
        self._call_started: float | None = None  # monotonic start of the call in progress

    # -- the interface ---------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        check_text(params)
        return int(self._guard(lambda: self._run(sql, params, fetch=False)))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for many parameter rows, in one transaction."""
        rows = list(rows)
        bad = [i for i, row in enumerate(rows) if _has_nul(row)]
        if bad:
            raise InvalidValue(f"{len(bad)} of {len(rows)} rows hold text with a NUL character (\\x00)", bad)
        if rows:
            self._guard(lambda: self._run_many(sql, rows))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Rows as dicts keyed by column name."""
        check_text(params)
        rows: list[Row] = self._guard(lambda: self._run(sql, params, fetch=True))
        return rows

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def transaction(self, work: Callable[[Transaction], T]) -> T:
        """Run ``work``'s statements in one transaction; an exception from ``work`` rolls all of them back."""

        def run() -> T:
            self._begin()
            try:
                result = work(Transaction(self))
            except BaseException:
                self._rollback()
                raise
            self._run("COMMIT", (), fetch=False)
            return result

        result: T = self._guard(run)
        return result

    def migrate(self, migrations: Sequence[Migration]) -> list[str]:
        """Apply the steps of ``migrations`` not applied yet, in order; returns their ids."""
        steps = list(migrations)
        applied: list[str] = self._guard(lambda: self._migrate(steps))
        return applied

    def ping(self) -> bool:
        """Check the connection (and reconnect); updates ``healthy``."""
        try:
            self.query("SELECT 1 AS ok")
        except StoreUnavailable:
            return False
        return True

    def stalled_for(self) -> float:
        """Seconds the call in progress has waited so far (0 when none is)."""
        started = self._call_started
        return time.monotonic() - started if started is not None else 0.0

    def up(self) -> bool:
        """Healthy, and no call has been waiting for longer than ``STALL_S``: what gauges and readiness say."""
        return self.healthy and self.stalled_for() < min(STALL_S, self.timeout_s)

    def describe(self, internals: bool = False) -> dict[str, Any]:
        """The store's health; its location and the driver's last message only with ``internals`` (admins)."""
        up = self.up()
        error = self.last_error
        if error is None and not up:
            error = f"a call has waited {self.stalled_for():.1f} s for an answer"
        if error is not None and not internals:
            error = "unavailable (the error is shown with the admin token)"
        return {
            "backend": self.dialect,
            "location": self.location() if internals else None,
            "healthy": up,
            "last_error": error,
            "last_ok_at": self.last_ok_at,
        }

    def close(self) -> None:  # pragma: no cover - backends override
        pass

    def location(self) -> str:  # pragma: no cover - backends override
        return ""

    def redacted(self, text: str) -> str:
        """``text`` without this store's credentials (see :func:`bundle.store.redact.redact_location`)."""
        return redact_location(text, self._secrets())

    # -- shared machinery ------------------------------------------------------------------

    def _guard(self, call: Callable[[], Any]) -> Any:
        # A sick store gets one call at a time: the others fail almost at once instead of queueing on the lock.
        wait = self.timeout_s if self.healthy else min(SICK_WAIT_S, self.timeout_s)
        if not self._lock.acquire(timeout=wait):
            message = f"no answer within {self.timeout_s:g} s: another call is still waiting on the store"
            self._failed(message)
            raise StoreUnavailable(message)
        try:
            self._call_started = time.monotonic()
            self._watchdog.arm(self._interrupt, self.timeout_s + 0.5)
            try:
                result = call()
            except self._driver_errors() as exc:
                fired = self._watchdog.disarm()
                self._broken(exc)
                message = f"no answer within {self.timeout_s:g} s; connection closed" if fired else _one_line(exc)
                self._failed(self.redacted(message))
                raise StoreUnavailable(self.last_error) from None
            finally:
                self._watchdog.disarm()
                self._call_started = None
            if not self.healthy:
                log.info("state store %s is reachable again", self.location())
            self.healthy = True
            self.last_error = None
            self.last_ok_at = time.time()
            return result
        finally:
            self._lock.release()

    def _failed(self, message: str) -> None:
        if self.healthy or self.last_error != message:
            log.warning("state store %s unavailable: %s", self.location(), message)
        self.healthy = False
        self.last_error = message

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

    def _begin(self) -> None:
        self._run("BEGIN", (), fetch=False)

    def _rollback(self) -> None:
        try:
            self._run("ROLLBACK", (), fetch=False)
        except self._driver_errors():  # the connection broke: the transaction went with it
            pass

    def _begin_migration(self) -> None:
        pass

    def _end_migration(self) -> None:
        pass

    def _broken(self, exc: BaseException) -> None:
        """Forget a connection that failed, so the next call reconnects."""

    def _interrupt(self) -> None:
        """Cut the call in progress short (called by the watchdog, from its own thread)."""

    def _secrets(self) -> list[str]:
        """Values never to show (a password the location carries)."""
        return []

    def _driver_errors(self) -> tuple[type[BaseException], ...]:  # pragma: no cover - abstract
        raise NotImplementedError


class Watchdog:
    """One thread per store that interrupts a call outliving its deadline (calls are one at a time per store).

    Drivers wait on their socket for as long as the server keeps it open; a server-side statement timeout needs a
    server that still answers. Interrupting from outside (closing the socket, ``sqlite3.interrupt``) is what
    bounds a call against a server that accepted the connection and went silent. The thread starts with the
    first call and ends when the store is closed."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._armed: tuple[float, Callable[[], None]] | None = None
        self._fired = False
        self._generation = 0  # a thread runs while its generation is the current one
        self._running = False

    def arm(self, interrupt: Callable[[], None], seconds: float) -> None:
        with self._condition:
            if not self._running:
                self._running = True
                thread = threading.Thread(target=self._run, args=(self._generation,), name="store-watchdog")
                thread.daemon = True
                thread.start()
            self._armed = (time.monotonic() + seconds, interrupt)
            self._fired = False
            self._condition.notify()

    def disarm(self) -> bool:
        """Stop watching; whether the deadline had already fired."""
        with self._condition:
            self._armed = None
            return self._fired

    def stop(self) -> None:
        with self._condition:
            self._generation += 1
            self._running = False
            self._armed = None
            self._condition.notify()

    def _run(self, generation: int) -> None:
        with self._condition:
            while generation == self._generation:
                if self._armed is None:
                    self._condition.wait()
                    continue
                deadline, interrupt = self._armed
                left = deadline - time.monotonic()
                if left > 0:
                    self._condition.wait(left)
                    continue
                self._armed = None
                self._fired = True
                try:
                    interrupt()
                except Exception:  # the watchdog must outlive any one failure
                    log.exception("could not interrupt a store call")


def check_text(params: Sequence[Any]) -> None:
    """:class:`InvalidValue` when a text parameter holds a NUL character (PostgreSQL cannot store one)."""
    if _has_nul(params):
        raise InvalidValue("text values cannot hold a NUL character (\\x00)")


def _has_nul(params: Sequence[Any]) -> bool:
    return any(isinstance(value, str) and "\x00" in value for value in params)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{text[0] if text else type(exc).__name__}"
