"""The one-way channel from the workers to the control process: monitoring observations and rollout readings.

Workers never wait on it. On the request path :meth:`ChannelSender.send` only appends the message to a
deque and counts it in shared memory (no lock, no thread wake-up, as the monitor's own queue); the
sender's thread takes what is there every ``SEND_INTERVAL_S`` and puts it, as one batch, on a bounded
``multiprocessing`` queue (pickled and written by the queue's feeder thread). A full deque or queue
drops the messages and counts them (``serving_control_dropped_total``). The control process's
:class:`ChannelReceiver` thread rebuilds each message against its own loaded versions and hands it to its
monitor and rollout manager, which then see the traffic of every worker. Each worker's count of what it
sent lets the control process wait for what was answered before a read (feedback, the review queue).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable
from dataclasses import fields
from multiprocessing.queues import Queue
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from service.monitoring.observation import Observation

log = logging.getLogger("service.parallel")

SEND_INTERVAL_S = 0.02  # a worker sends what requests left this often
PUT_TIMEOUT_S = 1.0  # a batch waits this long for room in the queue, then is dropped (the sender's thread waits)
# the fields of an Observation after its state (which the control process rebuilds from its own version)
_OBSERVATION_FIELDS = [f.name for f in fields(Observation)][1:]
STOP = "stop"

Batch = tuple[int, int, list[tuple[Any, ...]]]  # (worker index, worker pid, messages)


class ChannelMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.dropped = Counter(
            "serving_control_dropped",
            "Messages to the control process dropped because its queue was full (kind: observation, shadow, rollout).",
            ["kind"],
            registry=registry,
        )


class ChannelSender:
    """A worker's end: observations, shadow records and rollout readings, sent without waiting."""

    def __init__(self, channel: Queue[Any], metrics: ChannelMetrics, index: int, sent: Any, capacity: int) -> None:
        self.channel = channel
        self.metrics = metrics
        self.index = index
        self.sent = sent  # shared: what each worker has sent since it started (a restarted worker starts at 0)
        self.sent[index] = 0
        self.capacity = capacity
        self._pending: deque[tuple[Any, ...]] = deque()
        self._count = 0
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="control-sender", daemon=True)
        self._thread.start()

    def send(self, message: tuple[Any, ...]) -> None:
        if len(self._pending) >= self.capacity:
            self.metrics.dropped.labels(message[0]).inc()
            return
        self._pending.append(message)
        self._count += 1
        self.sent[self.index] = self._count

    def observation(self, o: Observation) -> None:
        values = tuple(getattr(o, name) for name in _OBSERVATION_FIELDS)
        self.send(("observation", o.state.name, o.state.version, values))

    def shadow(self, *args: Any) -> None:
        self.send(("shadow", args))

    def rollout(self, method: str, *args: Any) -> None:
        self.send(("rollout", method, args))

    def close(self) -> None:
        """Send what is left, then stop."""
        self._closing = True
        self._wake.set()
        self._thread.join(PUT_TIMEOUT_S + 1.0)

    def _run(self) -> None:
        pending, pid = self._pending, os.getpid()
        while True:
            self._wake.wait(SEND_INTERVAL_S)
            closing = self._closing
            if pending:
                batch = [pending.popleft() for _ in range(len(pending))]
                try:
                    self.channel.put((self.index, pid, batch), timeout=PUT_TIMEOUT_S)
                except queue.Full:
                    for kind, n in Tally(m[0] for m in batch).items():
                        self.metrics.dropped.labels(kind).inc(n)
            if closing:
                return


class ChannelReceiver:
    """The control process's end: a thread that hands every message to the monitor or the rollout manager."""

    def __init__(self, channel: Queue[Any], sent: Any) -> None:
        self.channel = channel
        self.sent = sent
        self._received: dict[int, tuple[int, int]] = {}  # worker index -> (its pid, messages handed over)
        self._thread: threading.Thread | None = None

    def start(
        self,
        version_of: Callable[[str, int], Any | None],
        monitor: Any,
        rollout: Any,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Start handing messages over; ``version_of(name, version)`` finds this process's loaded version (None if not loaded)."""
        self._thread = threading.Thread(
            target=self._run, args=(version_of, monitor, rollout, loop), name="control-channel", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop after what the queue holds now (the workers have stopped by then)."""
        if self._thread is not None and self._thread.is_alive():
            self.channel.put(STOP)
            self._thread.join(10.0)

    def wait_idle(self, timeout_s: float = 2.0) -> bool:
        """Wait (blocking) until every message the workers had sent is handed over (an answered request's
        observation among them); False on timeout."""
        deadline = time.monotonic() + timeout_s
        target = list(self.sent)
        while any(self._received.get(i, (0, 0))[1] < n for i, n in enumerate(target)):
            if time.monotonic() > deadline or self._thread is None or not self._thread.is_alive():
                return False
            time.sleep(0.002)
        return True

    def _run(self, version_of: Callable[[str, int], Any | None], monitor: Any, rollout: Any, loop: Any) -> None:
        while True:
            item = self.channel.get()
            if item == STOP:
                return
            index, pid, batch = item
            for message in batch:
                try:
                    self._handle(message, version_of, monitor, rollout, loop)
                except Exception:
                    log.exception("the control process could not handle a %s message", message[0])
            known_pid, received = self._received.get(index, (pid, 0))
            self._received[index] = (pid, (received if known_pid == pid else 0) + len(batch))

    def _handle(self, message: tuple[Any, ...], version_of: Any, monitor: Any, rollout: Any, loop: Any) -> None:
        kind = message[0]
        if kind == "observation" and monitor is not None:
            _, name, number, values = message
            version = version_of(name, number)
            if version is None:  # a version this process has not loaded (yet): left out, counted
                monitor.metrics.dropped.inc()
                return
            monitor.worker.submit(Observation(monitor.prepare(version), *values))
        elif kind == "shadow" and monitor is not None:
            monitor.log_shadow(*message[1])
        elif kind == "rollout" and rollout is not None:
            _, method, args = message
            # the rollout manager lives on the event loop: its windows are changed there only
            loop.call_soon_threadsafe(getattr(rollout, method), *args)
