"""The nightly run's gates: small pure functions from metrics before and after to a verdict.

A new version is exported only when both pass:

- **forgetting**: on the original validation set the new model may not be
  worse than stable by more than a margin (error-rate points for classifiers;
  a share of stable's figure for regression's RMSE);
- **improvement**: on the held-out share of the new labelled data the new
  model must be strictly better than stable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# the figure each gate reads, in order of preference, and whether lower is better
PRIMARY_METRICS = (("error_rate", True), ("accuracy", False), ("rmse", True), ("valid_loss", True))
RELATIVE_METRICS = ("rmse", "valid_loss")  # margins in these are a share of stable's figure


def primary_metric(metrics: dict[str, float]) -> tuple[str, bool]:
    """The metric the gates compare, and whether lower is better."""
    for name, lower in PRIMARY_METRICS:
        if name in metrics:
            return name, lower
    raise ValueError(f"no metric to gate on among {sorted(metrics)}")


@dataclass(frozen=True)
class Gate:
    name: str  # forgetting | improvement
    slice: str  # the data it reads
    metric: str
    stable: float
    new: float
    allowed: float  # the worst figure the new model may have and pass
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def forgetting_gate(stable: dict[str, float], new: dict[str, float], margin: float) -> Gate:
    """Passes when the new model is at most ``margin`` worse than stable on the original validation set."""
    metric, lower = primary_metric(stable)
    before, after = stable[metric], new[metric]
    slack = margin * abs(before) if metric in RELATIVE_METRICS else margin
    allowed = before + slack if lower else before - slack
    passed = after <= allowed if lower else after >= allowed
    unit = f"{margin:.0%} of stable's" if metric in RELATIVE_METRICS else f"{margin:g}"
    verb = "kept" if passed else "forgot"
    reason = (
        f"original validation {metric}: stable {before:.4f}, new {after:.4f} "
        f"(allowed {allowed:.4f}: at most {unit} worse); the new model {verb} what it knew"
    )
    return Gate("forgetting", "original validation", metric, before, after, allowed, passed, reason)


def improvement_gate(stable: dict[str, float], new: dict[str, float]) -> Gate:
    """Passes when the new model is strictly better than stable on the new held-out data."""
    metric, lower = primary_metric(stable)
    before, after = stable[metric], new[metric]
    passed = after < before if lower else after > before
    reason = f"new held-out {metric}: stable {before:.4f}, new {after:.4f}; " + (
        "the new model is better" if passed else "the new model is not better than stable"
    )
    return Gate("improvement", "new held-out", metric, before, after, before, passed, reason)
