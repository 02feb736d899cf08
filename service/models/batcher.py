"""The dynamic batcher: a queue, a size limit and a wait window (Ray Serve style).

Requests put their items (rows of the model inputs) on the queue; a worker
takes whatever is queued when the runtime is free, up to ``max_batch_size``
items, runs it in a thread so the event loop stays free, and hands every
request its own rows back in order. A request larger than a batch is split
across batches and reassembled. With ``max_queue_delay_ms = 0`` a lone
request never waits for company; batches form by themselves under load
while the previous batch runs. ``service.models.batch_policy`` chooses the size
limit and whether batches run on the event loop or in a thread, from timings
taken at load; the same timings let admission estimate a backlog before any
traffic has been measured (``RunCost``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

import numpy as np

from service.http.errors import DeadlineExceeded, InferenceFailed, QueueFull, Unavailable
from service.models.batch_policy import RunCost

log = logging.getLogger("service.models.batcher")

WAIT_WINDOW_S = 0.5  # the window over which admission looks for a queue that never emptied
STALE_WINDOWS = 2  # a standing-queue reading older than this many windows describes a queue that has since gone
RunBatch = Callable[[Sequence[np.ndarray]], np.ndarray]


class BatchObserver(Protocol):
    """Where the batcher reports what it does (the metrics of one version)."""

    def queue_depth(self, items: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def batch(self, items: int, run_seconds: float) -> None: ...


class _NoObserver:
    def queue_depth(self, items: int) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def batch(self, items: int, run_seconds: float) -> None:
        pass


@dataclass(eq=False)
class _Request:
    future: asyncio.Future[np.ndarray]
    size: int
    enqueued_at: float
    deadline: float
    parts: list[tuple[int, np.ndarray]] = field(default_factory=list)
    done_items: int = 0
    started: bool = False


@dataclass(eq=False)
class _Chunk:
    """A run of consecutive items of one request, still to be run."""

    request: _Request
    inputs: list[np.ndarray]
    offset: int

    @property
    def size(self) -> int:
        return int(self.inputs[0].shape[0])

    def split(self, n: int) -> tuple[_Chunk, _Chunk]:
        head = _Chunk(self.request, [a[:n] for a in self.inputs], self.offset)
        tail = _Chunk(self.request, [a[n:] for a in self.inputs], self.offset + n)
        return head, tail


def padded_sizes(max_batch_size: int) -> list[int]:
    """Fixed batch sizes when padding: powers of two below the maximum, and the maximum."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


