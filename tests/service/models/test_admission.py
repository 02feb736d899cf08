"""Admission judges the wait a request would have: from the timings taken at load until live runs are measured.

The "model" sleeps a fixed time per run, so what a queue would really take is known to the test.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from service.http.errors import DeadlineExceeded, QueueFull
from service.models.batch_policy import RunCost
from service.models.batcher import DynamicBatcher


class SleepingModel:
    """Runs a batch in ``base + per_item * items`` seconds and echoes its rows."""

    def __init__(self, base: float, per_item: float = 0.0) -> None:
        self.base = base
        self.per_item = per_item

    def __call__(self, inputs: Any) -> np.ndarray:
        time.sleep(self.base + self.per_item * len(inputs[0]))
        return inputs[0].astype(np.float32)


def item(i: float, n: int = 1) -> list[np.ndarray]:
    return [np.full((n, 1), i, dtype=np.float32)]


async def serve_one(batcher: DynamicBatcher, i: int, deadline_s: float = 30.0, n: int = 1) -> str:
    try:
        with batcher.admit(deadline_s) as admission:
            await admission.submit(item(i, n), deadline_s)
        return "ok"
    except QueueFull as exc:
        return str(exc)
    except DeadlineExceeded:
        return "late"


def with_batcher(scenario: Any, model: Any, **options: Any) -> Any:
    async def main() -> Any:
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(model, pool, **options)
            batcher.start()
            try:
                return await scenario(batcher)
            finally:
                await batcher.drain()

    return asyncio.run(main())


def test_run_times_follow_the_curve_timed_at_load_between_and_beyond_its_sizes() -> None:
    cost = RunCost({1: 0.010, 8: 0.017, 32: 0.040})
    assert cost.seconds(8) == pytest.approx(0.017)
    assert cost.seconds(4) == pytest.approx(0.013)  # between 1 and 8
    assert cost.seconds(64) == pytest.approx(0.080)  # beyond 32: per item
    cost.observe(8, 0.034)  # the machine runs twice as slow as at load
    assert 0.017 < cost.seconds(8) < 0.034 and cost.seconds(32) > 0.040


def test_one_stalled_run_does_not_make_the_machine_look_stalled() -> None:
    cost = RunCost({8: 0.001})
    cost.observe(8, 2.0)  # descheduled for two seconds in the middle of a millisecond's run
    assert cost.seconds(8) < 0.002
    for _ in range(10):  # a machine that really got slower is followed
        cost.observe(8, 0.01)
    assert cost.seconds(8) > 0.008


def test_without_timings_nothing_is_known_until_a_run() -> None:
    cost = RunCost({})
    assert not cost.known and cost.seconds(10) == 0
    cost.observe(4, 0.02)
    assert cost.known and cost.seconds(10) == pytest.approx(0.05)


def test_the_backlog_is_counted_in_batches_of_the_cap() -> None:
    async def scenario(batcher: DynamicBatcher) -> tuple[float, float]:
        return batcher.backlog_seconds(64), batcher.backlog_seconds(9)

    full, partial = with_batcher(scenario, SleepingModel(0), max_batch_size=8, run_seconds={1: 0.010, 8: 0.016})
    assert full == pytest.approx(8 * 0.016)  # eight full batches, not 64 items at the time of one alone
    assert partial == pytest.approx(0.016 + 0.010)


def test_a_cold_version_refuses_at_once_what_it_could_not_serve_before_the_deadline() -> None:
    async def scenario(batcher: DynamicBatcher) -> list[tuple[str, float]]:
        started = time.perf_counter()

        async def timed(i: int) -> tuple[str, float]:
            outcome = await serve_one(batcher, i, deadline_s=0.5)
            return outcome, time.perf_counter() - started

        return await asyncio.gather(*(timed(i) for i in range(30)))

    # 50 ms a run, one item at a time: ten requests fill the 0.5 s deadline; no run has been measured yet
    outcomes = with_batcher(scenario, SleepingModel(0.05), max_batch_size=1, run_seconds={1: 0.05})
    refused = [(o, t) for o, t in outcomes if o not in ("ok", "late")]
    assert 18 <= len(refused) <= 21, outcomes
    assert all("would miss" in o and t < 0.1 for o, t in refused)  # at once, not after waiting
    assert [o for o, _ in outcomes].count("late") <= 1


def test_a_cold_burst_of_large_requests_beyond_the_queue_bound_is_served_when_it_clears_in_time() -> None:
    async def scenario(batcher: DynamicBatcher) -> list[str]:
        admitted = [batcher.admit(30.0) for _ in range(16)]  # all in before the first body is decoded
        done = await asyncio.gather(*(a.submit(item(i, 100), 30.0) for i, a in enumerate(admitted)))
        return ["ok" if len(rows) == 100 else "short" for rows in done]

    # 1,600 items against a bound of 100: the requests wait for room, which comes every few milliseconds
    outcomes = with_batcher(
        scenario,
        SleepingModel(0.0005, 0.00001),
        max_batch_size=50,
        max_queue_size=100,
        max_queue_wait_s=1.0,
        run_seconds={50: 0.001},
    )
    assert outcomes == ["ok"] * 16


def test_a_request_arriving_over_the_bound_is_admitted_when_the_queue_clears_in_time() -> None:
    async def scenario(batcher: DynamicBatcher) -> list[str]:
        outcomes = []
        for i in range(8):  # one after another, each arriving while the one before is queued
            outcomes.append(asyncio.create_task(serve_one(batcher, i, n=100)))
            await asyncio.sleep(0)
        return await asyncio.gather(*outcomes)

    outcomes = with_batcher(
        scenario, SleepingModel(0.0005), max_batch_size=100, max_queue_size=100, run_seconds={100: 0.0005}
    )
    assert outcomes == ["ok"] * 8


def test_requests_still_sending_their_bodies_fill_the_bound_whatever_the_run_time() -> None:
    async def scenario(batcher: DynamicBatcher) -> str:
        holding = [batcher.admit(30.0) for _ in range(2)]  # admitted, their bodies still on the way
        outcome = await serve_one(batcher, 0)
        for admission in holding:
            admission.__exit__(None, None, None)
        return outcome

    outcome = with_batcher(scenario, SleepingModel(0), max_batch_size=1, max_queue_size=2, run_seconds={1: 0.0001})
    assert "queue holds 2 items and requests" in outcome


def test_a_decoded_request_is_refused_at_once_when_room_would_come_too_late() -> None:
    async def scenario(batcher: DynamicBatcher) -> tuple[str, float]:
        first, second, third = (batcher.admit(30.0) for _ in range(3))  # all in before any body is decoded
        running = asyncio.create_task(first.submit(item(1, 4), 30.0))
        await asyncio.sleep(0.05)  # the first batch runs
        queued = asyncio.create_task(second.submit(item(2, 4), 30.0))  # the queue is at its bound
        await asyncio.sleep(0)
        started = time.perf_counter()
        try:
            await third.submit(item(3, 4), 30.0)
            outcome = "ok"
        except QueueFull as exc:
            outcome = str(exc)
        waited = time.perf_counter() - started
        await asyncio.gather(running, queued)
        return outcome, waited

    # 0.2 s a run of four items, room for four: room comes once the running batch ends, past the 0.1 s limit
    outcome, waited = with_batcher(
        scenario, SleepingModel(0.2), max_batch_size=4, max_queue_size=4, max_queue_wait_s=0.1, run_seconds={4: 0.2}
    )
    assert "queue holds" in outcome and waited < 0.05


def test_a_standing_queue_reading_lapses_after_a_quiet_spell() -> None:
    window = 0.1

    async def scenario(batcher: DynamicBatcher) -> tuple[list[str], list[str]]:
        overload: list[str] = []

        async def client(i: int) -> None:
            until = time.perf_counter() + 6 * window
            while time.perf_counter() < until:
                overload.append(await serve_one(batcher, i))
                await asyncio.sleep(0 if overload[-1] == "ok" else 0.005)

        await asyncio.gather(*(client(i) for i in range(12)))  # a queue that stands: the last window's reading
        await asyncio.sleep(3 * window)  # quiet: no request at all
        burst = await asyncio.gather(*(serve_one(batcher, i) for i in range(6)))
        return overload, burst

    # 10 ms a run, one at a time: 12 clients keep about 0.12 s of queue, over the 0.05 s limit
    overload, burst = with_batcher(
        scenario, SleepingModel(0.01), max_batch_size=1, max_queue_wait_s=0.05, wait_window_s=window
    )
    assert any("waiting at least" in o for o in overload)  # the reading was there and was acted on
    assert burst == ["ok"] * 6  # a burst after a quiet spell is judged afresh, not by the old reading
