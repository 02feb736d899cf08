"""The decode queue: a bounded backlog in front of the decoding thread pool, and deadlines honoured there.

Decoding a large image or a wide table takes a pool thread for a while, so
requests can pile up in front of the pool. Two rules keep that pile
harmless: beyond ``max_backlog`` waiting requests a new one is refused at
once (503), and a request whose deadline passed while it waited is skipped
when its turn comes (504), not run for nobody.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from service.http.errors import DeadlineExceeded, QueueFull

T = TypeVar("T")


class DecodeQueue:
    """Runs decoding jobs in a thread pool of ``threads`` threads, with at most ``max_backlog`` waiting."""

    def __init__(self, threads: int, max_backlog: int, retry_after_s: int = 1) -> None:
        self.threads = threads
        self.max_backlog = max_backlog
        self.retry_after_s = retry_after_s
        self.in_pool = 0  # submitted and not finished: running (at most ``threads``) or waiting

    @property
    def backlog(self) -> int:
        return max(0, self.in_pool - self.threads)

    async def run(self, executor: Executor | None, deadline: float, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args, deadline=deadline)`` in the pool; ``deadline`` is a ``time.perf_counter()`` time."""
        if self.backlog >= self.max_backlog:
            raise QueueFull(
                f"{self.backlog} requests are waiting for preprocessing (limit {self.max_backlog}); retry later",
                self.retry_after_s,
            )
        self.in_pool += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, _unless_expired, deadline, fn, args)
        finally:
            self.in_pool -= 1


def _unless_expired(deadline: float, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    if time.perf_counter() >= deadline:
        raise DeadlineExceeded("the request deadline passed while it waited for preprocessing; it was not run")
    return fn(*args, deadline=deadline)
