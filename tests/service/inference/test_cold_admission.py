"""A version that has had no traffic yet judges a burst by the timings taken at load: served when it fits, else 503 at once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, gradient_image, penguin

pytestmark = pytest.mark.live_server


async def burst(url: str, path: str, body: bytes, content_type: str, n: int) -> list[tuple[int, str, float]]:
    """``n`` requests sent at once: (status, error code, seconds to the answer) of each."""
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        started = time.perf_counter()

        async def one() -> tuple[int, str, float]:
            response = await http.post(path, content=body, headers={"Content-Type": content_type})
            code = response.json()["error"]["code"] if response.status_code != 200 else ""
            return response.status_code, code, time.perf_counter() - started

        return await asyncio.gather(*(one() for _ in range(n)))


def test_a_cold_burst_of_large_requests_that_fits_the_wait_limit_is_served(
    make_repo: Callable[..., Path], live_server: Callable[..., LiveServer]
) -> None:
    # each request fills the whole queue bound: beyond the first, each waits for room, which comes in milliseconds
    server = live_server(make_repo(("penguins", 1)), max_items_per_request=1000, max_queue_size=1000)
    rows = json.dumps({"rows": [penguin(bill_length_mm=30 + i % 20) for i in range(1000)]}).encode()

    answers = asyncio.run(burst(server.url, "/v1/models/penguins/predict", rows, "application/json", 24))

    assert [status for status, _, _ in answers] == [200] * 24, answers


def test_a_cold_burst_that_would_miss_its_deadline_is_refused_at_once(
    make_repo: Callable[..., Path], live_server: Callable[..., LiveServer]
) -> None:
    # about 0.1 s a run, one item at a time, a 1 s deadline: about ten of twenty can be answered in time
    server = live_server(make_repo(("slow", 1)), max_batch_size=1, request_timeout_s=1.0)

    answers = asyncio.run(burst(server.url, "/v1/models/slow/predict", gradient_image(1), "image/png", 20))

    refused = [seconds for status, code, seconds in answers if status == 503 and code == "queue_full"]
    assert len(refused) >= 5, answers
    assert max(refused) < 0.5, answers  # at once, before their bodies were decoded, not at the deadline
    assert {status for status, _, _ in answers} <= {200, 503, 504}
