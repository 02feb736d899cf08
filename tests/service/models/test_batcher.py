"""The dynamic batcher on its own: queue, size limit, wait window, deadlines, splitting, draining.

The "model" here is a small numpy function that doubles its input and
records every batch it is given, so the tests can see exactly what ran.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.http.errors import DeadlineExceeded, InferenceFailed, QueueFull, Unavailable
from service.models.batcher import DynamicBatcher, padded_sizes


class DoublingModel:
    """Doubles every row; sleeps ``seconds`` per run; remembers batch sizes and peak concurrency."""

    def __init__(self, seconds: float = 0.0, fail_on: int | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.batches: list[int] = []
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, inputs):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.batches.append(int(inputs[0].shape[0]))
        try:
            time.sleep(self.seconds)
            if self.fail_on is not None and self.fail_on in inputs[0]:
                raise RuntimeError("the model broke")
            return inputs[0].astype(np.float32) * 2
        finally:
            with self.lock:
                self.running -= 1


def rows(*values: float) -> list[np.ndarray]:
    return [np.array(values, dtype=np.float32).reshape(-1, 1)]


def run(coro_fn, model, **options):
    """Run ``coro_fn(batcher)`` on a fresh loop with a started batcher, then drain it."""

    async def main():
        with ThreadPoolExecutor(options.get("batches_in_flight", 1)) as pool:
            batcher = DynamicBatcher(model, pool, **options)
            batcher.start()
            try:
                return await coro_fn(batcher)
            finally:
                await batcher.drain()

    return asyncio.run(main())


def test_lone_request_runs_at_once_in_a_batch_of_one():
    model = DoublingModel()

    async def scenario(batcher):
        started = time.perf_counter()
        out = await batcher.submit(rows(3.0), timeout_s=5)
        return out, time.perf_counter() - started

    out, elapsed = run(scenario, model, max_batch_size=8)

    assert out.tolist() == [[6.0]]
    assert model.batches == [1]
    assert elapsed < 0.5


def test_requests_arriving_while_the_runtime_is_busy_form_one_batch():
    model = DoublingModel(seconds=0.1)

    async def scenario(batcher):
        first = asyncio.create_task(batcher.submit(rows(0.0), 5))
        await asyncio.sleep(0.02)  # the first batch is running now
        rest = [asyncio.create_task(batcher.submit(rows(float(i)), 5)) for i in range(1, 6)]
        return await asyncio.gather(first, *rest)

    outs = run(scenario, model, max_batch_size=8)

    assert [o.tolist() for o in outs] == [[[2.0 * i]] for i in range(6)]
    assert model.batches == [1, 5]


def test_batches_never_exceed_the_size_limit():
    model = DoublingModel(seconds=0.05)

    async def scenario(batcher):
        return await asyncio.gather(*(batcher.submit(rows(float(i)), 5) for i in range(10)))

    run(scenario, model, max_batch_size=4)

    assert max(model.batches) <= 4
    assert sum(model.batches) == 10


def test_large_request_is_split_across_batches_and_reassembled_in_order():
    model = DoublingModel()
    values = [float(i) for i in range(20)]

    out = run(lambda b: b.submit(rows(*values), 5), model, max_batch_size=8)

    assert out[:, 0].tolist() == [2 * v for v in values]
    assert model.batches == [8, 8, 4]


def test_split_request_shares_batches_with_its_neighbours_in_order():
    model = DoublingModel(seconds=0.05)

    async def scenario(batcher):
        blocker = asyncio.create_task(batcher.submit(rows(-1.0), 5))
        await asyncio.sleep(0.01)
        a = asyncio.create_task(batcher.submit(rows(1, 2, 3), 5))
        b = asyncio.create_task(batcher.submit(rows(4, 5, 6, 7, 8), 5))
        return await asyncio.gather(blocker, a, b)

    _, a, b = run(scenario, model, max_batch_size=4)

    assert a[:, 0].tolist() == [2, 4, 6]
    assert b[:, 0].tolist() == [8, 10, 12, 14, 16]
    assert model.batches == [1, 4, 4]


def test_full_queue_rejects_with_queue_full_and_retry_after():
    model = DoublingModel(seconds=0.2)

    async def scenario(batcher):
        running = asyncio.create_task(batcher.submit(rows(1.0), 5))
        await asyncio.sleep(0.02)
        queued = asyncio.create_task(batcher.submit(rows(2.0, 3.0), 5))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as refused:
            await batcher.submit(rows(4.0), 5)
        await asyncio.gather(running, queued)
        return refused.value

    refused = run(scenario, model, max_batch_size=2, max_queue_size=2, retry_after_s=3)

    assert refused.retry_after_s == 3
    assert refused.status == 503


def test_expired_request_gets_deadline_exceeded_and_is_not_run():
    model = DoublingModel(seconds=0.2)

    async def scenario(batcher):
        running = asyncio.create_task(batcher.submit(rows(1.0), 5))
        await asyncio.sleep(0.02)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(rows(99.0), timeout_s=0.05)
        await running

    run(scenario, model, max_batch_size=4)

    assert model.batches == [1]  # the expired item never reached the model


def test_request_expiring_while_it_runs_gets_deadline_exceeded_without_waiting():
    model = DoublingModel(seconds=0.3)

    async def scenario(batcher):
        started = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(rows(1.0), timeout_s=0.05)
        return time.perf_counter() - started

    assert run(scenario, model) < 0.25


def test_queue_delay_window_lets_a_batch_fill():
    model = DoublingModel()

    async def scenario(batcher):
        first = asyncio.create_task(batcher.submit(rows(1.0), 5))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(batcher.submit(rows(2.0), 5))
        return await asyncio.gather(first, second)

    run(scenario, model, max_batch_size=8, max_queue_delay_ms=150)

    assert model.batches == [2]


def test_full_batch_does_not_wait_for_the_window():
    model = DoublingModel()

    async def scenario(batcher):
        started = time.perf_counter()
        await asyncio.gather(*(batcher.submit(rows(float(i)), 5) for i in range(4)))
        return time.perf_counter() - started

    assert run(scenario, model, max_batch_size=4, max_queue_delay_ms=2000) < 1.0
    assert model.batches == [4]


def test_batches_in_flight_run_concurrently():
    model = DoublingModel(seconds=0.1)

    async def scenario(batcher):
        return await asyncio.gather(*(batcher.submit(rows(float(i)), 5) for i in range(4)))

    run(scenario, model, max_batch_size=1, batches_in_flight=2)

    assert model.peak == 2


def test_padding_runs_fixed_batch_sizes_and_returns_only_real_rows():
    model = DoublingModel()

    out = run(lambda b: b.submit(rows(1, 2, 3), 5), model, max_batch_size=8, pad_batches=True)

    assert model.batches == [4]
    assert out[:, 0].tolist() == [2, 4, 6]


def test_padded_sizes_are_powers_of_two_up_to_the_maximum():
    assert padded_sizes(1) == [1]
    assert padded_sizes(8) == [1, 2, 4, 8]
    assert padded_sizes(12) == [1, 2, 4, 8, 12]


def test_batch_sizes_for_warm_up_cover_every_size_the_runs_can_have(tmp_path):
    with ThreadPoolExecutor(1) as pool:
        assert DynamicBatcher(DoublingModel(), pool, max_batch_size=5).batch_sizes() == [1, 2, 3, 4, 5]
        assert DynamicBatcher(DoublingModel(), pool, max_batch_size=5, pad_batches=True).batch_sizes() == [1, 2, 4, 5]


def test_model_failure_fails_that_batch_only():
    model = DoublingModel(fail_on=13)

    async def scenario(batcher):
        with pytest.raises(InferenceFailed, match="the model broke"):
            await batcher.submit(rows(13.0), 5)
        return await batcher.submit(rows(1.0), 5)

    assert run(scenario, model).tolist() == [[2.0]]


def test_drain_finishes_queued_work_then_refuses_new_requests():
    model = DoublingModel(seconds=0.05)

    async def scenario(batcher):
        pending = [asyncio.create_task(batcher.submit(rows(float(i)), 5)) for i in range(3)]
        await asyncio.sleep(0)
        await batcher.drain()
        results = [p.result()[0, 0] for p in pending]
        with pytest.raises(Unavailable):
            await batcher.submit(rows(1.0), 5)
        return results

    assert run(scenario, model, max_batch_size=1) == [0.0, 2.0, 4.0]


def test_abandoned_request_is_dropped_from_the_queue():
    model = DoublingModel(seconds=0.1)

    async def scenario(batcher):
        running = asyncio.create_task(batcher.submit(rows(1.0), 5))
        await asyncio.sleep(0.02)
        abandoned = asyncio.create_task(batcher.submit(rows(2.0), 5))
        await asyncio.sleep(0.01)
        abandoned.cancel()  # the client went away
        await running
        await asyncio.sleep(0.05)
        return batcher.queue_depth

    assert run(scenario, model) == 0
    assert model.batches == [1]


def test_model_returning_too_few_rows_fails_the_batch_instead_of_misassigning_results():
    def truncating_model(inputs):
        return inputs[0][:1].astype(np.float32)

    async def scenario(batcher):
        with pytest.raises(InferenceFailed, match="1 rows for 3 items"):
            await batcher.submit(rows(1, 2, 3), 5)

    run(scenario, truncating_model)


def test_a_burst_is_admitted_but_a_standing_queue_is_refused_at_once() -> None:
    """Admission adapts to the wait the queue adds (CoDel): a queue is refused only once it stands."""

    async def scenario() -> tuple[int, int, str, int]:
        executor = ThreadPoolExecutor(1)
        # 20 ms per item, one at a time: 40 requests queue for up to 0.8 s
        batcher = DynamicBatcher(
            DoublingModel(0.02), executor, max_batch_size=1, max_queue_size=1024, max_queue_wait_s=0.15
        )
        batcher.start()

        async def one(i: int) -> str:
            try:
                with batcher.admit(30.0) as admission:
                    await admission.submit([np.array([[float(i)]])], 30.0)
                return "ok"
            except QueueFull as exc:
                return str(exc)

        burst = await asyncio.gather(*(one(i) for i in range(40)))  # a burst: everyone admitted, all answered
        # a standing queue: clients that keep 20 requests waiting, longer than 0.15 s, for over a window
        outcomes: list[str] = []

        async def client(i: int) -> None:
            deadline = time.perf_counter() + 1.5
            while time.perf_counter() < deadline:
                outcomes.append(await one(i))
                if outcomes[-1] != "ok":
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(client(i) for i in range(20)))
        await batcher.drain()
        refused = [o for o in outcomes if o != "ok"]
        return burst.count("ok"), len(refused), refused[0] if refused else "", outcomes.count("ok")

    burst_ok, refused, message, served = asyncio.run(scenario())
    assert burst_ok == 40
    assert refused > 0 and "waiting at least" in message
    assert served > 20  # the queue kept being served while the excess was refused
