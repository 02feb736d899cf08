"""The rollout's tables in the state store: the decision in force per model, and the audit trail.

A decision is what people and guardrails decided over the policy file's plan
(a rollback, a promotion, an admin edit), recorded with the fingerprint of
the file entry it was made on. Every change also leaves an audit entry: who,
when, what before and after, why, and the readings behind an automatic
decision. The schema lives here, with its owner; the app hands it to the
store.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from bundle.store import Migration, Store
from service.rollout.policy import ModelPolicy, iso

log = logging.getLogger("service.rollout")

MIGRATIONS: list[Migration] = [
    Migration(
        "rollout-1-state-and-audit",
        """
        CREATE TABLE IF NOT EXISTS rollout_state (
            model TEXT PRIMARY KEY, policy TEXT NOT NULL, file_fingerprint TEXT NOT NULL,
            revision BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL, updated_by TEXT NOT NULL, reason TEXT);
        CREATE TABLE IF NOT EXISTS rollout_audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
            actor TEXT NOT NULL, action TEXT NOT NULL, before TEXT, after TEXT, reason TEXT, readings TEXT);
        CREATE INDEX IF NOT EXISTS rollout_audit_model ON rollout_audit (model, id)
        """,
        postgres="""
        CREATE TABLE IF NOT EXISTS rollout_state (
            model TEXT PRIMARY KEY, policy TEXT NOT NULL, file_fingerprint TEXT NOT NULL,
            revision BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL, updated_by TEXT NOT NULL, reason TEXT);
        CREATE TABLE IF NOT EXISTS rollout_audit (
            id BIGSERIAL PRIMARY KEY, model TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
            actor TEXT NOT NULL, action TEXT NOT NULL, before TEXT, after TEXT, reason TEXT, readings TEXT);
        CREATE INDEX IF NOT EXISTS rollout_audit_model ON rollout_audit (model, id)
        """,
    )
]

_UPSERT = (
    "INSERT INTO rollout_state (model, policy, file_fingerprint, revision, updated_at, updated_by, reason) "
    "VALUES (?, ?, ?, 1, ?, ?, ?) ON CONFLICT (model) DO UPDATE SET policy = excluded.policy, "
    "file_fingerprint = excluded.file_fingerprint, revision = rollout_state.revision + 1, "
    "updated_at = excluded.updated_at, updated_by = excluded.updated_by, reason = excluded.reason"
)
_AUDIT = (
    "INSERT INTO rollout_audit (model, at, actor, action, before, after, reason, readings) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class Decision:
    """A stored decision over the file's plan for one model."""

    policy: ModelPolicy
    file_fingerprint: str
    revision: int
    updated_at: float
    updated_by: str
    reason: str | None


@dataclass(frozen=True)
class Change:
    """One audit entry (and, with ``decision``, the state row it writes)."""

    model: str
    at: float
    actor: str
    action: str
    before: ModelPolicy | None
    after: ModelPolicy | None
    reason: str | None
    readings: dict[str, Any] | None
    file_fingerprint: str
    decision: bool = True


class DecisionStore:
    """Reads and writes the rollout's tables (blocking calls: run them off the event loop)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def migrate(self) -> None:
        self.store.migrate(MIGRATIONS)

    def write(self, change: Change) -> None:
        """The change's audit entry, and its decision row when it is a decision (raises StoreUnavailable)."""
        if change.decision and change.after is not None:
            self.store.execute(
                _UPSERT,
                (
                    change.model,
                    change.after.model_dump_json(),
                    change.file_fingerprint,
                    change.at,
                    change.actor,
                    change.reason,
                ),
            )
        readings = json.dumps(change.readings) if change.readings is not None else None
        self.store.execute(
            _AUDIT,
            (
                change.model,
                change.at,
                change.actor,
                change.action,
                _dump(change.before),
                _dump(change.after),
                change.reason,
                readings,
            ),
        )

    def read_all(self) -> dict[str, Decision]:
        """Every model's decision; a row that no longer validates is logged and left out."""
        decisions = {}
        for row in self.store.query("SELECT * FROM rollout_state"):
            try:
                policy = ModelPolicy.model_validate_json(row["policy"])
            except ValueError as exc:
                log.error("ignoring the stored rollout state of %s: %s", row["model"], exc)
                continue
            decisions[row["model"]] = Decision(
                policy,
                row["file_fingerprint"],
                int(row["revision"]),
                float(row["updated_at"]),
                row["updated_by"],
                row["reason"],
            )
        return decisions

    def history(self, name: str, limit: int) -> list[dict[str, Any]]:
        """The audit trail of one model, newest first."""
        rows = self.store.query(
            "SELECT id, at, actor, action, before, after, reason, readings FROM rollout_audit "
            "WHERE model = ? ORDER BY id DESC LIMIT ?",
            (name, limit),
        )
        entries = []
        for row in rows:
            entry = {
                "id": row["id"],
                "at": iso(row["at"]),
                "actor": row["actor"],
                "action": row["action"],
                "reason": row["reason"],
            }
            for key in ("before", "after", "readings"):
                entry[key] = json.loads(row[key]) if row[key] else None
            entries.append(entry)
        return entries


def _dump(policy: ModelPolicy | None) -> str | None:
    return policy.model_dump_json() if policy is not None else None
