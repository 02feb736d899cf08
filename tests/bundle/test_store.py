"""The state store: one interface over SQLite and PostgreSQL, migrations once, health kept, failures typed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bundle.store import Migration, PostgresStore, SQLiteStore, Store, StoreUnavailable, open_store

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
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/none", connect_timeout_s=1)
    with pytest.raises(StoreUnavailable):
        store.query("SELECT 1")
    assert store.describe()["healthy"] is False


def test_an_unwritable_sqlite_path_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = open_store("", blocker / "state.sqlite")
    with pytest.raises(StoreUnavailable):
        store.migrate(STEPS)
