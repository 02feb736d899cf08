"""Rollout policies and the pure functions that route on them: key -> bucket -> share -> version.

A policy file (YAML) names, per model, a stable and a candidate version, a
stage and a time- and geography-limited plan of steps. Everything here is a
plain function of the policy, the request's key and region, and a time
passed in, so every replica that reads the same file routes every key the
same way without talking to the others, a test can call it at any moment and
the CLI can print the whole plan. The store-backed state (rollbacks,
promotions, admin edits) lives in ``service.rollout.manager``.
"""

from __future__ import annotations

import hashlib
import json
import re
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUCKETS = 10_000  # a share of 0.01 % is one bucket
ALL_REGIONS = "*"
Stage = Literal["off", "shadow", "canary", "promoted", "rolled_back"]
STAGES: tuple[str, ...] = ("off", "shadow", "canary", "promoted", "rolled_back")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the field (``models.digits.steps[1].hold: ...``)."""


def parse_duration(value: Any) -> float:
    """``"5m"``, ``"1d"``, ``"7d"``, ``"30d"``, ``"90s"``, ``"2h"``, ``"1w"`` (or plain seconds) -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"a duration such as 5m, 1d or 30d is needed, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"a duration such as 30s, 5m, 2h, 1d, 7d or 1w is needed, got {value!r}")
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# -- the policy model ----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Shadow(_Strict):
    percent: float = Field(0.0, ge=0, le=100, description="Share of stable's traffic also run on the candidate.")


class Step(_Strict):
    regions: dict[str, float] = Field(description="Candidate share (percent) per region; '*' is every region.")
    hold: float | None = Field(None, description="How long the step lasts (5m, 1d, 7d...); the last may omit it.")

    @field_validator("hold", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("regions")
    @classmethod
    def _shares(cls, value: dict[str, float]) -> dict[str, float]:
        for region, share in value.items():
            if not region:
                raise ValueError("a region name must not be empty")
            if not 0 <= share <= 100:
                raise ValueError(f"the share of {region!r} must be between 0 and 100 (percent), got {share:g}")
        return value


class Guardrails(_Strict):
    """Limits on the candidate, compared with stable over the same recent window."""

    window: float = Field(600.0, le=3600, description="How far back readings go (default 10m, at most 1h).")
    min_requests: int = Field(200, ge=1, description="Requests needed in both arms before any limit is judged.")
    max_error_rate: float | None = Field(None, ge=0, le=1, description="Share of candidate requests that fail.")
    max_p99_ms: float | None = Field(None, gt=0, description="Candidate p99 latency, milliseconds.")
    max_disagreement: float | None = Field(None, ge=0, le=1, description="Shadow label disagreement rate.")
    max_mean_abs_difference: float | None = Field(None, ge=0, description="Shadow regression difference.")
    max_drift: float | None = Field(None, ge=0, description="Candidate drift score (from the monitoring readings).")
    min_live_accuracy: float | None = Field(None, ge=0, le=1, description="Candidate accuracy from feedback.")

    @field_validator("window", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value)


class ModelPolicy(_Strict):
    """One model's rollout: who is stable, who is the candidate, and the plan."""

    stable: int = Field(ge=1)
    candidate: int | None = Field(None, ge=1)
    stage: Stage = "off"
    sticky_key: str = Field("X-Request-Key", min_length=1, description="Header holding the sticky assignment key.")
    shadow: Shadow = Shadow()
    steps: list[Step] = Field(default_factory=list)
    start: datetime | None = None
    end: datetime | None = None
    guardrails: Guardrails = Guardrails()

    @field_validator("stage", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-12-01T08:00:00Z")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ModelPolicy":
        if self.stage in ("shadow", "canary", "promoted") and self.candidate is None:
            raise ValueError(f"stage {self.stage!r} needs a candidate version")
        if self.candidate is not None and self.candidate == self.stable:
            raise ValueError(f"candidate and stable are both version {self.stable}")
        if self.stage == "canary" and not self.steps:
            raise ValueError("stage 'canary' needs at least one step")
        if self.stage == "canary" and self.start is None:
            raise ValueError("stage 'canary' needs a start time")
        for i, step in enumerate(self.steps[:-1]):
            if step.hold is None:
                raise ValueError(f"steps[{i}].hold: every step but the last needs a hold")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self

    def fingerprint(self) -> str:
        """A stable digest of the policy (the same file content gives the same digest on every replica)."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


class RolloutFile(_Strict):
    models: dict[str, ModelPolicy] = Field(default_factory=dict)


def parse_policy_text(text: str, source: str = "rollout file") -> RolloutFile:
    """Parse and validate YAML (or JSON) text; :class:`PolicyError` names the failing field."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the top level must be a mapping with a 'models' key")
    try:
        return RolloutFile.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(describe_validation(exc)) from None


def parse_model_policy(data: Any, where: str = "") -> ModelPolicy:
    """One model's policy (the body of ``PUT /v1/rollouts/{name}``); ``where`` prefixes the field names."""
    try:
        return ModelPolicy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(describe_validation(exc, where)) from None


def load_policy_file(path: Path) -> RolloutFile:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the rollout file: {exc}") from None
    return parse_policy_text(text, str(path))


def describe_validation(exc: ValidationError, where: str = "") -> str:
    """``models.digits.steps[1].hold: a duration such as ...`` for every error."""
    lines = []
    for error in exc.errors():
        path = where
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}" if path else message)
    return "; ".join(lines)


# -- the pure routing functions ------------------------------------------------------------------


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


class Route:
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
            ({region: _compiled(share) for region, share in step.regions.items()},
             _compiled(step.regions.get(ALL_REGIONS, 0.0)))
            for step in policy.steps
        ]  # fmt: skip
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


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """An ISO time (``2026-12-02T09:00:00Z``) or ``now`` -> epoch seconds."""
    if text == "now":
        return datetime.now(timezone.utc).timestamp()
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()

