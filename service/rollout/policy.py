"""Rollout policies: what a policy file (YAML) or an admin says about each model, validated once.

A policy names, per model, a stable and a candidate version, a stage and a
time- and geography-limited plan of steps, with the guardrails that may roll
the candidate back. Parsing names the failing field
(``models.digits.steps[1].hold: ...``). How a policy routes requests is
:mod:`service.rollout.routing`; the live state over it (rollbacks,
promotions, admin edits) is :mod:`service.rollout.manager`.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bundle.durations import parse_duration

ALL_REGIONS = "*"
Stage = Literal["off", "shadow", "canary", "promoted", "rolled_back"]
STAGES: tuple[str, ...] = ("off", "shadow", "canary", "promoted", "rolled_back")

# RFC 7230 token characters: what an HTTP header name may be made of (ASCII only, so it encodes as latin-1)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
MAX_HEADER_NAME = 64
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the field (``models.digits.steps[1].hold: ...``)."""


def _header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an HTTP header name: use letters, digits and !#$%&'*+-.^_`|~ only, e.g. X-User-Id"
        )
    return value


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
    sticky_key: str = Field(
        "X-Request-Key", min_length=1, max_length=MAX_HEADER_NAME, description="Header holding the sticky key."
    )
    shadow: Shadow = Shadow()
    steps: list[Step] = Field(default_factory=list)
    start: datetime | None = None
    end: datetime | None = None
    guardrails: Guardrails = Guardrails()
    auto_advance: bool = Field(
        False,
        description="In stage shadow with a start time: the plan's first step begins at start by itself. Without "
        "it an admin moves the rollout from shadow to its first step (advance) or promotes it.",
    )

    @field_validator("stage", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false

    @field_validator("sticky_key")
    @classmethod
    def _header_name(cls, value: str) -> str:
        return _header_name(value)

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-12-01T08:00:00Z")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelPolicy:
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
        # every time the plan shows (start, each step's begin, end) must be a date a page and a log can print
        if self.start is not None:
            last = self.start + timedelta(seconds=sum(step.hold or 0.0 for step in self.steps))
            if not EARLIEST <= self.start or last > LATEST:
                raise ValueError(f"the plan must lie between {EARLIEST.year} and {LATEST.year}")
        if self.end is not None and not EARLIEST <= self.end <= LATEST:
            raise ValueError(f"end must lie between {EARLIEST.year} and {LATEST.year}")
        return self

    def fingerprint(self) -> str:
        """A stable digest of the policy (the same file content gives the same digest on every replica)."""
        data = self.model_dump(mode="json")
        if not self.auto_advance:  # added later: a policy without it keeps the digest it always had
            del data["auto_advance"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def serving(self) -> int:
        """The version that answers unpinned traffic as stable: a promoted candidate, else stable."""
        return self.candidate if self.stage == "promoted" and self.candidate is not None else self.stable


class TemplateShadow(_Strict):
    percent: float = Field(100.0, ge=0, le=100, description="Share of stable's traffic also run on the candidate.")
    hold: float | None = Field(None, description="How long the shadow stage lasts before the first step (1d...).")

    @field_validator("hold", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)


class Template(_Strict):
    """A named plan for a new candidate: a shadow stage first, then the steps, judged by the guardrails."""

    shadow: TemplateShadow = TemplateShadow()
    steps: list[Step] = Field(default_factory=list)
    auto_advance: bool = Field(False, description="Move from shadow to the first step after shadow.hold by itself.")
    sticky_key: str = Field("X-Request-Key", min_length=1, max_length=MAX_HEADER_NAME)
    guardrails: Guardrails = Guardrails()

    @field_validator("sticky_key")
    @classmethod
    def _header_name(cls, value: str) -> str:
        return _header_name(value)

    @model_validator(mode="after")
    def _consistent(self) -> Template:
        for i, step in enumerate(self.steps[:-1]):
            if step.hold is None:
                raise ValueError(f"steps[{i}].hold: every step but the last needs a hold")
        if self.auto_advance and (self.shadow.hold is None or not self.steps):
            raise ValueError("auto_advance needs shadow.hold (how long the shadow stage lasts) and at least one step")
        return self

    def plan(self, stable: int, candidate: int, now: float) -> ModelPolicy:
        """The policy that starts ``candidate`` in shadow beside ``stable`` at ``now`` under this template.

        With ``auto_advance`` the plan's first step begins when the shadow hold is over (``start``); without it
        there is no start until an admin advances the rollout."""
        start = None
        if self.auto_advance and self.shadow.hold is not None:
            start = datetime.fromtimestamp(now + self.shadow.hold, UTC)
        return ModelPolicy(
            stable=stable,
            candidate=candidate,
            stage="shadow",
            sticky_key=self.sticky_key,
            shadow=Shadow(percent=self.shadow.percent),
            steps=list(self.steps),
            start=start,
            guardrails=self.guardrails,
            auto_advance=self.auto_advance,
        )


SHADOW_ONLY = Template()  # the plan without a template: shadow on every request until promoted or rolled back
NEW_VERSIONS_TEMPLATE = "new_versions"  # the template SERVING_NEW_VERSIONS=shadow uses when the file has one


class RolloutFile(_Strict):
    models: dict[str, ModelPolicy] = Field(default_factory=dict)
    templates: dict[str, Template] = Field(default_factory=dict)


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


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """An ISO time (``2026-12-02T09:00:00Z``) or ``now`` -> epoch seconds."""
    if text == "now":
        return datetime.now(UTC).timestamp()
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
