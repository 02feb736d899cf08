"""The rollout's state store side: decisions read and written with compare-and-swap, and the effective policies.

The policy file says what the plan is; the state store says what people and
guardrails decided since (a rollback, a promotion, an admin edit). A stored
decision applies while the file's entry for that model is the one it was
made on (same fingerprint): a restart with the same file keeps a rollback,
while editing the model's entry (a new candidate, a new start) begins a new
plan. Every replica polls the store (``rollout_poll_s``), so a decision made
on any replica is obeyed by all within one interval.

Every write names the stored revision its replica read (compare-and-swap,
see :mod:`service.rollout.decisions`). An admin change that finds the store
moved on is made again on the current state when it still applies (the same
stable, candidate and stage: only the plan's details moved), and refused
with :class:`RevisionConflict` otherwise, or whenever the admin named the
revision they read (``If-Match``). An automatic change (a guardrail's
rollback, a plan that advances by itself, a new version held or shadowed) is
applied here at once and written by a background task; when the store cannot
be reached it waits, and when it is written over a decision that has moved on
since it is dropped and recorded as superseded.

Nothing on the request path waits for the store: every store call (bounded by
``store_timeout_s``) runs in the background task or in an admin request. When
the store cannot be reached the replica keeps routing on its last known state
and says so in ``/readyz`` and metrics. How the policies route and what the
guardrails judge is :mod:`service.rollout.manager`'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from bundle.store import InvalidValue, Store, StoreUnavailable
from service.rollout.decisions import (
    CONFLICT,
    SUPERSEDED,
    Change,
    Decision,
    DecisionStore,
    RefusedDecision,
    StaleRevision,
)
from service.rollout.metrics import RolloutMetrics
from service.rollout.policy import ModelPolicy, iso
from service.rollout.policy_file import PolicyFile
from service.settings import ServiceSettings

log = logging.getLogger("service.rollout")

Clock = Callable[[], float]
Decide = Callable[[ModelPolicy | None], ModelPolicy]  # the policy a change makes of the one it finds
DECISIONS_SHOWN = 5
AUDIT_PRUNE_INTERVAL_S = 3600.0
_TRIES = 3  # an admin change made again on a moved-on state at most this often before it is refused


class RevisionConflict(Exception):
    """An admin change based on a revision the store has moved on from; nothing was written."""

    def __init__(self, model: str, based_on: int, current: int, policy: ModelPolicy | None) -> None:
        now = f"{policy.stage}, stable v{policy.stable}, candidate {_v(policy.candidate)}" if policy else "no policy"
        super().__init__(
            f"the rollout of {model} is at revision {current} ({now}), not at revision {based_on} this change was "
            f"based on; read it again (GET /v1/rollouts/{model}) and send the change again, with "
            f'If-Match: "{current}" to be sure nothing moves meanwhile'
        )
        self.model = model
        self.based_on = based_on
        self.current = current


class SyncedPolicies:
    """The effective policy of every model, kept current from the policy file and the state store.

    ``_policies_changed`` is called whenever the effective policies change; a subclass (the manager)
    compiles its routes there."""

    def __init__(self, settings: ServiceSettings, metrics: RolloutMetrics, store: Store, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.store = store
        self.decisions_store = DecisionStore(store)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.file = PolicyFile(settings.rollout, clock)
        self.decisions: dict[str, Decision] = {}
        self.refused: dict[str, RefusedDecision] = {}  # stored rows that no longer validate, never applied
        self.policies: dict[str, ModelPolicy] = {}  # the effective policy of every model with one
        self.sources: dict[str, str] = {}
        self.recent: dict[str, list[dict[str, Any]]] = {}
        self.store_read = False  # whether the store has been read at least once (what serves is known)
        self._pending: list[Change] = []  # written by the background task, in order; decisions apply here at once
        self._sync_task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._migrated = False
        self._last_poll = 0.0
        self._last_prune = -AUDIT_PRUNE_INTERVAL_S
        self._refusals_counted: set[tuple[str, int]] = set()

    def _policies_changed(self) -> None:
        """Called after ``policies`` changed."""

    def _read_file(self, only_if_changed: bool) -> bool:
        """Read the policy file; True when new policies were applied. An edit leaves an audit entry."""
        refusals = self.file.refusals
        edits = self.file.load(only_if_changed)
        if self.file.refusals > refusals:
            self.metrics.policy_errors.inc()
        if edits is None:
            return False
        if only_if_changed:
            for name, before, after in edits:
                log.info("rollout file changed the policy of %s", name)
                self._pending.append(
                    Change(
                        name,
                        self.clock(),
                        f"file {self.file.path} ({self.replica})",
                        "file",
                        before,
                        after,
                        None,
                        None,
                        self.file.fingerprint(name),
                        decision=False,
                    )
                )
        return True

    # -- the store -----------------------------------------------------------------------

    def _sync_soon(self) -> None:
        """Poll the store in the background unless a poll is already running."""
        if self._sync_task is None or self._sync_task.done():
            self._last_poll = time.monotonic()
            self._sync_task = asyncio.create_task(self._sync())

    async def _sync(self) -> None:
        for _ in range(2):  # once more when a change was made here while this poll ran
            try:
                await self.poll_store()
            except StoreUnavailable:
                return  # keep the last known state; health is in the store, /readyz and the gauges
            except Exception:  # the next poll tries again
                log.exception("rollout state store poll failed")
                return
            if not self._pending:
                return

    async def poll_store(self) -> None:
        """Write pending changes, read every decision, prune old audit entries when due (raises StoreUnavailable)."""
        async with self._write_lock:  # a change made meanwhile must not be overwritten by an older read
            self._last_poll = time.monotonic()
            try:
                await self._ensure_schema()
                await self._flush()
                await self._read()
                await self._prune_audit()
            finally:
                self._refresh_store_gauges()

    async def _ensure_schema(self) -> None:
        if not self._migrated:  # also when the store was out of reach at startup
            await asyncio.to_thread(self.decisions_store.migrate)
            self._migrated = True

    async def _read(self) -> None:
        state = await asyncio.to_thread(self.decisions_store.read_all)
        self.store_read = True
        names = set(state.decisions) | set(self.decisions) | set(state.refused) | set(self.refused)
        changed = [
            name
            for name in names
            if state.decisions.get(name) != self.decisions.get(name)
            or state.refused.get(name) != self.refused.get(name)
        ]
        self.decisions, self.refused = state.decisions, state.refused
        for name, refused in state.refused.items():
            if (name, refused.revision) not in self._refusals_counted:
                self._refusals_counted.add((name, refused.revision))
                self.metrics.stored_policy_errors.labels(name).inc()
                log.error(
                    "the stored rollout decision of %s (revision %d) is invalid and not applied: %s",
                    name,
                    refused.revision,
                    refused.error,
                )
        for name in changed:
            self.recent[name] = await asyncio.to_thread(
                self.decisions_store.history, name, DECISIONS_SHOWN, applied_only=True
            )
        if changed:
            self._apply()

    async def _flush(self) -> None:
        """Write the pending changes in order; an automatic rollback over a moved-on decision is superseded."""
        written = bool(self._pending)
        while self._pending:
            change = self._pending[0]
            try:
                await self._write_pending(change)
            except InvalidValue as exc:  # no store could ever take it: dropped, so it blocks no later change
                log.error("dropping the %s of %s: the store cannot hold it (%s)", change.action, change.model, exc)
            self._pending.pop(0)
        if written:
            self._apply()

    async def _write_pending(self, change: Change) -> None:
        if not change.decision:
            await asyncio.to_thread(self.decisions_store.record, change)
            return
        try:
            revision = await asyncio.to_thread(self.decisions_store.write, change)
        except StaleRevision as stale:
            await asyncio.to_thread(self.decisions_store.record, change, SUPERSEDED, stale.current)
            log.warning(
                "the %s of %s made here at revision %d is superseded: the stored decision moved on to "
                "revision %d meanwhile; the guardrails judge the current policy again",
                change.action,
                change.model,
                change.based_on,
                stale.current,
            )
        else:
            self._stored(change, revision)

    async def _prune_audit(self) -> None:
        if time.monotonic() - self._last_prune < AUDIT_PRUNE_INTERVAL_S:
            return
        self._last_prune = time.monotonic()
        cutoff = self.clock() - self.settings.audit_retention_days * 86_400
        removed = await asyncio.to_thread(self.decisions_store.prune, cutoff)
        if removed:
            log.info(
                "rollout audit trail: removed %d entries older than %g days",
                removed,
                self.settings.audit_retention_days,
            )

    async def history(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        """The audit trail of one model, newest first (raises StoreUnavailable)."""
        return await asyncio.to_thread(self.decisions_store.history, name, limit)

    def revision(self, name: str) -> int:
        """The stored revision of ``name``'s decision row as this replica last read it (0: none)."""
        if name in self.decisions:
            return self.decisions[name].revision
        refused = self.refused.get(name)
        return refused.revision if refused is not None else 0

    def _stored(self, change: Change, revision: int) -> None:
        if change.after is not None:  # a decision always carries its policy
            self.decisions[change.model] = Decision(
                change.after, change.file_fingerprint, revision, change.at, change.actor, change.reason
            )
            self.refused.pop(change.model, None)

    # -- changes -------------------------------------------------------------------------

    async def change(
        self,
        name: str,
        action: str,
        decide: Decide,
        actor: str,
        reason: str | None,
        expected: int | None = None,
    ) -> ModelPolicy:
        """An admin decision, written to the store before it applies here (raises StoreUnavailable).

        ``decide`` makes the new policy from the one in force; ``expected`` is the revision the admin read
        (``If-Match``). Raises :class:`RevisionConflict` when the store has moved on and the change no longer
        applies, or when it is not at ``expected``."""
        async with self._write_lock:
            await self._ensure_schema()
            await self._flush()
            if expected is not None and expected != self.revision(name):
                await self._read()  # this replica's copy may be behind the admin's
            attempt: Change | None = None  # the last change tried, recorded when it loses
            for _ in range(_TRIES):
                based_on, before = self.revision(name), self.policies.get(name)
                if expected is not None and expected != based_on:
                    break
                after = decide(before)
                attempt = Change(
                    name,
                    self.clock(),
                    actor,
                    action,
                    before,
                    after,
                    reason,
                    self._readings_now(name),
                    self.file.fingerprint(name),
                    based_on=based_on,
                )
                try:
                    revision = await asyncio.to_thread(self.decisions_store.write, attempt)
                except StaleRevision:
                    await self._read()
                    if expected is None and _same_course(before, self.policies.get(name)):
                        continue  # only the plan's details moved: the change still applies to the current state
                    break
                self._stored(attempt, revision)
                self._apply()
                self._remember(attempt)
                self._last_poll = 0.0  # read back soon, with the audit entry
                return after
            current = self.revision(name)
            lost = attempt or Change(
                name,
                self.clock(),
                actor,
                action,
                self.policies.get(name),
                None,
                reason,
                None,
                self.file.fingerprint(name),
                based_on=expected if expected is not None else current,
            )
            await asyncio.to_thread(self.decisions_store.record, lost, CONFLICT, current)
            raise RevisionConflict(name, lost.based_on, current, self.policies.get(name))

    def _decide_here(
        self,
        name: str,
        action: str,
        actor: str,
        before: ModelPolicy | None,
        after: ModelPolicy,
        reason: str,
        readings: dict[str, Any] | None = None,
    ) -> None:
        """An automatic change: in force here at once, written to the store by the background task."""
        change = Change(
            name,
            self.clock(),
            f"{actor} ({self.replica})",
            action,
            before,
            after,
            reason,
            readings,
            self.file.fingerprint(name),
            based_on=self.revision(name),
        )
        self._pending.append(change)
        self._apply()
        self._remember(change)
        self._sync_soon()

    def _readings_now(self, name: str) -> dict[str, Any] | None:
        """The readings a decision was made on (the manager's guardrails); none here."""
        return None

    def _remember(self, change: Change) -> None:
        recent = self.recent.setdefault(change.model, [])
        recent.insert(
            0,
            {
                "at": iso(change.at),
                "actor": change.actor,
                "action": change.action,
                "reason": change.reason,
                "readings": change.readings,
            },
        )
        del recent[DECISIONS_SHOWN:]

    # -- the effective policies ----------------------------------------------------------

    def _apply(self) -> None:
        policies, sources = {}, {}
        in_file = self.file.policies.models
        pending = {c.model: c.after for c in self._pending if c.decision and c.after is not None}
        for name in sorted(set(in_file) | set(self.decisions) | set(self.refused) | set(pending)):
            decision, refused = self.decisions.get(name), self.refused.get(name)
            fingerprint = self.file.fingerprint(name)
            if name in pending:
                policies[name], sources[name] = pending[name], "pending"
            elif decision is not None and decision.file_fingerprint == fingerprint:
                policies[name], sources[name] = decision.policy, "store"
            elif refused is not None and refused.file_fingerprint == fingerprint:
                # the decision in force cannot be read: stable serves everyone until an admin replaces it
                stable = refused.stable or (in_file[name].stable if name in in_file else None)
                if stable is not None:
                    policies[name], sources[name] = ModelPolicy(stable=stable), "refused"
            elif name in in_file:
                policies[name], sources[name] = in_file[name], "file"
        self.policies, self.sources = policies, sources
        self._policies_changed()

    def problems(self) -> dict[str, str]:
        """Per model, why its stored decision is not applied (a row that no longer validates)."""
        return {
            name: f"the stored rollout decision (revision {refused.revision}) is invalid and not applied "
            f"({refused.error}); stable serves until a valid policy replaces it"
            for name, refused in sorted(self.refused.items())
        }

    def _refresh_store_gauges(self) -> None:
        self.metrics.store_up.set(1 if self.store.up() else 0)
        if self.store.last_ok_at is not None:
            self.metrics.store_age.set(max(0.0, time.time() - self.store.last_ok_at))

    def store_status(self, internals: bool = False) -> dict[str, Any]:
        """The state store's health; where it is and its last error only with ``internals`` (admins)."""
        described = self.store.describe(internals)
        described["pending_writes"] = len(self._pending)
        described["last_ok_at"] = iso(described["last_ok_at"])
        if not described["healthy"]:
            described["detail"] = "state store unreachable: routing on the last known rollout state"
        return described


def _same_course(before: ModelPolicy | None, now: ModelPolicy | None) -> bool:
    """Whether a change made from ``before`` still applies to ``now``: the same versions in the same stage."""
    if before is None or now is None:
        return before is now
    return (before.stable, before.candidate, before.stage) == (now.stable, now.candidate, now.stage)


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "none"


def json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
