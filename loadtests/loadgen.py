"""A lean closed-loop HTTP/1.1 load generator for the benchmark.

Closed loop (:func:`load`): each of ``concurrency`` clients holds one keep-alive connection and sends the
next request as soon as the last answer is in. Requests are pre-encoded bytes
and answers are read by Content-Length, so the client spends little CPU on
the two cores it shares with the server. Bounded by both a request count and
a duration; it only talks to the address it is given (loopback here).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    statuses: dict[int, int] = field(default_factory=dict)
    ok_latencies_ms: list[float] = field(default_factory=list, repr=False)  # of the 200 answers only

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def record(self, status: int, elapsed_ms: float) -> None:
        """One answer: its status and latency."""
        self.latencies_ms.append(elapsed_ms)
        if status == 200:
            self.ok_latencies_ms.append(elapsed_ms)
        else:
            self.errors += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.requests += 1

    def add(self, other: LoadResult) -> None:
        """Fold in another slice of the same load (alternating runs are measured in slices)."""
        self.requests += other.requests
        self.errors += other.errors
        self.seconds += other.seconds
        self.latencies_ms += other.latencies_ms
        self.ok_latencies_ms += other.ok_latencies_ms
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")


def build_request(
    host: str, port: int, path: str, body: bytes, content_type: str, extra: dict[str, str] | None = None
) -> bytes:
    headers = {
        "Host": f"{host}:{port}",
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "Connection": "keep-alive",
        **(extra or {}),
    }
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _client(
    host: str, port: int, requests: Sequence[bytes], first: int, stop_at: float, budget: list[int], result: LoadResult
) -> None:
    """One connection sending ``requests`` in turn, starting at index ``first``, until ``stop_at``."""
    reader, writer = await asyncio.open_connection(host, port)
    turn = first
    try:
        while time.perf_counter() < stop_at and budget[0] > 0:
            budget[0] -= 1
            started = time.perf_counter()
            writer.write(requests[turn % len(requests)])
            turn += 1
            status = await _read_response(reader)
            result.record(status, (time.perf_counter() - started) * 1000)
    finally:
        writer.close()


async def run_load(
    host: str,
    port: int,
    request: bytes | Sequence[bytes],
    concurrency: int,
    seconds: float,
    max_requests: int = 1_000_000,
    warmup_seconds: float = 1.0,
) -> LoadResult:
    """Closed-loop load; the first ``warmup_seconds`` are run but not counted. Several requests: every client
    sends them in turn, client i starting with ``request[i % len(request)]``."""
    if warmup_seconds > 0:
        await run_load(host, port, request, concurrency, warmup_seconds, max_requests, warmup_seconds=0)
    result = LoadResult(requests=0, errors=0, seconds=0.0, latencies_ms=[])
    budget = [max_requests]
    started = time.perf_counter()
    stop_at = started + seconds
    requests = [request] if isinstance(request, bytes) else list(request)
    await asyncio.gather(*(_client(host, port, requests, i, stop_at, budget, result) for i in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def load(
    host: str, port: int, request: bytes | Sequence[bytes], concurrency: int, seconds: float, **kw: float
) -> LoadResult:
    try:
        import uvloop

        return uvloop.run(run_load(host, port, request, concurrency, seconds, **kw))
    except ImportError:
        return asyncio.run(run_load(host, port, request, concurrency, seconds, **kw))


# -- open loop -------------------------------------------------------------------------------------


async def _send_on_pool(
    address: tuple[str, int],
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    request: bytes,
    intended: float,
    result: LoadResult,
) -> None:
    """One request of the schedule: wait for a free connection, send, and count from ``intended``."""
    reader, writer = await pool.get()
    status = 0
    for attempt in (1, 2):
        try:
            writer.write(request)
            status = await _read_response(reader)
            break
        except (OSError, asyncio.IncompleteReadError, ValueError):
            # The server closed an idle keep-alive connection (or it broke): reconnect and send once more.
            writer.close()
            if attempt == 2:
                break
            try:
                reader, writer = await asyncio.open_connection(*address)
            except OSError:
                break
    pool.put_nowait((reader, writer))
    result.record(status, (time.perf_counter() - intended) * 1000)


async def run_open_loop(
    host: str,
    port: int,
    request: bytes,
    rate: float,
    seconds: float,
    connections: int = 64,
    drain_seconds: float = 10.0,
) -> LoadResult:
    """Open-loop load: request ``i`` is due at ``start + i / rate`` whatever the answers before it did.

    Each request's latency is counted from its intended send time, not from
    when a connection was free to carry it, so queueing in the client (all
    ``connections`` busy) or in the server shows up in the percentiles instead
    of slowing the schedule down (coordinated omission). ``seconds`` bounds the
    schedule; requests still out after it get ``drain_seconds`` to finish and
    are counted in the result; ``result.seconds`` is the schedule's length.
    """
    # Last in, first out: at a low rate the same few connections stay warm rather than idling past keep-alive.
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.LifoQueue()
    opened = [await asyncio.open_connection(host, port) for _ in range(connections)]
    for pair in opened:
        pool.put_nowait(pair)
    result = LoadResult(requests=0, errors=0, seconds=0.0, latencies_ms=[])
    tasks: set[asyncio.Task[None]] = set()
    interval = 1.0 / rate
    total = max(1, int(rate * seconds))
    started = time.perf_counter()
    sent = 0
    while sent < total:
        now = time.perf_counter()
        due = min(total, int((now - started) / interval) + 1)
        while sent < due:  # everything already due goes out now, each keeping its own intended time
            task = asyncio.create_task(_send_on_pool((host, port), pool, request, started + sent * interval, result))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if sent < total:
            await asyncio.sleep(max(0.0, started + sent * interval - time.perf_counter()))
    result.seconds = total * interval
    if tasks:
        done, late = await asyncio.wait(set(tasks), timeout=drain_seconds)
        for task in late:
            task.cancel()
        result.requests += len(late)
        result.errors += len(late)
    while not pool.empty():
        pool.get_nowait()[1].close()
    return result


def open_loop(host: str, port: int, request: bytes, rate: float, seconds: float, connections: int = 64) -> LoadResult:
    """:func:`run_open_loop` on its own event loop (uvloop when installed)."""
    try:
        import uvloop

        return uvloop.run(run_open_loop(host, port, request, rate, seconds, connections))
    except ImportError:
        return asyncio.run(run_open_loop(host, port, request, rate, seconds, connections))
