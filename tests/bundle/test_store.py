"""The state store: one interface over SQLite and PostgreSQL, migrations once, health kept, failures typed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bundle.store import (
    InvalidValue,
    Migration,
    PostgresStore,
    SQLiteStore,
    Store,
    StoreUnavailable,
    Transaction,
    open_store,
    redact_location,
)

STEPS = [
    Migration(
        "0001-notes",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, body TEXT, at DOUBLE PRECISION)",
        postgres="CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, model TEXT NOT NULL, body TEXT, at DOUBLE PRECISION)",
    ),
    Migration(
        "0002-kv", "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT); CREATE INDEX notes_model ON notes (model)"
    ),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        made: Store = open_store("", tmp_path / "state.sqlite")
    else:
        made = open_store(request.getfixturevalue("postgres_url"), tmp_path / "unused.sqlite")
    yield made
    made.close()


def test_an_empty_url_is_a_sqlite_file_beside_the_service(tmp_path: Path) -> None:
    store = open_store("", tmp_path / "state" / "state.sqlite")
    assert isinstance(store, SQLiteStore)
    store.migrate(STEPS)
    assert (tmp_path / "state" / "state.sqlite").is_file()


def test_a_postgresql_url_is_the_shared_backend_and_its_password_is_never_shown() -> None:
    store = open_store("postgresql://svc:secret@db.example:5432/state", Path("unused"))
    assert isinstance(store, PostgresStore)
    assert "secret" not in store.location() and "svc:***@db.example" in store.location()


def test_an_unknown_url_scheme_is_refused_with_the_accepted_forms() -> None:
    with pytest.raises(ValueError, match="sqlite:///PATH or postgresql://"):
        open_store("mysql://x", Path("unused"))


def test_migrations_apply_once_in_order(store: Store) -> None:
    assert store.migrate(STEPS) == ["0001-notes", "0002-kv"]
    assert store.migrate(STEPS) == []
    assert store.migrate([*STEPS, Migration("0003-more", "CREATE TABLE more (x TEXT)")]) == ["0003-more"]


def test_rows_round_trip_with_one_placeholder_style(store: Store) -> None:
    store.migrate(STEPS)
    store.executemany(
        "INSERT INTO notes (model, body, at) VALUES (?, ?, ?)", [("digits", "a", 1.5), ("digits", "b", 2.5)]
    )
    store.execute(
        "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", ("k", "1")
    )
    store.execute(
        "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", ("k", "2")
    )
    assert [r["body"] for r in store.query("SELECT body FROM notes WHERE model = ? ORDER BY id", ("digits",))] == [
        "a",
        "b",
    ]
    assert store.query_one("SELECT value FROM kv WHERE key = ?", ("k",)) == {"value": "2"}
    assert store.query_one("SELECT value FROM kv WHERE key = ?", ("missing",)) is None


@pytest.mark.parametrize("count", [1, 255, 256, 257, 1000])
def test_a_batch_of_many_rows_lands_whole_in_order_and_conflicts_are_skipped(store: Store, count: int) -> None:
    store.migrate(STEPS)
    store.execute("INSERT INTO kv (key, value) VALUES (?, ?)", ("k0", "first"))
    rows = [(f"k{i}", str(i)) for i in range(count)]
    store.executemany("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", rows)
    stored = {r["key"]: r["value"] for r in store.query("SELECT key, value FROM kv")}
    assert stored == {"k0": "first", **{k: v for k, v in rows[1:]}}
    notes = [("m", str(i), float(i)) for i in range(count)]
    store.executemany("INSERT INTO notes (model, body, at) VALUES (?, ?, ?)", notes)
    assert [r["body"] for r in store.query("SELECT body FROM notes ORDER BY id")] == [str(i) for i in range(count)]


def test_a_batch_with_a_bad_row_writes_nothing(store: Store) -> None:
    store.migrate(STEPS)
    rows = [("m", str(i), float(i)) for i in range(300)] + [(None, "no model", 0.0)]  # model is NOT NULL
    with pytest.raises(StoreUnavailable):
        store.executemany("INSERT INTO notes (model, body, at) VALUES (?, ?, ?)", rows)
    assert store.query_one("SELECT COUNT(*) AS n FROM notes")["n"] == 0


def test_concurrent_writers_lose_nothing(store: Store) -> None:
    store.migrate(STEPS)

    def write(n: int) -> None:
        for i in range(25):
            store.execute("INSERT INTO notes (model, body, at) VALUES (?, ?, ?)", (f"m{n}", str(i), float(i)))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.query_one("SELECT COUNT(*) AS n FROM notes")["n"] == 100


def test_a_failing_statement_is_typed_and_the_store_recovers(store: Store) -> None:
    store.migrate(STEPS)
    with pytest.raises(StoreUnavailable):
        store.query("SELECT * FROM no_such_table")
    assert not store.healthy and store.last_error
    assert store.ping()
    assert store.healthy and store.last_error is None


def test_an_unreachable_postgresql_is_unavailable_quickly_not_a_hang() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/none", timeout_s=1)
    with pytest.raises(StoreUnavailable):
        store.query("SELECT 1")
    assert store.describe()["healthy"] is False


def test_an_unwritable_sqlite_path_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = open_store("", blocker / "state.sqlite")
    with pytest.raises(StoreUnavailable):
        store.migrate(STEPS)


# -- credentials never shown -----------------------------------------------------------------------

LOCATIONS = [
    "postgresql://svc:s3cr3t-pw@db.example:5432/state",
    "postgresql://svc@db.example/state?password=s3cr3t-pw",
    "postgresql:///state?host=db.example&user=svc&password=s3cr3t-pw&sslmode=require",
    "postgresql://db.example/state?sslpassword=s3cr3t-pw&user=svc",
    "postgres://svc:s3cr3t-pw@db-1,db-2/state?target_session_attrs=read-write",
    "postgresql://svc:s3cr3t@pw@db.example/state",  # an unencoded '@' in the password
    "host=db.example user=svc password=s3cr3t-pw dbname=state",
    "host=db.example password = 's3cr3t-pw with spaces' dbname=state",
    "dbname=state PASSWORD=s3cr3t-pw",
]


@pytest.mark.parametrize("location", LOCATIONS)
def test_a_password_is_redacted_in_every_form_of_location(location: str) -> None:
    shown = redact_location(location)
    assert "s3cr3t" not in shown and "***" in shown
    assert "db.example" in shown or "db-1" in shown or "dbname=state" in shown  # the rest stays readable


@pytest.mark.parametrize("location", [loc for loc in LOCATIONS if "://" in loc])
def test_a_postgresql_store_never_shows_its_password_in_its_location_or_errors(location: str) -> None:
    store = open_store(location.replace("db.example", "127.0.0.1:1").replace("db-1,db-2", "127.0.0.1:1"), Path("x"))
    assert "s3cr3t" not in store.location()
    with pytest.raises(StoreUnavailable) as refused:
        store.query("SELECT 1")
    assert "s3cr3t" not in str(refused.value)
    for internals in (True, False):
        assert "s3cr3t" not in str(store.describe(internals=internals))


def test_without_internals_a_store_shows_its_health_but_not_where_it_is(tmp_path: Path) -> None:
    store = open_store("", tmp_path / "secret-folder" / "state.sqlite")
    store.migrate(STEPS)
    public, admin = store.describe(), store.describe(internals=True)
    assert public["location"] is None and public["healthy"] is True and public["backend"] == "sqlite"
    assert admin["location"].endswith("secret-folder/state.sqlite")


# -- values no backend can store ------------------------------------------------------------------


def test_text_with_a_nul_is_refused_alike_by_both_backends_and_leaves_the_store_healthy(store: Store) -> None:
    store.migrate(STEPS)
    with pytest.raises(InvalidValue, match="NUL"):
        store.execute("INSERT INTO kv (key, value) VALUES (?, ?)", ("k", "a\x00b"))
    with pytest.raises(InvalidValue):
        store.query("SELECT value FROM kv WHERE key = ?", ("k\x00",))
    assert store.healthy and store.last_error is None
    store.execute("INSERT INTO kv (key, value) VALUES (?, ?)", ("k", "ab"))  # the same connection goes on
    assert store.query_one("SELECT value FROM kv WHERE key = ?", ("k",)) == {"value": "ab"}


def test_a_batch_with_nul_rows_names_them_and_writes_nothing(store: Store) -> None:
    store.migrate(STEPS)
    rows = [("m", "fine", 1.0), ("m", "bad\x00", 2.0), ("m", "fine", 3.0), ("m\x00", "bad", 4.0)]
    with pytest.raises(InvalidValue) as refused:
        store.executemany("INSERT INTO notes (model, body, at) VALUES (?, ?, ?)", rows)
    assert refused.value.rows == [1, 3]
    assert store.healthy and store.query_one("SELECT COUNT(*) AS n FROM notes")["n"] == 0


# -- transactions -----------------------------------------------------------------------------------


def test_a_transaction_lands_whole_or_not_at_all(store: Store) -> None:
    store.migrate(STEPS)

    def write_then_fail(tx: Transaction) -> None:
        tx.execute("INSERT INTO kv (key, value) VALUES (?, ?)", ("a", "1"))
        raise LookupError("changed my mind")

    with pytest.raises(LookupError):
        store.transaction(write_then_fail)
    assert store.query("SELECT key FROM kv") == [] and store.healthy

    def write_two(tx: Transaction) -> int:
        tx.execute("INSERT INTO kv (key, value) VALUES (?, ?)", ("a", "1"))
        return tx.execute("INSERT INTO kv (key, value) VALUES (?, ?)", ("b", "2"))

    assert store.transaction(write_two) == 1
    assert [r["key"] for r in store.query("SELECT key FROM kv ORDER BY key")] == ["a", "b"]
