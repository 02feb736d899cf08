"""What the rollout shows: every model's rollout state as the API, the pages and the CLI read it.

Two views of the same JSON. Anyone may read the public one; with the admin
token (``internals``) it also holds what only operators should see: the
policy file's path and its error, where the state store is and its last
error, and who exactly made each decision (an admin's ``X-Actor`` and
address, a replica's host and process). Without it those fields stay, as
null, a short note, or the actor's role alone (``admin``, ``guardrails``,
``file``), so pages and scripts read one shape.
"""

from __future__ import annotations

from typing import Any

from service.rollout.manager import RolloutManager
from service.rollout.policy import iso
from service.rollout.routing import candidate_share, plan_regions, step_at, timeline

ROLES = ("admin", "guardrails", "file")
FILE_REFUSED = "the rollout file was refused and the last good policy is kept (the error is shown with the admin token)"


def public_actor(actor: str | None) -> str | None:
    """The role of an audit actor (``admin``, ``guardrails``, ``file``), without names, addresses or paths."""
    if actor is None:
        return None
    role = actor.split(" ", 1)[0]
    return role if role in ROLES else "other"


def describe(rollout: RolloutManager, internals: bool = False) -> dict[str, Any]:
    """The body of ``GET /v1/rollouts``."""
    error = rollout.file.error
    return {
        "policy_file": str(rollout.file.path) if rollout.file.path and internals else None,
        "policy_error": error if internals or error is None else FILE_REFUSED,
        "policy_loaded_at": iso(rollout.file.loaded_at),
        "state_store": rollout.store_status(internals),
        "stored_policy_errors": rollout.problems(),
        "now": iso(rollout.clock()),
        "models": {name: describe_model(rollout, name, internals) for name in sorted(rollout.policies)},
    }


def describe_model(rollout: RolloutManager, name: str, internals: bool = False) -> dict[str, Any] | None:
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
    stored_error = rollout.problems().get(name)
    if stored_error is not None:
        problems.append(stored_error)
    decision = rollout.decisions.get(name) if rollout.sources.get(name) == "store" else None
    verdict = rollout.verdicts.get(name)
    regions = plan_regions(policy) or ["*"]
    shown = (lambda actor: actor) if internals else public_actor
    final = final_decision(rollout, name, policy.stage, shown)
    step = {
        "index": state.index,
        "phase": state.phase,
        "started_at": iso(state.started_at),
        "next_at": iso(state.next_at),
        "of": len(policy.steps),
    }
    guardrails = {
        "status": verdict.status if verdict else "waiting_for_data",
        "message": verdict.message if verdict else "waiting for data: not judged yet",
        "breach": verdict.reason if verdict else None,
        "readings": verdict.readings if verdict else {},
        "limits": policy.guardrails.model_dump(),
    }
    if final is not None:
        # The plan is over: no current step or next change, and the readings are those the decision was made on.
        step = {"index": None, "phase": "final", "started_at": final["at"], "next_at": None, "of": len(policy.steps)}
        guardrails.update(
            status="decided",
            message=f"no longer judged: {policy.stage.replace('_', ' ')}; the readings are from the decision",
            breach=_breach_of(final),
            readings=final["readings"] or {},
        )
    return {
        "model": name,
        "source": rollout.sources.get(name),
        "revision": rollout.revision(name),
        "stable": policy.stable,
        "serving": policy.serving,
        "candidate": policy.candidate,
        "held": rollout.held(name),
        "stage": policy.stage,
        "sticky_key": policy.sticky_key,
        "shadow_percent": policy.shadow.percent,
        "step": step,
        "final": final,
        "shares": {region: candidate_share(policy, region, now) / 100 for region in regions},
        "problems": problems,
        "guardrails": guardrails,
        "decided": {
            "revision": decision.revision,
            "at": iso(decision.updated_at),
            "by": shown(decision.updated_by),
            "reason": decision.reason,
        }
        if decision
        else None,
        "last_decisions": [{**entry, "actor": shown(entry["actor"])} for entry in rollout.recent.get(name, [])],
        "timeline": timeline(policy),
        "policy": policy.model_dump(mode="json"),
    }


def history_entries(entries: list[dict[str, Any]], internals: bool = False) -> list[dict[str, Any]]:
    """Audit entries as ``GET /v1/rollouts/{name}/history`` shows them (actors as roles without ``internals``)."""
    if internals:
        return entries
    return [{**entry, "actor": public_actor(entry["actor"])} for entry in entries]


FINAL_STAGES = {"rolled_back": "rollback", "promoted": "promote"}


def final_decision(rollout: RolloutManager, name: str, stage: str, shown: Any) -> dict[str, Any] | None:
    """For a rolled-back or promoted rollout: the decision that ended it (when, who, why) and the readings it was
    made on; None while the rollout runs, or when this replica has not read the decision back yet."""
    action = FINAL_STAGES.get(stage)
    if action is None:
        return None
    entry = next((e for e in rollout.recent.get(name, []) if e.get("action") == action), None)
    if entry is None:
        return {"stage": stage, "action": action, "at": None, "actor": None, "reason": None, "readings": None}
    return {
        "stage": stage,
        "action": action,
        "at": entry.get("at"),
        "actor": shown(entry.get("actor")),
        "reason": entry.get("reason"),
        "readings": entry.get("readings"),
    }


def _breach_of(final: dict[str, Any]) -> str | None:
    """The guardrail that caused an automatic rollback (its reason reads ``<guardrail>: <message>``)."""
    actor, reason = final.get("actor") or "", final.get("reason") or ""
    if final["action"] == "rollback" and actor.startswith("guardrails") and ":" in reason:
        return reason.split(":", 1)[0]
    return None