class DynamicBatcher:
    """Batches items of concurrent requests for one served version."""

    def __init__(
        self,
        run_batch: RunBatch,
        executor: Executor,
        *,
        max_batch_size: int = 32,
        max_queue_delay_ms: float = 0.0,
        max_queue_size: int = 1024,
        max_queue_wait_s: float = 1.0,
        batches_in_flight: int = 1,
        pad_batches: bool = False,
        inline: bool = False,
        retry_after_s: int = 1,
        observer: BatchObserver | None = None,
        run_seconds: Mapping[int, float] | None = None,
        wait_window_s: float = WAIT_WINDOW_S,
    ) -> None:
        """``run_seconds``: the time of one run by batch size, timed at load (``BatchPlan.seconds_per_run``),
        so the backlog can be estimated before any traffic; ``wait_window_s``: the standing-queue window."""
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.max_queue_wait_s = max_queue_wait_s
        self.batches_in_flight = batches_in_flight
        self.pad_sizes = padded_sizes(max_batch_size) if pad_batches else None
        self.inline = inline  # run batches on the event loop (a model too fast to be worth a thread hand-off)
        self.retry_after_s = retry_after_s
        self.observer: BatchObserver = observer or _NoObserver()
        self._queue: deque[_Chunk] = deque()
        self._queued_items = 0
        self._has_work = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False
        self._admitted = 0  # requests admitted (reading or decoding their body) and not yet queued
        self._room = asyncio.Event()  # set when the queue drops below max_queue_size
        self._seconds_per_item = 0.0  # moving average of run time per item (what a shadow copy costs)
        self._cost = RunCost(run_seconds or {})  # a run's time by its items: the backlog estimate
        self._items_per_request = 1.0  # moving average, for requests admitted whose items are not known yet
        self._running = 0  # batches running now
        # The least time a request spent from admission to its answer in the last window, and in the one
        # before (CoDel's standing-queue test): a queue that never emptied in a whole window is overload.
        self.wait_window_s = wait_window_s
        self._window_started = 0.0
        self._window_least = float("inf")
        self.standing_wait_s = 0.0

    @property
    def queue_depth(self) -> int:
        return self._queued_items

    def batch_sizes(self) -> list[int]:
        """Every batch size a run can have: what warm-up must cover."""
        return list(self.pad_sizes) if self.pad_sizes else list(range(1, self.max_batch_size + 1))

    @property
    def seconds_per_item(self) -> float:
        """The recent run time per item (a moving average; 0 before the first batch)."""
        return self._seconds_per_item

    @property
    def admitted(self) -> int:
        return self._admitted

    def backlog_seconds(self, items: int) -> float:
        """About how long ``items`` queued items take to run: in batches of the cap, ``batches_in_flight`` at once.

        Run times come from the live runs, and before any from the timings taken at load (0 with neither)."""
        full, rest = divmod(max(items, 0), self.max_batch_size)
        runs = full * self._cost.seconds(self.max_batch_size) + self._cost.seconds(rest)
        return runs / self.batches_in_flight

    def _wait_seconds(self, items: int) -> float:
        """About how long until ``items`` queued items have been taken: the batches running now, then theirs."""
        running = self._cost.seconds(self.max_batch_size) if self._running >= self.batches_in_flight else 0.0
        return running + self.backlog_seconds(items)

    def observe_wait(self, seconds: float) -> None:
        """One admitted request's time from admission to its answer (``Admission`` reports it)."""
        now = time.perf_counter()
        if now - self._window_started >= self.wait_window_s:
            # A window closed long ago (a quiet spell since) says nothing of the queue now.
            fresh = now - self._window_started < STALE_WINDOWS * self.wait_window_s
            closed = self._window_least != float("inf") and fresh
            self.standing_wait_s = self._window_least if closed else 0.0
            self._window_started, self._window_least = now, seconds
        elif seconds < self._window_least:
            self._window_least = seconds

    def _clears_in_time(self, items: int, timeout_s: float) -> bool:
        """Whether a queue of ``items`` gets below ``max_queue_size`` within ``max_queue_wait_s`` (and the deadline).

        Never while no run time is known: then the bound holds as it is."""
        excess = items - self.max_queue_size + 1
        limit = min(self.max_queue_wait_s, timeout_s)
        return self._cost.known and self._wait_seconds(excess) < limit

    def _standing_wait(self, now: float) -> float:
        """The standing-queue reading while it is current: it lapses once no request finished for a while."""
        if now - self._window_started >= STALE_WINDOWS * self.wait_window_s:
            return 0.0
        return self.standing_wait_s

    def admit(self, timeout_s: float) -> Admission:
        """Take a request in, or refuse it at once: before its body is read or decoded, so a refusal is cheap.

        The limit adapts to the latency the queue adds, as CoDel judges a
        queue: refused while even the quickest request of the last window
        (``wait_window_s``) took longer than ``max_queue_wait_s`` from
        admission to answer (a standing queue, not a burst; a reading lapses
        after a quiet spell), when the items ahead would run past the
        deadline, and beyond ``max_queue_size``, the bound on memory, unless
        the queue gets below it within ``max_queue_wait_s``. The backlog is
        estimated in batches of the cap from the run times, the timings taken
        at load until live runs are measured, so a cold version admits a
        burst it can serve and refuses at once one it cannot. A fixed
        small queue would refuse clients that could have been served in time,
        and clients that retry at once then spend the server's time on
        refusals instead of answers.
        """
        if self._closing:
            raise Unavailable("this model version is being unloaded; retry to reach the current version")
        ahead = self._queued_items + self._admitted
        # Requests admitted but not yet queued count at the size requests have had lately.
        items = self._queued_items + math.ceil(self._admitted * self._items_per_request)
        # Over the bound, queued items that will have run within the wait limit are no reason to refuse;
        # requests still sending their bodies are (how long they take is the client's to say).
        if ahead >= self.max_queue_size and (
            self._admitted >= self.max_queue_size or not self._clears_in_time(items, timeout_s)
        ):
            raise QueueFull(
                f"the queue holds {ahead} items and requests (limit {self.max_queue_size}); retry later",
                self.retry_after_s,
            )
        backlog = self._wait_seconds(items)
        if backlog >= timeout_s:
            raise QueueFull(
                f"the queue's backlog ({items} items, about {backlog:.2g} s) would miss "
                f"the {timeout_s:.3g} s deadline; retry later",
                self.retry_after_s,
            )
        standing = self._standing_wait(time.perf_counter())
        if standing >= self.max_queue_wait_s and ahead > 0:
            raise QueueFull(
                f"requests have been waiting at least {standing:.2g} s for an answer, over the "
                f"{self.max_queue_wait_s:.3g} s the service lets a queue stand; retry later",
                self.retry_after_s,
            )
        self._admitted += 1
        return Admission(self)

    def start(self) -> None:
        """Start the workers (needs the running event loop)."""
        if not self._workers:
            self._workers = [asyncio.create_task(self._work()) for _ in range(self.batches_in_flight)]

    async def wait_for_room(self, timeout_s: float) -> None:
        """Return once the queue is below ``max_queue_size``: at once, or after the items ahead have run.

        A request already read and decoded waits for room when the runs ahead would make it within
        ``max_queue_wait_s`` (and its deadline); it is refused at once when they would not, or when no
        run time is known yet: a refusal means the wait would really exceed the limit.
        """
        if self._closing:
            raise Unavailable("this model version is being unloaded; retry to reach the current version")
        if self._queued_items < self.max_queue_size:
            return
        if not self._clears_in_time(self._queued_items, timeout_s):
            raise QueueFull(
                f"the queue holds {self._queued_items} items (limit {self.max_queue_size}); retry later",
                self.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        limit = min(self.max_queue_wait_s, timeout_s)
        give_up = loop.time() + limit
        while self._queued_items >= self.max_queue_size:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), give_up - loop.time())
            except TimeoutError:
                raise QueueFull(
                    f"the queue stayed at its limit of {self.max_queue_size} items for {limit:.3g} s; retry later",
                    self.retry_after_s,
                ) from None
            if self._closing:
                raise Unavailable("this model version is being unloaded; retry to reach the current version")

    async def submit(self, inputs: Sequence[np.ndarray], timeout_s: float) -> np.ndarray:
        """Queue ``n`` items (rows of each input); return the model output rows in the same order.

        A request is queued whenever the queue has room, whatever its size, so
        a large request is not starved by a stream of small ones.
        """
        await self.wait_for_room(timeout_s)  # returns without yielding when there is room
        size = int(inputs[0].shape[0])
        self._items_per_request = 0.8 * self._items_per_request + 0.2 * size
        loop = asyncio.get_running_loop()
        now = loop.time()
        request = _Request(loop.create_future(), size, now, now + timeout_s)
        self._queue.append(_Chunk(request, list(inputs), 0))
        self._queued_items += size
        self.observer.queue_depth(self._queued_items)
        self._has_work.set()
        if self._queued_items >= self.max_batch_size:
            self._batch_full.set()
        expiry = loop.call_at(request.deadline, _expire, request)
        try:
            return await request.future
        finally:
            expiry.cancel()

    async def drain(self) -> None:
        """Stop accepting, run everything queued, wait for batches in flight, stop the workers."""
        self._closing = True
        self._has_work.set()
        self._batch_full.set()  # a worker waiting out the delay window runs what it has now
        self._room.set()  # a request waiting for room is refused now
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._has_work.clear()
                await self._has_work.wait()
            if self.max_queue_delay_s > 0 and self._queued_items < self.max_batch_size and not self._closing:
                # The wait window counts from the oldest item's arrival, so no item waits longer than it.
                window = self._queue[0].request.enqueued_at + self.max_queue_delay_s - loop.time()
                if window > 0:
                    self._batch_full.clear()
                    try:
                        await asyncio.wait_for(self._batch_full.wait(), window)
                    except TimeoutError:
                        pass
            chunks = self._take(loop.time())
            if chunks:
                self._running += 1
                try:
                    await self._run(chunks, loop)
                finally:
                    self._running -= 1

    def _take(self, now: float) -> list[_Chunk]:
        """Pop up to ``max_batch_size`` live items; expired or abandoned ones are dropped, not run."""
        taken: list[_Chunk] = []
        room = self.max_batch_size
        while self._queue and room > 0:
            chunk = self._queue.popleft()
            request = chunk.request
            if request.future.done() or now >= request.deadline:
                self._queued_items -= chunk.size
                if not request.future.done():
                    request.future.set_exception(_deadline_error(request))
                continue
            if chunk.size > room:
                chunk, rest = chunk.split(room)
                self._queue.appendleft(rest)
            self._queued_items -= chunk.size
            room -= chunk.size
            if not request.started:
                request.started = True
                self.observer.queue_wait(now - request.enqueued_at)
            taken.append(chunk)
        self.observer.queue_depth(self._queued_items)
        if self._queued_items < self.max_queue_size:
            self._room.set()
        return taken

    async def _run(self, chunks: list[_Chunk], loop: asyncio.AbstractEventLoop) -> None:
        n_inputs = len(chunks[0].inputs)
        if len(chunks) == 1:
            arrays = chunks[0].inputs
        else:
            arrays = [np.concatenate([c.inputs[i] for c in chunks]) for i in range(n_inputs)]
        items = int(arrays[0].shape[0])
        ran = items
        if self.pad_sizes:
            ran = next(s for s in self.pad_sizes if s >= items)
            arrays = _pad(arrays, ran)
        try:
            if self.inline:
                output, run_seconds = _timed(self.run_batch, arrays)
                await asyncio.sleep(0)  # let the other requests' callbacks run between inline batches
            else:
                output, run_seconds = await loop.run_in_executor(self.executor, _timed, self.run_batch, arrays)
            if len(output) < items:
                raise ValueError(f"the model returned {len(output)} rows for {items} items")
        except Exception as exc:  # the runtime failed: every request in this batch fails, the service goes on
            log.exception("a batch of %d items failed", items)
            for chunk in chunks:
                if not chunk.request.future.done():
                    chunk.request.future.set_exception(InferenceFailed(f"inference failed: {exc}"))
            return
        self.observer.batch(items, run_seconds)
        self._cost.observe(ran, run_seconds)
        per_item = run_seconds / items
        previous = self._seconds_per_item
        self._seconds_per_item = per_item if not previous else 0.8 * previous + 0.2 * per_item
        position = 0
        for chunk in chunks:
            _deliver(chunk, output[position : position + chunk.size])
            position += chunk.size


