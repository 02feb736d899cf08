"""What the rollout shows: every model's rollout state as the API, the pages and the CLI read it."""

from __future__ import annotations

from typing import Any

from service.rollout.manager import RolloutManager
from service.rollout.policy import iso
from service.rollout.routing import candidate_share, plan_regions, step_at, timeline


def describe(rollout: RolloutManager) -> dict[str, Any]:
    """The body of ``GET /v1/rollouts``."""
    return {
        "policy_file": str(rollout.file.path) if rollout.file.path else None,
        "policy_error": rollout.file.error,
        "policy_loaded_at": iso(rollout.file.loaded_at),
        "state_store": rollout.store_status(),
        "now": iso(rollout.clock()),
        "models": {name: describe_model(rollout, name) for name in sorted(rollout.policies)},
    }


def describe_model(rollout: RolloutManager, name: str) -> dict[str, Any] | None:
    """One model's rollout: policy, step, shares, guardrails, decisions, timeline; None without a policy."""
    policy = rollout.policies.get(name)
    if policy is None:
        return None
    now = rollout.clock()
    state = step_at(policy, now)
    loaded = set(rollout.served_versions(name))
    problems = [
        f"{role} version {number} is not loaded"
        for role, number in (("stable", policy.stable), ("candidate", policy.candidate))
        if number is not None and number not in loaded
    ]
    if policy.stable not in loaded:
        problems.append("the highest loaded version serves instead of stable")
    decision = rollout.decisions.get(name) if rollout.sources.get(name) == "store" else None
    verdict = rollout.verdicts.get(name)
    regions = plan_regions(policy) or ["*"]
    return {
        "model": name,
        "source": rollout.sources.get(name),
        "stable": policy.stable,
        "candidate": policy.candidate,
        "stage": policy.stage,
        "sticky_key": policy.sticky_key,
        "shadow_percent": policy.shadow.percent,
        "step": {
            "index": state.index,
            "phase": state.phase,
            "started_at": iso(state.started_at),
            "next_at": iso(state.next_at),
            "of": len(policy.steps),
        },
        "shares": {region: candidate_share(policy, region, now) / 100 for region in regions},
        "problems": problems,
        "guardrails": {
            "status": verdict.status if verdict else "waiting_for_data",
            "message": verdict.message if verdict else "waiting for data: not judged yet",
            "breach": verdict.reason if verdict else None,
            "readings": verdict.readings if verdict else {},
            "limits": policy.guardrails.model_dump(),
        },
        "decided": {
            "revision": decision.revision,
            "at": iso(decision.updated_at),
            "by": decision.updated_by,
            "reason": decision.reason,
        }
        if decision
        else None,
        "last_decisions": rollout.recent.get(name, []),
        "timeline": timeline(policy),
        "policy": policy.model_dump(mode="json"),
    }
