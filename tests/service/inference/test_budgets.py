"""per-request budgets are checked before the expensive work, and the preprocessing pool cannot be
monopolised: its backlog is bounded and work whose deadline passed is skipped, not run."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.http.errors import DeadlineExceeded, QueueFull
from service.inference.decode_queue import DecodeQueue
from tests.conftest import image_bytes
from tests.hardening_support import WellBehavedClient


def wide_csv(columns: int) -> bytes:
    header = ",".join(f"c{i}" for i in range(columns))
    return (header + "\n" + ",".join("1" for _ in range(columns)) + "\n").encode()


def test_wide_csv_requests_are_refused_at_once_naming_the_budget(make_repo, live_server):
    server = live_server(make_repo(("penguins", 1), ("digits", 1)))
    body = wide_csv(300_000)
    results: list[httpx.Response] = []

    def attack() -> None:
        results.append(
            httpx.post(
                f"{server.url}/v1/models/penguins/predict",
                content=body,
                headers={"Content-Type": "text/csv"},
                timeout=30,
            )
        )

    with WellBehavedClient(server.url, "digits") as client:
        started = time.perf_counter()
        attackers = [threading.Thread(target=attack) for _ in range(2)]
        for t in attackers:
            t.start()
        for t in attackers:
            t.join()
        elapsed = time.perf_counter() - started
    client.assert_served()
    for response in results:
        assert response.status_code == 413, response.text
        assert "max_columns" in response.json()["error"]["message"]
    assert elapsed < 10


def test_json_rows_over_the_cell_budget_are_413(make_repo, live_server):
    server = live_server(make_repo(("penguins", 1)), max_cells_per_request=100)
    rows = [{f"c{j}": 1 for j in range(20)} for _ in range(10)]

    response = httpx.post(f"{server.url}/v1/models/penguins/predict", json={"rows": rows})

    assert response.status_code == 413 and "max_cells" in response.json()["error"]["message"]


def test_images_over_the_request_pixel_budget_are_413_before_decoding(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)), max_request_pixels=500 * 500)
    big = image_bytes("PNG", size=(400, 400))
    files = [("file", (f"{i}.png", big, "image/png")) for i in range(2)]
    with WellBehavedClient(server.url, "digits") as client:
        response = httpx.post(f"{server.url}/v1/models/digits/predict", files=files)
    client.assert_served()
    assert response.status_code == 413, response.text
    message = response.json()["error"]["message"]
    assert "file[1]" in message and "max_request_pixels" in message


def test_queued_preprocessing_past_its_deadline_is_skipped_not_run():
    ran: list[str] = []
    release = threading.Event()

    def work(name: str, deadline: float) -> str:
        if name == "blocker":
            release.wait(5)
        ran.append(name)
        return name

    async def scenario() -> None:
        queue = DecodeQueue(threads=1, max_backlog=4)
        with ThreadPoolExecutor(1) as pool:
            blocker = asyncio.ensure_future(queue.run(pool, time.perf_counter() + 10, work, "blocker"))
            await asyncio.sleep(0.05)
            late = asyncio.ensure_future(queue.run(pool, time.perf_counter() + 0.05, work, "late"))
            await asyncio.sleep(0.2)
            release.set()
            assert await blocker == "blocker"
            with pytest.raises(DeadlineExceeded):
                await late

    asyncio.run(scenario())
    assert ran == ["blocker"]


def test_the_preprocessing_backlog_is_bounded():
    release = threading.Event()

    async def scenario() -> None:
        queue = DecodeQueue(threads=1, max_backlog=2)
        with ThreadPoolExecutor(1) as pool:
            deadline = time.perf_counter() + 10
            waiting = [
                asyncio.ensure_future(queue.run(pool, deadline, lambda deadline: release.wait(5))) for _ in range(3)
            ]
            await asyncio.sleep(0.05)
            with pytest.raises(QueueFull):
                await queue.run(pool, deadline, lambda deadline: None)
            release.set()
            await asyncio.gather(*waiting)

    asyncio.run(scenario())
