"""The monitor's worker thread: drift windows, counts, gauges and log records, off the request path.

Requests only append an :class:`Observation` to a deque (no lock, no thread
wake-up); the worker drains it every ``DRAIN_INTERVAL_S``, so it processes
many observations per numpy call and the request path never pays for a
thread hand-off. A full deque drops the observation and counts it
(``serving_monitor_dropped_total``). An observation that cannot be binned is
left out alone and counted (``serving_monitor_failed_total``): the others of
its batch are folded in and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

import numpy as np

from service.monitoring.drift import significant_psi
from service.monitoring.metrics import MonitorMetrics
from service.monitoring.observation import Observation
from service.monitoring.state import ALL_REGIONS, VersionState

log = logging.getLogger("service.monitoring")

GAUGE_INTERVAL_S = 0.5  # drift gauges are recomputed at most this often per version
DRAIN_INTERVAL_S = 0.05  # the worker takes what requests left this often
MAX_BATCH = 512  # observations processed together


class MonitorWorker:
    """A bounded queue of observations and the thread that folds them into each version's state."""

    def __init__(
        self,
        metrics: MonitorMetrics,
        capacity: int,
        warn: float,
        drift: float,
        log_observation: Callable[[Observation], None] | None = None,
    ) -> None:
        self.metrics = metrics
        self.capacity = capacity
        self.warn, self.drift = warn, drift
        self.log_observation = log_observation  # hands a logged observation to the prediction log
        self._pending: deque[Observation] = deque()
        self._submitted = 0  # written by the event loop only
        self._processed = 0  # written by the worker only
        self.dropped = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    @property
    def queued(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Process what is queued, then stop."""
        if self._thread.is_alive():
            self._stopping = True
            self._wake.set()
            self._thread.join(10.0)

    def submit(self, observation: Observation) -> None:
        """Queue one observation (never blocks); a full queue drops it, counted."""
        if len(self._pending) >= self.capacity:
            self.dropped += 1
            self.metrics.dropped.inc()
            return
        self._pending.append(observation)
        self._submitted += 1

    def wait_idle(self, timeout_s: float = 2.0) -> bool:
        """Wait (blocking) until every queued observation is processed; False on timeout."""
        deadline = time.monotonic() + timeout_s
        target = self._submitted
        self._wake.set()  # drain now, not at the next interval
        while self._processed < target:
            if time.monotonic() > deadline or not self._thread.is_alive():
                return self._processed >= target
            time.sleep(0.002)
        return True

    def _run(self) -> None:
        pending = self._pending
        while True:
            self._wake.wait(DRAIN_INTERVAL_S)
            self._wake.clear()
            stopping = self._stopping
            while pending:
                batch = [pending.popleft() for _ in range(min(MAX_BATCH, len(pending)))]
                try:
                    self.process(batch)
                except Exception:
                    log.exception("the monitor failed to process %d observations", len(batch))
                self._processed += len(batch)
            if stopping:
                return

    def process(self, batch: list[Observation]) -> None:
        """Fold a batch in, each version's observations together; one that cannot be folded in fails alone."""
        groups: dict[int, list[Observation]] = {}
        for observation in batch:
            groups.setdefault(id(observation.state), []).append(observation)
        for observations in groups.values():
            state = observations[0].state
            try:
                binned = [(observations, state.bins(observations), state.estimated_correct(observations))]
            except Exception:  # find the one that failed: bin the others one by one
                binned = []
                for o in observations:
                    try:
                        binned.append(([o], state.bins([o]), state.estimated_correct([o])))
                    except Exception:
                        log.exception("the monitor could not bin request %s; it is left out", o.request_id)
                        self.metrics.failed.inc()
            regions: list[str] = []
            for group, bins, estimated in binned:
                regions += self._add(state, group, bins, estimated)
            self._set_gauges(state, sorted(set(regions)))
            if self.log_observation is not None:
                for o in observations:
                    if o.logged:
                        self.log_observation(o)  # never raises: a record that cannot be written is dropped alone

    def _add(
        self, state: VersionState, observations: list[Observation], bins: np.ndarray, estimated: np.ndarray | None
    ) -> list[str]:
        """Add binned observations to the version's windows and counts; returns their regions."""
        sizes = [len(o.output) for o in observations]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        with state.lock:
            state.window(ALL_REGIONS).add(bins, estimated)
            regions: dict[str, list[int]] = {}
            for i, o in enumerate(observations):
                regions.setdefault(o.region, []).extend(range(starts[i], starts[i + 1]))
            for region, rows in regions.items():
                state.window(region).add(bins[rows], estimated[rows] if estimated is not None else None)
            self._count(state, observations, regions)
        return list(regions)

    def _count(self, state: VersionState, observations: list[Observation], regions: Mapping[str, list[int]]) -> None:
        labels = (state.name, str(state.version))
        reasons: dict[str, int] = {}
        for o in observations:
            for prediction in o.predictions:
                flags = prediction.get("ood") or {}
                state.items += 1
                if flags.get("flagged"):
                    state.flagged += 1
                for reason in flags.get("reasons", ()):
                    reasons[reason] = reasons.get(reason, 0) + 1
        for reason, n in reasons.items():
            state.reasons[reason] = state.reasons.get(reason, 0) + n
            self.metrics.ood.labels(*labels, reason).inc(n)
        for region, rows in regions.items():
            self.metrics.items.labels(*labels, region).inc(len(rows))

    def _set_gauges(self, state: VersionState, regions: list[str]) -> None:
        now = time.monotonic()
        if now - state.gauges_at < GAUGE_INTERVAL_S:
            return
        state.gauges_at = now
        with state.lock:
            window = state.window(ALL_REGIONS)
            table = window.table(self.warn, self.drift)
            estimates = {r: state.window(r).estimated_accuracy() for r in regions}
            state.drift_at_refresh = (significant_psi(table), window.size)
        labels = (state.name, str(state.version))
        for row in table:
            self.metrics.drift_score.labels(*labels, row["feature"]).set(row["psi"])
        for region, estimate in estimates.items():
            if estimate is not None:
                self.metrics.estimated_accuracy.labels(*labels, region).set(estimate)