class Admission:
    """One admitted request: its place is held from ``admit`` until it is queued (``submit``) or given up."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        self.batcher = batcher
        self.holding = True
        self.admitted_at = time.perf_counter()

    async def submit(self, inputs: Sequence[np.ndarray], timeout_s: float) -> np.ndarray:
        waited = time.perf_counter()
        try:
            await self.batcher.wait_for_room(timeout_s)  # its place is held while it waits
        finally:
            self._release()
        waited = time.perf_counter() - waited
        output = await self.batcher.submit(inputs, timeout_s - waited)
        self.batcher.observe_wait(time.perf_counter() - self.admitted_at)
        return output

    def _release(self) -> None:
        if self.holding:
            self.holding = False
            self.batcher._admitted -= 1

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._release()


def _timed(run_batch: RunBatch, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, float]:
    """Run a batch and time it in the runtime's thread.

    Timing around the ``await`` on the event loop would add however long a
    busy loop takes to resume the worker, which under load dwarfs a small
    model's run.
    """
    started = time.perf_counter()
    output = run_batch(arrays)
    return output, time.perf_counter() - started


def _pad(arrays: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    """Zero rows up to ``size`` (zero is a valid pixel value and the ``#na#`` category)."""
    missing = size - int(arrays[0].shape[0])
    if missing <= 0:
        return list(arrays)
    return [np.concatenate([a, np.zeros((missing, *a.shape[1:]), a.dtype)]) for a in arrays]


def _deliver(chunk: _Chunk, rows: np.ndarray) -> None:
    request = chunk.request
    if request.future.done():
        return
    request.parts.append((chunk.offset, rows))
    request.done_items += chunk.size
    if request.done_items < request.size:
        return
    if len(request.parts) == 1:
        request.future.set_result(rows)
        return
    request.parts.sort(key=lambda part: part[0])
    request.future.set_result(np.concatenate([part for _, part in request.parts]))


def _deadline_error(request: _Request) -> DeadlineExceeded:
    waited = request.deadline - request.enqueued_at
    return DeadlineExceeded(f"the request did not finish within its {waited:.3g} s deadline")


def _expire(request: _Request) -> None:
    if not request.future.done():
        request.future.set_exception(_deadline_error(request))
