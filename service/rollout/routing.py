"""The pure functions that route on a policy: key -> bucket -> share -> version.

Everything here is a plain function of the policy, the request's key and
region, and a time passed in, so every replica that reads the same policy
routes every key the same way without talking to the others, a test can call
it at any moment and the CLI can print the whole plan. :class:`CompiledRoute`
is the request path's fast version of :func:`choose_version` and
:func:`shadowed`, which stay as the reference (a property test holds them
equal).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from bundle.durations import format_duration
from service.rollout.policy import ALL_REGIONS, ModelPolicy, Step, iso

BUCKETS = 10_000  # a share of 0.01 % is one bucket


def bucket(model: str, candidate: int, key: str, salt: str = "") -> int:
    """The key's bucket in [0, 10000): sha256, so every process and replica agrees (Python's hash does not)."""
    return _bucket_after(_bucket_prefix(salt, model, candidate), key)


def _bucket_after(prefix: bytes, key: str) -> int:
    """:func:`bucket` of a key whose (salt, model, candidate) prefix is already encoded."""
    return int.from_bytes(hashlib.sha256(prefix + key.encode()).digest()[:8], "big") % BUCKETS


@lru_cache(maxsize=1024)
def _bucket_prefix(salt: str, model: str, candidate: int) -> bytes:
    """What every key of one (model, candidate) is hashed after; encoded once, not per request."""
    return f"{salt}{model}\x00{candidate}\x00".encode()


def in_share(bucket_number: int, percent: float) -> bool:
    """Buckets below the share's size: raising a share only ever adds buckets."""
    return bucket_number < round(percent * BUCKETS / 100)


@dataclass(frozen=True)
class StepState:
    """Where the plan stands at a moment: ``index`` is None before start, after end, or with no steps."""

    index: int | None
    started_at: float | None  # epoch seconds
    next_at: float | None  # when the next step (or the end) begins; None when nothing is coming
    phase: str  # "not_started", "step", "last_step", "ended", "no_plan"


def step_begins(policy: ModelPolicy) -> tuple[float, ...]:
    """When each step begins, epoch seconds (``start + sum(holds before i)``); empty with no plan."""
    if not policy.steps or policy.start is None:
        return ()
    return _step_begins(policy.start, tuple(step.hold for step in policy.steps[:-1]))


@lru_cache(maxsize=256)
def _step_begins(start: datetime, holds: tuple[float, ...]) -> tuple[float, ...]:
    """Computed once per plan, not per request (routing reads it on every prediction). Keyed by what it
    depends on, not by the policy object, so a copy with another start never sees a stale answer."""
    begins = [start.timestamp()]
    for hold in holds:
        begins.append(begins[-1] + hold)
    return tuple(begins)


def _end_epoch(policy: ModelPolicy) -> float | None:
    return policy.end.timestamp() if policy.end is not None else None


def step_at(policy: ModelPolicy, now: float) -> StepState:
    """Step i starts at ``start + sum(holds before i)``; after the last step the last shares stay."""
    begins, end = step_begins(policy), _end_epoch(policy)
    if not begins:
        return StepState(None, None, None, "no_plan")
    i = _step_index(begins, end, now)
    if i is None:
        before = now < begins[0]
        return StepState(None, None, begins[0] if before else None, "not_started" if before else "ended")
    if i == len(begins) - 1:
        return StepState(i, begins[i], end, "last_step")
    ends = begins[i + 1]
    return StepState(i, begins[i], end if end is not None and end < ends else ends, "step")


def _step_index(begins: tuple[float, ...], end: float | None, now: float) -> int | None:
    """The step in force at ``now`` (``step_at``'s index, without building its state): routing's hot path."""
    if not begins or now < begins[0]:
        return None
    if end is not None and now >= end:
        return None
    return bisect_right(begins, now) - 1


def region_share(step: Step, region: str | None) -> float:
    """The step's share for a region: its own entry, else ``"*"``, else 0."""
    if region is not None and region in step.regions:
        return step.regions[region]
    return step.regions.get(ALL_REGIONS, 0.0)


def candidate_share(policy: ModelPolicy, region: str | None, now: float) -> float:
    """Percent of the region's keys the candidate answers at ``now``."""
    if policy.candidate is None:
        return 0.0
    if policy.stage == "promoted":
        return 100.0
    if policy.stage != "canary":
        return 0.0
    index = _step_index(step_begins(policy), _end_epoch(policy), now)
    if index is None:
        return 0.0
    return region_share(policy.steps[index], region)


