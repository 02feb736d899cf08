"""A lean closed-loop HTTP/1.1 load generator for the benchmark.

Each of ``concurrency`` clients holds one keep-alive connection and sends the
next request as soon as the last answer is in. Requests are pre-encoded bytes
and answers are read by Content-Length, so the client spends little CPU on
the two cores it shares with the server. Bounded by both a request count and
a duration; it only talks to the address it is given (loopback here).
"""

from __future__ import annotations

import asyncio
import statistics
import time
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

    def add(self, other: "LoadResult") -> None:
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


async def _client(host: str, port: int, request: bytes, stop_at: float, budget: list[int], result: LoadResult) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at and budget[0] > 0:
            budget[0] -= 1
            started = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            elapsed_ms = (time.perf_counter() - started) * 1000
            result.latencies_ms.append(elapsed_ms)
            if status == 200:
                result.ok_latencies_ms.append(elapsed_ms)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            result.requests += 1
            if status != 200:
                result.errors += 1
    finally:
        writer.close()


async def run_load(
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    seconds: float,
    max_requests: int = 1_000_000,
    warmup_seconds: float = 1.0,
) -> LoadResult:
    """Closed-loop load; the first ``warmup_seconds`` are run but not counted."""
    if warmup_seconds > 0:
        await run_load(host, port, request, concurrency, warmup_seconds, max_requests, warmup_seconds=0)
    result = LoadResult(requests=0, errors=0, seconds=0.0, latencies_ms=[])
    budget = [max_requests]
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(_client(host, port, request, stop_at, budget, result) for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def load(host: str, port: int, request: bytes, concurrency: int, seconds: float, **kw: float) -> LoadResult:
    try:
        import uvloop

        return uvloop.run(run_load(host, port, request, concurrency, seconds, **kw))
    except ImportError:
        return asyncio.run(run_load(host, port, request, concurrency, seconds, **kw))
