"""Guardrails: the candidate against stable over the same recent window, judged only with enough data.

Readings come from this replica's own observations of each arm (requests,
failures, latency, shadow comparisons), kept in per-second slots so memory
and the cost of an observation stay constant at any traffic: a slot holds
counts and a log-spaced latency histogram (p99 to within 5 %). Other
readings (drift score, live accuracy from the monitoring component) plug in
as a :class:`ReadingSource`. A limit is judged only once both arms have
``min_requests`` in the window; until then the verdict is "waiting for
data", which is never a pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.rollout.policy import Guardrails

_LATENCY_BASE_S = 0.0001  # histogram bucket 0 ends at 0.1 ms
_LATENCY_GROWTH = 1.05
_LATENCY_BUCKETS = 400  # up to ~ 0.1 ms * 1.05**400, beyond any deadline
_LOG_GROWTH = math.log(_LATENCY_GROWTH)


def _latency_bucket(seconds: float) -> int:
    if seconds <= _LATENCY_BASE_S:
        return 0
    return min(_LATENCY_BUCKETS - 1, int(math.log(seconds / _LATENCY_BASE_S) / _LOG_GROWTH) + 1)


def _bucket_upper_s(index: int) -> float:
    return _LATENCY_BASE_S * _LATENCY_GROWTH**index


@dataclass
class _Slot:
    second: int
    requests: int = 0
    errors: int = 0
    latency: dict[int, int] = field(default_factory=dict)
    compared: int = 0
    disagreed: int = 0
    abs_difference: float = 0.0
    rel_difference: float = 0.0
    differences: int = 0
    shed: int = 0  # shadow copies not run (the candidate's runtime was saturated, or the budget was spent)


class ArmWindow:
    """One arm's (stable's or candidate's) observations over the last ``horizon_s`` seconds."""

    def __init__(self, horizon_s: float = 3600.0) -> None:
        self.horizon_s = horizon_s
        self._slots: dict[int, _Slot] = {}

    def _slot(self, now: float) -> _Slot:
        second = int(now)
        slot = self._slots.get(second)
        if slot is None:
            slot = self._slots[second] = _Slot(second)
            if len(self._slots) > self.horizon_s + 1:
                oldest = second - int(self.horizon_s)
                for key in [k for k in self._slots if k < oldest]:
                    del self._slots[key]
        return slot

    def request(self, now: float, ok: bool, seconds: float, count: int = 1) -> None:
        slot = self._slot(now)
        slot.requests += count
        if not ok:
            slot.errors += count
        index = _latency_bucket(seconds)
        slot.latency[index] = slot.latency.get(index, 0) + count

    def comparison(
        self,
        now: float,
        compared: int,
        disagreed: int,
        abs_diff: float = 0.0,
        rel_diff: float = 0.0,
        differences: int = 0,
    ) -> None:
        slot = self._slot(now)
        slot.compared += compared
        slot.disagreed += disagreed
        slot.abs_difference += abs_diff
        slot.rel_difference += rel_diff
        slot.differences += differences

    def shed(self, now: float, count: int = 1) -> None:
        self._slot(now).shed += count

    def summary(self, now: float, window_s: float) -> dict[str, Any]:
        since = now - window_s
        slots = [s for s in self._slots.values() if s.second + 1 > since and s.second <= now]
        requests = sum(s.requests for s in slots)
        errors = sum(s.errors for s in slots)
        latency: dict[int, int] = {}
        for s in slots:
            for index, count in s.latency.items():
                latency[index] = latency.get(index, 0) + count
        compared = sum(s.compared for s in slots)
        disagreed = sum(s.disagreed for s in slots)
        differences = sum(s.differences for s in slots)
        return {
            "requests": requests,
            "errors": errors,
            "error_rate": errors / requests if requests else None,
            "p99_ms": _quantile(latency, 0.99) * 1000 if requests else None,
            "compared": compared,
            "shadow_shed": sum(s.shed for s in slots),
            "disagreement": disagreed / compared if compared else None,
            "mean_abs_difference": sum(s.abs_difference for s in slots) / differences if differences else None,
            "mean_rel_difference": sum(s.rel_difference for s in slots) / differences if differences else None,
        }

    def clear(self) -> None:
        self._slots.clear()


