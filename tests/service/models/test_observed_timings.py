"""What the batcher reports to its observer, and how the metrics expose it.

The inference time must be the runtime's own run, not the run plus however
long a busy event loop takes to resume the batcher; queue wait must be the
time spent queued; the queue-depth gauge must show the depth at scrape time.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.metrics import ServingMetrics
from service.models.batcher import DynamicBatcher


class RecordingObserver:
    def __init__(self) -> None:
        self.runs: list[tuple[int, float]] = []
        self.waits: list[float] = []
        self.depths: list[int] = []

    def queue_depth(self, items: int) -> None:
        self.depths.append(items)

    def queue_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def batch(self, items: int, run_seconds: float) -> None:
        self.runs.append((items, run_seconds))


def sleeping_model(seconds: float):
    def run(inputs):
        time.sleep(seconds)
        return inputs[0].astype(np.float32)

    return run


def one_row() -> list[np.ndarray]:
    return [np.zeros((1, 1), dtype=np.float32)]


def test_inference_time_excludes_the_wait_for_a_busy_event_loop():
    observer = RecordingObserver()

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(sleeping_model(0.02), pool, observer=observer)
            batcher.start()
            request = asyncio.ensure_future(batcher.submit(one_row(), timeout_s=5))
            await asyncio.sleep(0.005)  # the run has started in its thread
            time.sleep(0.3)  # the event loop is stuck on other work long after the run ends
            await request
            await batcher.drain()

    asyncio.run(scenario())

    assert len(observer.runs) == 1
    items, run_seconds = observer.runs[0]
    assert items == 1
    assert 0.015 <= run_seconds < 0.15


def test_queue_wait_of_a_request_behind_a_running_batch_is_about_that_run():
    observer = RecordingObserver()

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(sleeping_model(0.1), pool, observer=observer)
            batcher.start()
            first = asyncio.ensure_future(batcher.submit(one_row(), timeout_s=5))
            await asyncio.sleep(0.01)  # the first request is running now
            await asyncio.gather(first, batcher.submit(one_row(), timeout_s=5))
            await batcher.drain()

    asyncio.run(scenario())

    lone, queued = observer.waits
    assert lone < 0.05
    assert 0.05 <= queued < 0.3


def test_queue_depth_gauge_shows_the_last_reported_depth_when_scraped():
    metrics = ServingMetrics()
    version = metrics.for_version("digits", 3)

    version.queue_depth(7)

    text = metrics.render()[0].decode()
    assert 'serving_queue_depth{model="digits",version="3"} 7.0' in text
    version.unloaded()
    assert 'serving_queue_depth{model="digits"' not in metrics.render()[0].decode()