def choose_version(model: str, policy: ModelPolicy, key: str | None, region: str | None, now: float) -> int:
    """The version that answers a request with this key from this region at ``now``."""
    if policy.candidate is None:
        return policy.stable
    share = candidate_share(policy, region, now)
    if share <= 0 or key is None:
        return policy.candidate if share >= 100 else policy.stable
    return policy.candidate if in_share(bucket(model, policy.candidate, key), share) else policy.stable


class CompiledRoute:
    """One model's policy compiled for the request path: :func:`choose_version`'s answer from numbers worked
    out once per policy (when each step begins, each region's share as a bucket count, the hash prefix).

    ``choose_version`` reads the same answer off the pydantic policy and stays the reference (the CLI uses
    it; a property test holds the two equal). Here a request costs a bisect, a dict lookup and, inside a
    partial share, one sha256."""

    __slots__ = ("stable", "candidate", "always", "begins", "end", "steps", "prefix", "shadow", "shadow_prefix")

    def __init__(self, model: str, policy: ModelPolicy) -> None:
        self.stable = policy.stable
        self.candidate = policy.candidate
        # a fixed answer where the plan is not consulted: no candidate, promoted, or a stage without a split
        self.always: int | None = None
        if policy.candidate is None or policy.stage not in ("canary", "promoted"):
            self.always = policy.stable
        elif policy.stage == "promoted":
            self.always = policy.candidate
        self.begins = step_begins(policy)
        self.end = _end_epoch(policy)
        # per step: ({region: share}, the share of every other region), each share as (buckets, whole) where
        # buckets is in_share's count (a bucket number below it is in) and whole says 100 % (keyless too)
        self.steps = [
            (
                {region: _compiled(share) for region, share in step.regions.items()},
                _compiled(step.regions.get(ALL_REGIONS, 0.0)),
            )
            for step in policy.steps
        ]
        self.prefix = _bucket_prefix("", model, policy.candidate) if policy.candidate is not None else b""
        # shadowed's share of stable's requests (stage shadow only), and its salted hash prefix
        mirrors = policy.stage == "shadow" and policy.candidate is not None and policy.shadow.percent > 0
        self.shadow = _compiled(policy.shadow.percent) if mirrors else None
        self.shadow_prefix = _bucket_prefix("shadow\x00", model, policy.candidate) if mirrors else b""

    def choose(self, key: str | None, region: str | None, now: float) -> int:
        """The version that answers a request with this key from this region at ``now``."""
        if self.always is not None:
            return self.always
        begins = self.begins
        if not begins or now < begins[0] or (self.end is not None and now >= self.end):
            return self.stable
        named, others = self.steps[bisect_right(begins, now) - 1]
        buckets, whole = named.get(region, others) if region is not None else others
        if whole:
            return self.candidate  # type: ignore[return-value]
        if buckets <= 0 or key is None or _bucket_after(self.prefix, key) >= buckets:
            return self.stable
        return self.candidate  # type: ignore[return-value]

    def shadows(self, key: str) -> bool:
        """:func:`shadowed`: whether the candidate also runs on a request with this key."""
        if self.shadow is None:
            return False
        buckets, whole = self.shadow
        return whole or _bucket_after(self.shadow_prefix, key) < buckets


def _compiled(percent: float) -> tuple[int, bool]:
    """A share as ``Route`` reads it: in_share's bucket count, and whether it is the whole region."""
    return round(percent * BUCKETS / 100), percent >= 100


def shadowed(model: str, policy: ModelPolicy, key: str) -> bool:
    """Whether the candidate also runs on this request (stage ``shadow`` only; its own hash, salted)."""
    if policy.stage != "shadow" or policy.candidate is None or policy.shadow.percent <= 0:
        return False
    if policy.shadow.percent >= 100:
        return True
    return in_share(bucket(model, policy.candidate, key, salt="shadow\x00"), policy.shadow.percent)


def plan_regions(policy: ModelPolicy) -> list[str]:
    """Every region the plan names, in order of first appearance."""
    seen: dict[str, None] = {}
    for step in policy.steps:
        for region in step.regions:
            seen.setdefault(region, None)
    return list(seen)


def timeline(policy: ModelPolicy) -> list[dict[str, Any]]:
    """The plan as rows: when each step starts and ends, its shares per region."""
    rows: list[dict[str, Any]] = []
    end = _end_epoch(policy)
    for i, (step, begins) in enumerate(zip(policy.steps, step_begins(policy))):
        ends = begins + step.hold if step.hold is not None else None
        if end is not None and (ends is None or ends > end):
            ends = end
        rows.append(
            {
                "step": i,
                "starts_at": iso(begins),
                "ends_at": iso(ends) if ends is not None else None,
                "hold": format_duration(step.hold) if step.hold is not None else None,
                "regions": dict(step.regions),
            }
        )
        if ends is None or (end is not None and ends >= end):
            break
    return rows