def _quantile(histogram: dict[int, int], q: float) -> float:
    total = sum(histogram.values())
    rank = q * total
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return _bucket_upper_s(index)
    return _bucket_upper_s(max(histogram))  # pragma: no cover


@dataclass(frozen=True)
class Reading:
    value: float | None
    count: int


class ReadingSource(Protocol):
    """A reading from elsewhere (the monitoring component: drift score, live accuracy) for one version."""

    def __call__(self, model: str, version: int, window_s: float, now: float) -> Reading | None: ...


@dataclass(frozen=True)
class Verdict:
    status: str  # "waiting_for_data", "ok", "breach", "off"
    reason: str | None  # the metric label of a breach: error_rate, p99_latency, disagreement, ...
    message: str
    readings: dict[str, Any]


class ArmObservations:
    """The stable and candidate windows of one model, and the judgment of its guardrails."""

    def __init__(self, model: str, sources: dict[str, ReadingSource] | None = None) -> None:
        self.model = model
        self.stable = ArmWindow()
        self.candidate = ArmWindow()
        self.sources = sources if sources is not None else {}
        self.versions: tuple[int, int | None] | None = None

    def reset_for(self, stable: int, candidate: int | None) -> None:
        """A new pair of versions starts with empty windows: old readings are about other models."""
        if self.versions != (stable, candidate):
            self.versions = (stable, candidate)
            self.stable.clear()
            self.candidate.clear()

    def evaluate(self, limits: Guardrails, stable: int, candidate: int, now: float) -> Verdict:
        window = limits.window
        readings: dict[str, Any] = {
            "window_s": window,
            "min_requests": limits.min_requests,
            "stable": self.stable.summary(now, window),
            "candidate": self.candidate.summary(now, window),
        }
        s, c = readings["stable"], readings["candidate"]
        judged: dict[str, dict[str, float | None]] = {"stable": {}, "candidate": {}}
        for name, source in self.sources.items():
            for arm, version in (("stable", stable), ("candidate", candidate)):
                got = source(self.model, version, window, now)
                readings[arm][name] = got.value if got is not None else None
                readings[arm][f"{name}_count"] = got.count if got is not None else 0
                # like the arms' own readings, one over too few items or answers is not judged
                judged[arm][name] = got.value if got is not None and got.count >= limits.min_requests else None
        if s["requests"] < limits.min_requests or c["requests"] < limits.min_requests:
            return Verdict(
                "waiting_for_data",
                None,
                f"waiting for data: {limits.min_requests} requests needed in each arm over "
                f"{window:g} s (stable {s['requests']}, candidate {c['requests']})",
                readings,
            )
        checks: list[tuple[str, float | None, float | None, float | None, bool]] = [
            # (reason, limit, candidate value, stable value, compare with stable)
            ("error_rate", limits.max_error_rate, c["error_rate"], s["error_rate"], True),
            ("p99_latency", limits.max_p99_ms, c["p99_ms"], s["p99_ms"], True),
            ("disagreement", limits.max_disagreement, c["disagreement"], None, False),
            ("difference", limits.max_mean_abs_difference, c["mean_abs_difference"], None, False),
            ("drift", limits.max_drift, judged["candidate"].get("drift"), judged["stable"].get("drift"), False),
        ]
        for reason, limit, value, baseline, relative in checks:
            if limit is None or value is None:
                continue
            # A candidate over the limit but no worse than stable is a fleet problem, not the candidate's.
            if value > limit and not (relative and baseline is not None and value <= baseline):
                return Verdict(
                    "breach",
                    reason,
                    f"{reason} {value:.4g} is over the limit {limit:g}"
                    + (f" (stable {baseline:.4g})" if baseline is not None else ""),
                    readings,
                )
        accuracy = judged["candidate"].get("live_accuracy")
        if limits.min_live_accuracy is not None and accuracy is not None and accuracy < limits.min_live_accuracy:
            return Verdict(
                "breach",
                "live_accuracy",
                f"live_accuracy {accuracy:.4g} is under the limit {limits.min_live_accuracy:g}",
                readings,
            )
        return Verdict("ok", None, "within every limit", readings)
