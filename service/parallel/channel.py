"""The one-way channel from the workers to the control process: monitoring observations and rollout readings.

Workers never wait on it: :meth:`ChannelSender.send` is ``put_nowait`` on a bounded
``multiprocessing`` queue (the pickling and the pipe write happen in the queue's feeder thread);
a full queue drops the message and counts it (``serving_control_dropped_total``). The control
process's :class:`ChannelReceiver` thread rebuilds each message against its own loaded versions and
hands it to its monitor and rollout manager, which then see the traffic of every worker.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import fields
from multiprocessing.queues import Queue
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from service.monitoring.observation import Observation

log = logging.getLogger("service.parallel")

# the fields of an Observation after its state (which the control process rebuilds from its own version)
_OBSERVATION_FIELDS = [f.name for f in fields(Observation)][1:]
STOP = ("stop",)


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

    def __init__(self, channel: Queue[tuple[Any, ...]], metrics: ChannelMetrics) -> None:
        self.channel = channel
        self.metrics = metrics

    def send(self, kind: str, message: tuple[Any, ...]) -> None:
        try:
            self.channel.put_nowait(message)
        except queue.Full:
            self.metrics.dropped.labels(kind).inc()

    def observation(self, o: Observation) -> None:
        values = tuple(getattr(o, name) for name in _OBSERVATION_FIELDS)
        self.send("observation", ("observation", o.state.name, o.state.version, values))

    def shadow(self, *args: Any) -> None:
        self.send("shadow", ("shadow", args))

    def rollout(self, method: str, *args: Any) -> None:
        self.send("rollout", ("rollout", method, args))


class ChannelReceiver:
    """The control process's end: a thread that hands every message to the monitor or the rollout manager."""

    def __init__(self, channel: Queue[tuple[Any, ...]]) -> None:
        self.channel = channel
        self._thread: threading.Thread | None = None
        self._handling = False  # between taking a message and handing it over

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
        """Wait (blocking) until every message sent so far is handed over (a worker's ``put`` counts at once,
        so an answered request's observation is waited for); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.channel.qsize() > 0 or self._handling:
            if time.monotonic() > deadline or self._thread is None or not self._thread.is_alive():
                return False
            time.sleep(0.002)
        return True

    def _run(self, version_of: Callable[[str, int], Any | None], monitor: Any, rollout: Any, loop: Any) -> None:
        while True:
            self._handling = False
            message = self.channel.get()
            self._handling = True
            if message == STOP:
                return
            try:
                self._handle(message, version_of, monitor, rollout, loop)
            except Exception:
                log.exception("the control process could not handle a %s message", message[0])

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
