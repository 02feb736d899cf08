"""The rollout's metrics, registered on the app's own Prometheus registry (see ``service.metrics``).

Labels stay bounded: model names come from the policy, regions from the
plan's steps (``*`` included), stages and rollback reasons are fixed words.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.rollout.policy import STAGES


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.stage = Gauge(
            "serving_rollout_stage",
            "1 for the model's current rollout stage.",
            ["model", "stage"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.share = Gauge(
            "serving_rollout_candidate_share",
            "Candidate's share of the region's keys now, 0..1.",
            ["model", "region"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.rollbacks = Counter(
            "serving_rollbacks", "Candidates rolled back, by reason.", ["model", "reason"], registry=r
        )
        self.policy_errors = Counter(
            "serving_rollout_policy_errors", "Rollout file edits refused (the last good policy kept).", registry=r
        )
        self.stored_policy_errors = Counter(
            "serving_rollout_stored_policy_errors",
            "Stored rollout decisions that no longer validate, each counted once (stable serves instead).",
            ["model"],
            registry=r,
        )
        self.guardrail_state = Gauge(
            "serving_rollout_guardrail_state",
            "1 for the guardrails' current verdict (waiting_for_data, ok, breach, off).",
            ["model", "state"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.store_up = Gauge(
            "serving_state_store_up",
            "1 when the last state store call succeeded.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.store_age = Gauge(
            "serving_state_store_last_ok_age_seconds",
            "Seconds since the state store last answered.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.shadow_requests = Counter(
            "serving_shadow_requests",
            "Shadow runs of the candidate, by outcome (ok, error).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.shadow_shed = Counter(
            "serving_shadow_shed",
            "Shadow runs skipped to protect the stable answer under load.",
            ["model"],
            registry=r,
        )
        self.shadow_comparisons = Counter(
            "serving_shadow_comparisons",
            "Items the candidate's shadow answer was compared on.",
            ["model", "version"],
            registry=r,
        )
        self.shadow_disagreements = Counter(
            "serving_shadow_disagreements",
            "Compared items where the candidate's labels differ from stable's.",
            ["model", "version"],
            registry=r,
        )
        self.shadow_disagreement = Gauge(
            "serving_shadow_disagreement",
            "Disagreement rate over the guardrail window.",
            ["model", "version"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.shadow_abs_difference = Gauge(
            "serving_shadow_mean_abs_difference",
            "Regression: mean |candidate - stable| over the guardrail window.",
            ["model", "version"],
            multiprocess_mode="mostrecent",
            registry=r,
        )

    def set_stage(self, model: str, stage: str) -> None:
        for name in STAGES:
            self.stage.labels(model, name).set(1 if name == stage else 0)

    def set_guardrail_state(self, model: str, state: str) -> None:
        for name in ("waiting_for_data", "ok", "breach", "off"):
            self.guardrail_state.labels(model, name).set(1 if name == state else 0)
