"""The live rollout: the policy file, the state store's decisions over it, guardrails, and the poller.

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
revision they read (``If-Match``). An automatic rollback is applied here at
once and written by a background task; when the store cannot be reached it
waits, and when it is written over a decision that has moved on since (a new
policy, a promotion, another candidate) it is dropped and recorded as
superseded; the guardrails then judge the current policy afresh.

Nothing on the request path or in the tick waits for the store: routing and
``GET /v1/rollouts`` read the in-memory state, and every store call (bounded
by ``store_timeout_s``) runs in the background task or in an admin request.
When the store cannot be reached the replica keeps routing on its last known
state and says so in ``/readyz`` and metrics.

Guardrail readings are this replica's own observations (see
``service.rollout.guardrails``): each replica judges what it serves, and a breach
anywhere rolls the candidate back everywhere through the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Collection, Mapping
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
from service.rollout.guardrails import ArmObservations, ArmWindow, ReadingSource, Verdict
from service.rollout.metrics import RolloutMetrics
from service.rollout.policy import ModelPolicy, PolicyError, iso
from service.rollout.policy_file import PolicyFile
from service.rollout.routing import CompiledRoute, candidate_share, plan_regions
from service.settings import ServiceSettings

log = logging.getLogger("service.rollout")

Clock = Callable[[], float]
LoadedVersions = Callable[[str], Collection[int]]  # a model's loaded version numbers
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


class RolloutManager:
    """Routes on the effective policy of every model; keeps it current from the file and the store."""

    def __init__(
        self,
        settings: ServiceSettings,
        metrics: RolloutMetrics,
        store: Store,
        loaded_versions: LoadedVersions,
        reading_sources: Mapping[str, ReadingSource] | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.store = store
        self.decisions_store = DecisionStore(store)
        self.served_versions: LoadedVersions = loaded_versions
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        # readings from other components (drift, live accuracy) that the guardrails judge beside their own
        self.reading_sources: dict[str, ReadingSource] = dict(reading_sources or {})
        self.file = PolicyFile(settings.rollout, clock)
        self.decisions: dict[str, Decision] = {}
        self.refused: dict[str, RefusedDecision] = {}  # stored rows that no longer validate, never applied
        self.policies: dict[str, ModelPolicy] = {}  # the effective policy of every model with one
        self._routes: dict[str, CompiledRoute] = {}  # each policy compiled for routing (rebuilt with the policies)
        self._watched: dict[str, dict[int, ArmWindow]] = {}
        self.sources: dict[str, str] = {}
        self.observations: dict[str, ArmObservations] = {}
        self.verdicts: dict[str, Verdict] = {}
        self.recent: dict[str, list[dict[str, Any]]] = {}
        region_header = settings.region_header.lower().encode("latin-1")
        self.header_names = frozenset({b"content-type", b"content-length", region_header, b"x-request-key"})
        self._sticky: dict[str, bytes] = {}
        self._pending: list[Change] = []  # written by the background task, in order; decisions apply here at once
        self._task: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._migrated = False
        self._last_poll = 0.0
        self._last_prune = -AUDIT_PRUNE_INTERVAL_S
        self._refusals_counted: set[tuple[str, int]] = set()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._read_file, False)
        if self.file.error is not None:  # no last good policy to keep: serving the wrong versions is worse
            raise PolicyError(self.file.error)
        try:
            await self.poll_store()
        except StoreUnavailable as exc:
            log.warning("rollout state store unreachable at startup (%s); routing on the rollout file alone", exc)
        self._apply()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        for task in (self._task, self._sync_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._sync_task = None
        await asyncio.to_thread(self.store.close)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rollout_tick_s)
            try:
                await self.tick()
            except Exception:  # the loop must outlive any one failure
                log.exception("rollout tick failed")

    async def tick(self) -> None:
        """Reload a changed file, start a store poll when due, judge the guardrails, refresh the gauges.

        The poll runs beside the tick: a store that hangs delays neither the guardrails nor the gauges."""
        if await asyncio.to_thread(self._read_file, True):
            self._apply()
        if time.monotonic() - self._last_poll >= self.settings.rollout_poll_s:
            self._sync_soon()
        await self.check_guardrails()
        self._refresh_gauges()

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

    async def rollback(self, name: str, actor: str, reason: str | None, expected: int | None = None) -> ModelPolicy:
        def rolled_back(policy: ModelPolicy | None) -> ModelPolicy:
            policy = _require(name, policy)
            if policy.candidate is None:
                raise PolicyError(f"{name}: there is no candidate to roll back")
            return policy.model_copy(update={"stage": "rolled_back"})

        return await self.change(name, "rollback", rolled_back, actor, reason, expected)

    async def promote(self, name: str, actor: str, reason: str | None, expected: int | None = None) -> ModelPolicy:
        def promoted(policy: ModelPolicy | None) -> ModelPolicy:
            policy = _require(name, policy)
            if policy.candidate is None:
                raise PolicyError(f"{name}: there is no candidate to promote")
            if policy.candidate not in self.served_versions(name):
                raise PolicyError(f"{name}: candidate v{policy.candidate} is not loaded; it cannot take all traffic")
            return policy.model_copy(update={"stage": "promoted"})

        return await self.change(name, "promote", promoted, actor, reason, expected)

    async def replace(
        self, name: str, policy: ModelPolicy, actor: str, reason: str | None, expected: int | None = None
    ) -> ModelPolicy:
        return await self.change(name, "replace", lambda _: policy, actor, reason, expected)

    def _roll_back_here(self, name: str, policy: ModelPolicy, verdict: Verdict) -> None:
        """An automatic rollback: in force here at once, written to the store by the background task."""
        change = Change(
            name,
            self.clock(),
            f"guardrails ({self.replica})",
            "rollback",
            policy,
            policy.model_copy(update={"stage": "rolled_back"}),
            f"{verdict.reason}: {verdict.message}",
            _json_safe(verdict.readings),
            self.file.fingerprint(name),
            based_on=self.revision(name),
        )
        self._pending.append(change)
        self._apply()
        self._remember(change)
        self._sync_soon()

    def _readings_now(self, name: str) -> dict[str, Any] | None:
        """The guardrails' latest readings of a model's arms, kept with a decision (what it was made on)."""
        verdict = self.verdicts.get(name)
        return _json_safe(verdict.readings) if verdict is not None and verdict.readings else None

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
        for name, policy in policies.items():
            self.observations.setdefault(name, ArmObservations(name, self.reading_sources)).reset_for(
                policy.stable, policy.candidate
            )
        self.policies, self.sources = policies, sources
        self._routes = {name: CompiledRoute(name, policy) for name, policy in policies.items()}
        self._watched = {  # the windows the guardrails judge, by version, for the models whose candidate runs
            name: {policy.candidate: self.observations[name].candidate, policy.stable: self.observations[name].stable}
            for name, policy in policies.items()
            if policy.candidate is not None and policy.stage in ("shadow", "canary")
        }
        self._sticky = {name: p.sticky_key.lower().encode("latin-1") for name, p in policies.items()}
        region_header = self.settings.region_header.lower().encode("latin-1")
        self.header_names = frozenset({b"content-type", b"content-length", region_header, *self._sticky.values()})
        self._refresh_gauges()

    def problems(self) -> dict[str, str]:
        """Per model, why its stored decision is not applied (a row that no longer validates)."""
        return {
            name: f"the stored rollout decision (revision {refused.revision}) is invalid and not applied "
            f"({refused.error}); stable serves until a valid policy replaces it"
            for name, refused in sorted(self.refused.items())
        }

    # -- the request path (cheap: no I/O, no awaits) ---------------------------------------

    def choose(self, name: str, key: str | None, region: str | None, loaded: Collection[int]) -> int | None:
        """The loaded version for this request, or None to let the registry pick (no policy, nothing loaded)."""
        route = self._routes.get(name)
        if route is None:
            return None
        number = route.choose(key, region, self.clock())
        if number in loaded:
            return number
        return route.stable if route.stable in loaded else None  # a missing version: stable keeps serving

    def sticky_header(self, name: str) -> bytes:
        return self._sticky.get(name, b"x-request-key")

    def shadow_target(self, name: str, key: str, served: int) -> int | None:
        """The candidate to mirror this request to, when it is shadowed and stable answered it."""
        route = self._routes.get(name)
        if route is None or served != route.stable or not route.shadows(key):
            return None
        return route.candidate

    def shadows_everything(self, name: str) -> bool:
        """Whether the policy shadows every request (``shadow: {percent: 100}``): then every copy runs unless the
        candidate's runtime is saturated, whatever the time budget of partial shares says."""
        route = self._routes.get(name)
        return route is not None and route.shadow is not None and route.shadow[1]

    def shed(self, name: str, candidate: int, count: int = 1) -> None:
        """Shadow copies of ``name`` that did not run on ``candidate``, counted in its arm's readings."""
        windows = self._watched.get(name)
        window = windows.get(candidate) if windows is not None else None
        if window is not None:
            window.shed(self.clock(), count)

    def observe(self, name: str, version: int, ok: bool, seconds: float, count: int = 1) -> None:
        """``count`` answered requests of an arm (requests, or shadow copies run together), ``seconds`` each."""
        windows = self._watched.get(name)  # only while a candidate runs (stage shadow or canary)
        if windows is not None:
            window = windows.get(version)
            if window is not None:
                window.request(self.clock(), ok, seconds, count)

    def compared(
        self,
        name: str,
        candidate: int,
        compared: int,
        disagreed: int,
        abs_diff: float = 0.0,
        rel_diff: float = 0.0,
        differences: int = 0,
    ) -> None:
        policy = self.policies.get(name)
        if policy is None or policy.candidate != candidate:
            return
        self.observations[name].candidate.comparison(self.clock(), compared, disagreed, abs_diff, rel_diff, differences)

    # -- guardrails ----------------------------------------------------------------------

    async def check_guardrails(self) -> None:
        for name, policy in list(self.policies.items()):
            if policy.candidate is None or policy.stage not in ("shadow", "canary"):
                self.verdicts[name] = Verdict("off", None, f"not judged in stage {policy.stage!r}", {})
                continue
            verdict = self.observations[name].evaluate(policy.guardrails, policy.stable, policy.candidate, self.clock())
            self.verdicts[name] = verdict
            if verdict.status == "breach" and verdict.reason is not None:
                log.error("guardrail breach for %s v%d: %s; rolling back", name, policy.candidate, verdict.message)
                self.metrics.rollbacks.labels(name, verdict.reason).inc()
                self._roll_back_here(name, policy, verdict)

    # -- what is shown -------------------------------------------------------------------

    def _refresh_gauges(self) -> None:
        now = self.clock()
        for name, policy in self.policies.items():
            self.metrics.set_stage(name, policy.stage)
            for region in plan_regions(policy) or ["*"]:
                self.metrics.share.labels(name, region).set(candidate_share(policy, region, now) / 100)
            verdict = self.verdicts.get(name)
            if verdict is not None:
                self.metrics.set_guardrail_state(name, verdict.status)
                if policy.candidate is not None and "candidate" in verdict.readings:
                    c = verdict.readings["candidate"]
                    if c.get("disagreement") is not None:
                        self.metrics.shadow_disagreement.labels(name, str(policy.candidate)).set(c["disagreement"])
                    if c.get("mean_abs_difference") is not None:
                        self.metrics.shadow_abs_difference.labels(name, str(policy.candidate)).set(
                            c["mean_abs_difference"]
                        )
        self._refresh_store_gauges()

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


def _require(name: str, policy: ModelPolicy | None) -> ModelPolicy:
    if policy is None:
        raise LookupError(f"model {name!r} has no rollout policy")
    return policy


def _same_course(before: ModelPolicy | None, now: ModelPolicy | None) -> bool:
    """Whether a change made from ``before`` still applies to ``now``: the same versions in the same stage."""
    if before is None or now is None:
        return before is now
    return (before.stable, before.candidate, before.stage) == (now.stable, now.candidate, now.stage)


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "none"


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
