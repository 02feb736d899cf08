"""The prediction log never loses a record silently, keys records by ids the service made, and keeps to a budget.

Issue 31: one request's unencodable row dropped its whole batch (item 4); a client's X-Request-Id was the log's
key (item 5); retention left feedback behind, shutdown discarded buffered records uncounted, an unwritable log
looked healthy (item 11); the log grew without bound (item 13).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client import CollectorRegistry

from bundle.store import PostgresStore, SQLiteStore, Store
from service.monitoring.log import LogMetrics, PredictionLog
from service.monitoring.observation import Observation
from service.monitoring.records import LogRecord
from tests.conftest import metric_value, serve

CONFIDENT = {"color": "red", "shape": "circle", "x1": 3.0, "x2": 5.0, "x3": 50.0}  # label "a"
OTHERWISE = {"color": "blue", "shape": "square", "x1": -3.0, "x2": 5.0, "x3": 50.0}  # label "b"
PREDICT = "/v1/models/shapes/predict"
LABELLER = {"Authorization": "Bearer labeller"}


def wait_until(condition: Callable[[], Any], what: str, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def written(get: Callable[[str], Any], n: int) -> str:
    """The /metrics text once ``n`` records are written (``get`` fetches a path)."""

    def check() -> str | None:
        text = str(get("/metrics").text)
        return text if metric_value(text, "serving_prediction_log_written_total") >= n else None

    return str(wait_until(check, f"{n} records written"))


def rows_of(path: Path, table: str = "monitoring_predictions") -> list[dict[str, Any]]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]  # noqa: S608 - a test's own table names


def record(i: int, created_at: float, size: int = 1_000) -> LogRecord:
    """A log record of about ``size`` bytes, id ``r00000`` + i."""
    inputs = json.dumps([{"note": "x" * size}])
    row = (f"r{i:05d}", created_at, "shapes", 1, "other", "stable", inputs, '[{"label": "a"}]', "[null]", 1.0)
    return LogRecord((*row, None, None, 1))


def new_log(store: Store, **options: Any) -> tuple[PredictionLog, CollectorRegistry]:
    registry = CollectorRegistry()
    return PredictionLog(store, LogMetrics(registry), **options), registry


# -- one request cannot drop another's record (item 4) ------------------------------------------------------


def test_a_row_with_a_lone_surrogate_is_logged_repaired_beside_its_concurrent_requests(
    shapes_repo: Path, live_server: Callable[..., Any], tmp_path: Path
) -> None:
    path = tmp_path / "predictions.sqlite"
    server = live_server(shapes_repo, prediction_log=True, prediction_log_path=path)
    island = b'{"rows": [{"color": "\\ud800", "shape": "circle", "x1": 0.1, "x2": 5.0, "x3": 50.0}]}'

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url) as http:
            plain = [http.post(PREDICT, json={"rows": [CONFIDENT]}) for _ in range(40)]
            odd = http.post(PREDICT, content=island, headers={"Content-Type": "application/json"})
            return await asyncio.gather(odd, *plain)

    assert [r.status_code for r in asyncio.run(burst())] == [200] * 41
    text = written(lambda path: httpx.get(server.url + path), 41)
    assert metric_value(text, "serving_prediction_log_repaired_total") == 1
    assert metric_value(text, "serving_prediction_log_dropped_total") == 0
    (repaired,) = [r for r in rows_of(path) if "\ufffd" in json.loads(r["inputs"])[0]["color"]]
    assert json.loads(repaired["inputs"])[0]["x1"] == 0.1


class Unwritable:
    """A value whose text JSON cannot carry even after repair."""

    def __str__(self) -> str:
        return "\ud800"


def observation(state: Any, request_id: str, row: dict[str, Any], copies: int = 1) -> Observation:
    """What the pipeline would hand the monitor for one row of shapes (its columns ``copies`` long)."""
    prediction = {"label": "a", "probabilities": {"a": 0.9, "b": 0.1}, "ood": None}
    columns = {name: np.array([value] * copies, dtype=object) for name, value in row.items()}
    output = np.array([[0.9, 0.1]], dtype=np.float32)
    return Observation(
        state, "other", "stable", request_id, time.time(), 1.0, output, [prediction], None, columns, None, True, [row]
    )


def test_a_record_that_cannot_be_encoded_is_dropped_alone_and_counted(shapes_repo: Path, tmp_path: Path) -> None:
    with serve(shapes_repo, prediction_log=True, prediction_log_path=tmp_path / "log.sqlite") as client:
        monitor = client.app.state.components.monitor
        state = monitor.prepare(*client.app.state.components.registry.all_versions())

        monitor.worker.submit(observation(state, "bad", {**CONFIDENT, "color": Unwritable()}))
        monitor.worker.submit(observation(state, "good", CONFIDENT))
        monitor.wait_idle()
        monitor.log.flush()
        text = client.get("/metrics").text

    assert metric_value(text, "serving_prediction_log_dropped_total", reason="unencodable") == 1
    assert metric_value(text, "serving_prediction_log_written_total") == 1


def test_an_observation_that_cannot_be_binned_is_left_out_alone(shapes_repo: Path, tmp_path: Path) -> None:
    with serve(shapes_repo, prediction_log=True, prediction_log_path=tmp_path / "log.sqlite") as client:
        monitor = client.app.state.components.monitor
        state = monitor.prepare(*client.app.state.components.registry.all_versions())

        monitor.worker.submit(observation(state, "bad", CONFIDENT, copies=2))  # two rows of inputs, one output
        monitor.worker.submit(observation(state, "good", CONFIDENT))
        monitor.wait_idle()
        (report,) = client.get("/v1/models/shapes/drift").json()["versions"]
        text = client.get("/metrics").text

    assert report["window"]["items_seen"] == 1
    assert metric_value(text, "serving_monitor_failed_total") == 1


# -- the log's key is the service's id (item 5) ----------------------------------------------------------


def test_requests_with_the_same_client_id_are_each_logged_under_the_services_id(
    shapes_repo: Path, tmp_path: Path
) -> None:
    path = tmp_path / "log.sqlite"
    with serve(shapes_repo, prediction_log=True, prediction_log_path=path) as client:
        bodies = [
            client.post(PREDICT, json={"rows": [CONFIDENT]}, headers={"X-Request-Id": "same"}).json() for _ in range(2)
        ]
        text = written(client.get, 2)

    assert metric_value(text, "serving_prediction_log_written_total") == 2
    logged = rows_of(path)
    assert sorted(r["request_id"] for r in logged) == sorted(b["request_id"] for b in bodies)
    assert [r["client_request_id"] for r in logged] == ["same", "same"]


def test_feedback_is_judged_against_the_prediction_its_id_names(shapes_repo: Path, tmp_path: Path) -> None:
    settings = dict(prediction_log=True, prediction_log_path=tmp_path / "log.sqlite", feedback_token="labeller")
    with serve(shapes_repo, **settings) as client:
        client.post(PREDICT, json={"rows": [CONFIDENT]}, headers={"X-Request-Id": "same"})
        second = client.post(PREDICT, json={"rows": [OTHERWISE]}, headers={"X-Request-Id": "same"}).json()
        assert second["predictions"][0]["label"] == "b"

        answer = {"request_id": second["request_id"], "label": "b"}
        assert client.post("/v1/feedback", json=answer, headers=LABELLER).json()["counted"] is True
        (report,) = client.get("/v1/models/shapes/drift").json()["versions"]

    assert report["performance"]["live_accuracy"] == 1.0


def test_the_written_count_is_the_rows_the_store_inserted(tmp_path: Path) -> None:
    log, registry = new_log(SQLiteStore(tmp_path / "log.sqlite"))
    log.append(record(1, time.time()))
    log.append(record(1, time.time()))  # the same id again: the store keeps the first

    assert log.flush()
    assert registry.get_sample_value("serving_prediction_log_written_total") == 1
    log.stop()


# -- retention, shutdown, health (item 11) ------------------------------------------------------------------


def test_retention_removes_feedback_and_review_rows_with_their_predictions(shapes_repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    settings = dict(prediction_log=True, prediction_log_path=path, feedback_token="labeller")
    with serve(shapes_repo, **settings) as client:
        flagged = client.post(PREDICT, json={"rows": [{**CONFIDENT, "color": "mauve"}]}).json()
        answer = {"request_id": flagged["request_id"], "label": "a"}
        assert client.post("/v1/feedback", json=answer, headers=LABELLER).status_code == 200
        assert rows_of(path, "monitoring_review") and rows_of(path, "monitoring_feedback")

        client.app.state.components.monitor.log.prune(now=time.time() + 31 * 86_400)  # past the 30-day retention

    assert rows_of(path) == []
    assert rows_of(path, "monitoring_feedback") == [] and rows_of(path, "monitoring_review") == []


def test_records_still_buffered_at_shutdown_are_counted_as_dropped(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    log, registry = new_log(SQLiteStore(blocker / "log.sqlite"))
    log.start()
    for i in range(3):
        log.append(record(i, time.time()))

    log.stop(timeout_s=2.0)

    assert registry.get_sample_value("serving_prediction_log_dropped_total", {"reason": "shutdown"}) == 3


def test_an_unwritable_log_is_reported_by_readyz_and_its_gauge_while_predictions_go_on(
    shapes_repo: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with serve(shapes_repo, prediction_log=True, prediction_log_path=blocker / "log.sqlite") as client:
        assert client.post(PREDICT, json={"rows": [CONFIDENT]}).status_code == 200
        ready = wait_until(
            lambda: (r := client.get("/readyz")).json().get("prediction_log", {}).get("status") == "failing" and r,
            "readiness to report the log",
        )
        text = client.get("/metrics").text

    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert metric_value(text, "serving_prediction_log_up") == 0


# -- the size budget (item 13) -----------------------------------------------------------------------------


def used_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (pages,), (free,), (size,) = (
            conn.execute(f"PRAGMA {p}").fetchone() for p in ("page_count", "freelist_count", "page_size")
        )
    return int((pages - free) * size)


def test_the_writer_keeps_a_sqlite_log_within_its_byte_budget_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    budget = 256 * 1024
    log, registry = new_log(SQLiteStore(path), max_bytes=budget, flush_interval_s=0.05, budget_check_s=0.1)
    log.ensure_schema()
    started = time.time() - 2_000
    feedback = "INSERT INTO monitoring_feedback (request_id, item, model, version, region, received_at) VALUES (?, 0, 'shapes', 1, 'other', ?)"  # noqa: E501
    log.store.execute(feedback, ("r00000", started + 1))  # about the oldest record
    log.store.execute(feedback, ("r00999", time.time()))  # about the newest
    log.start()
    for i in range(1_000):  # about 1 MB of records
        log.append(record(i, started + i))

    wait_until(lambda: registry.get_sample_value("serving_prediction_log_written_total") == 1_000, "every write")
    wait_until(lambda: used_bytes(path) <= budget, "the writer to cut the log to its budget")
    log.stop()

    kept = sorted(r["request_id"] for r in rows_of(path))
    assert kept[-1] == "r00999" and "r00000" not in kept and len(kept) < 1_000
    assert kept == [f"r{i:05d}" for i in range(1_000 - len(kept), 1_000)]  # the newest, in one piece
    assert [r["request_id"] for r in rows_of(path, "monitoring_feedback")] == ["r00999"]
    assert registry.get_sample_value("serving_prediction_log_pruned_total", {"reason": "size"}) == 1_000 - len(kept)


def postgres_log(url: str, **options: Any) -> tuple[PredictionLog, int]:
    """A log on PostgreSQL holding 120 records (the newest is r00119); returns it and a record's JSON size."""
    log, _ = new_log(PostgresStore(url), **options)
    log.ensure_schema()
    started = time.time() - 1_000
    for i in range(120):
        log.append(record(i, started + i))
    assert log.flush()
    sample = record(0, 0.0).row
    return log, len(sample[6]) + len(sample[7]) + len(sample[8])


def kept_on(log: PredictionLog) -> list[str]:
    return sorted(r["request_id"] for r in log.store.query("SELECT request_id FROM monitoring_predictions"))


def test_on_postgresql_the_log_is_kept_within_its_row_budget_oldest_first(postgres_url: str) -> None:
    log, _ = postgres_log(postgres_url, max_rows=50)

    log.prune()

    assert kept_on(log) == [f"r{i:05d}" for i in range(120 - 45, 120)]  # cut to 90 % of the budget
    log.stop()


def test_on_postgresql_the_row_budget_follows_from_the_byte_budget(postgres_url: str) -> None:
    log, row_bytes = postgres_log(postgres_url)
    log.max_bytes = 60 * (row_bytes + 300)  # 60 rows' worth, at 300 bytes of overhead per row

    log.prune()

    assert len(kept_on(log)) == 54
    log.stop()
