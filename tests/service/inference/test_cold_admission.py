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


async def burst(
    url: str, path: str, body: bytes, content_type: str, n: int, spread_s: float = 0.0
) -> list[tuple[int, str, float]]:
    """``n`` requests sent within ``spread_s``: (status, error code and message, seconds to the answer) of each."""
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        started = time.perf_counter()

        async def one(i: int) -> tuple[int, str, float]:
            await asyncio.sleep(spread_s * i / n)
            response = await http.post(path, content=body, headers={"Content-Type": content_type})
            error = response.json()["error"] if response.status_code != 200 else {"code": "", "message": ""}
            return response.status_code, f"{error['code']}: {error['message']}", time.perf_counter() - started

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_a_cold_burst_of_large_requests_that_fits_the_wait_limit_is_served(
    make_repo: Callable[..., Path], live_server: Callable[..., LiveServer]
) -> None:
    # Each request fills the whole queue bound, and most arrive while another is queued: the queue over its
    # bound clears in milliseconds, so they are admitted and wait for room. (The wait limit leaves room for a
    # machine shared with other tests: the whole burst takes about a second.)
    server = live_server(
        make_repo(("penguins", 1)), max_items_per_request=1000, max_queue_size=1000, max_queue_wait_s=5.0
    )
    rows = json.dumps({"rows": [penguin(bill_length_mm=30 + i % 20) for i in range(1000)]}).encode()

    answers = asyncio.run(burst(server.url, "/v1/models/penguins/predict", rows, "application/json", 24, 0.5))

    assert [answer for answer in answers if answer[0] != 200] == []


def test_a_cold_burst_that_would_miss_its_deadline_is_refused_at_once(
    make_repo: Callable[..., Path], live_server: Callable[..., LiveServer]
) -> None:
    # about 0.1 s a run, one item at a time, a 1 s deadline: about ten of twenty can be answered in time
    server = live_server(make_repo(("slow", 1)), max_batch_size=1, request_timeout_s=1.0)

    answers = asyncio.run(burst(server.url, "/v1/models/slow/predict", gradient_image(1), "image/png", 20))

    refused = [seconds for status, error, seconds in answers if status == 503 and error.startswith("queue_full")]
    assert len(refused) >= 5, answers
    assert max(refused) < 0.5, answers  # at once, before their bodies were decoded, not at the deadline
    assert {status for status, _, _ in answers} <= {200, 503, 504}
