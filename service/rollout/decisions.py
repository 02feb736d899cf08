"""The rollout's tables in the state store: the decision in force per model, and the audit trail.

A decision is what people and guardrails decided over the policy file's plan
(a rollback, a promotion, an admin edit), recorded with the fingerprint of
the file entry it was made on. Every decision row carries a revision, and
every write names the revision it was based on: the store writes it only if
that is still the stored one (compare-and-swap), so a replica writing from a
stale copy loses instead of putting old state back (:class:`StaleRevision`).
Every attempt also leaves an audit entry: who, when, what before and after,
why, the readings behind an automatic decision, and its outcome (``applied``;
``conflict``: an admin change refused as stale; ``superseded``: an automatic
rollback dropped because the stored decision had moved on). The schema lives
here, with its owner; the app hands it to the store.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from bundle.store import Migration, Store, Transaction
from service.rollout.policy import ModelPolicy, describe_validation, iso

log = logging.getLogger("service.rollout")

APPLIED, CONFLICT, SUPERSEDED = "applied", "conflict", "superseded"

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
    ),
    # Each attempt's outcome and revisions (entries from before read as applied); an index for retention.
    Migration(
        "rollout-2-audit-outcome-and-revision",
        """
        ALTER TABLE rollout_audit ADD COLUMN outcome TEXT NOT NULL DEFAULT 'applied';
        ALTER TABLE rollout_audit ADD COLUMN revision BIGINT;
        ALTER TABLE rollout_audit ADD COLUMN based_on BIGINT;
        CREATE INDEX IF NOT EXISTS rollout_audit_at ON rollout_audit (at)
        """,
    ),
]

_INSERT_FIRST = (
    "INSERT INTO rollout_state (model, policy, file_fingerprint, revision, updated_at, updated_by, reason) "
    "VALUES (?, ?, ?, 1, ?, ?, ?) ON CONFLICT (model) DO NOTHING"
)
_UPDATE_IF_CURRENT = (
    "UPDATE rollout_state SET policy = ?, file_fingerprint = ?, revision = ?, updated_at = ?, updated_by = ?, "
    "reason = ? WHERE model = ? AND revision = ?"
)
_AUDIT = (
    "INSERT INTO rollout_audit (model, at, actor, action, before, after, reason, readings, outcome, revision, based_on) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class StaleRevision(Exception):
    """The stored decision is no longer at the revision a change was based on; nothing was written."""

    def __init__(self, model: str, based_on: int, current: int) -> None:
        super().__init__(f"{model}: the stored decision is at revision {current}, not {based_on}")
        self.model = model
        self.based_on = based_on
        self.current = current


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
class RefusedDecision:
    """A stored row that no longer validates (written before a check existed): never applied as it is.

    Its revision is kept so an admin can replace it; ``stable`` is its stable version when that much reads."""

    revision: int
    file_fingerprint: str
    error: str
    stable: int | None


@dataclass(frozen=True)
class StoredState:
    decisions: dict[str, Decision]
    refused: dict[str, RefusedDecision]


@dataclass(frozen=True)
class Change:
    """One attempted change: its audit entry and, with ``decision``, the state row it writes over ``based_on``."""

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
    based_on: int = 0  # the stored revision the change was made from (0: no row)


class DecisionStore:
    """Reads and writes the rollout's tables (blocking calls: run them off the event loop)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def migrate(self) -> None:
        self.store.migrate(MIGRATIONS)

    def write(self, change: Change) -> int:
        """The decision row, if the stored revision is still ``change.based_on``, and its audit entry, at once.

        Returns the new revision; raises :class:`StaleRevision` (nothing written) or ``StoreUnavailable``."""
        if change.after is None:
            raise ValueError(f"{change.model}: a decision needs the policy it decides")
        policy = change.after.model_dump_json()

        def compare_and_swap(tx: Transaction) -> int:
            if change.based_on == 0:
                written = tx.execute(
                    _INSERT_FIRST,
                    (change.model, policy, change.file_fingerprint, change.at, change.actor, change.reason),
                )
            else:
                written = tx.execute(
                    _UPDATE_IF_CURRENT,
                    (
                        policy,
                        change.file_fingerprint,
                        change.based_on + 1,
                        change.at,
                        change.actor,
                        change.reason,
                        change.model,
                        change.based_on,
                    ),
                )
            if written != 1:
                rows = tx.query("SELECT revision FROM rollout_state WHERE model = ?", (change.model,))
                raise StaleRevision(change.model, change.based_on, int(rows[0]["revision"]) if rows else 0)
            tx.execute(_AUDIT, _audit_row(change, APPLIED, change.based_on + 1))
            return change.based_on + 1

        return self.store.transaction(compare_and_swap)

    def record(self, change: Change, outcome: str = APPLIED, revision: int | None = None) -> None:
        """An audit entry alone: a file edit, or an attempt that lost (``conflict``, ``superseded``)."""
        self.store.execute(_AUDIT, _audit_row(change, outcome, revision))

    def read_all(self) -> StoredState:
        """Every model's decision; a row that no longer validates is logged and returned apart, never applied."""
        decisions, refused = {}, {}
        for row in self.store.query("SELECT * FROM rollout_state"):
            name, revision = row["model"], int(row["revision"])
            try:
                policy = ModelPolicy.model_validate_json(row["policy"])
            except ValueError as exc:
                error = describe_validation(exc, "policy") if isinstance(exc, ValidationError) else str(exc)
                refused[name] = RefusedDecision(revision, row["file_fingerprint"], error, _stable_of(row["policy"]))
                continue
            decisions[name] = Decision(
                policy,
                row["file_fingerprint"],
                revision,
                float(row["updated_at"]),
                row["updated_by"],
                row["reason"],
            )
        return StoredState(decisions, refused)

    def history(self, name: str, limit: int, applied_only: bool = False) -> list[dict[str, Any]]:
        """The audit trail of one model, newest first (with ``applied_only``, the changes that took effect)."""
        only = " AND outcome = 'applied'" if applied_only else ""
        rows = self.store.query(
            "SELECT id, at, actor, action, before, after, reason, readings, outcome, revision, based_on "
            f"FROM rollout_audit WHERE model = ?{only} ORDER BY id DESC LIMIT ?",
            (name, limit),
        )
        entries = []
        for row in rows:
            entry = {
                "id": row["id"],
                "at": iso(row["at"]),
                "actor": row["actor"],
                "action": row["action"],
                "outcome": row["outcome"],
                "revision": row["revision"],
                "based_on": row["based_on"],
                "reason": row["reason"],
            }
            for key in ("before", "after", "readings"):
                entry[key] = json.loads(row[key]) if row[key] else None
            entries.append(entry)
        return entries

    def prune(self, older_than: float) -> int:
        """Delete the audit entries made before ``older_than`` (epoch seconds); how many went."""
        return self.store.execute("DELETE FROM rollout_audit WHERE at < ?", (older_than,))


def _audit_row(change: Change, outcome: str, revision: int | None) -> tuple[Any, ...]:
    readings = json.dumps(change.readings) if change.readings is not None else None
    based_on = change.based_on if change.decision else None
    return (
        change.model,
        change.at,
        change.actor,
        change.action,
        _dump(change.before),
        _dump(change.after),
        change.reason,
        readings,
        outcome,
        revision,
        based_on,
    )


def _dump(policy: ModelPolicy | None) -> str | None:
    return policy.model_dump_json() if policy is not None else None


def _stable_of(text: str) -> int | None:
    """The stable version of a stored policy that does not validate, when that field alone reads."""
    try:
        stable = json.loads(text).get("stable")
    except (ValueError, AttributeError):
        return None
    return stable if isinstance(stable, int) and not isinstance(stable, bool) and stable >= 1 else None
