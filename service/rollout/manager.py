"""The live rollout: the policy file, the state store's decisions over it, guardrails, and the poller.

The policy file says what the plan is; the state store says what people and
guardrails decided since (a rollback, a promotion, an admin edit). A stored
decision applies while the file's entry for that model is the one it was
made on (same fingerprint): a restart with the same file keeps a rollback,
while editing the model's entry (a new candidate, a new start) begins a new
plan. Every replica polls the store (``rollout_poll_s``), so a decision made
on any replica is obeyed by all within one interval. When the store cannot
be reached the replica keeps routing on its last known state, says so in
``/readyz`` and metrics, and writes its own pending decisions (automatic
rollbacks) once the store answers again.

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

from bundle.store import Store, StoreUnavailable
from service.rollout.decisions import Change, Decision, DecisionStore
from service.rollout.guardrails import ArmObservations, ArmWindow, ReadingSource, Verdict
from service.rollout.metrics import RolloutMetrics
from service.rollout.policy import ModelPolicy, PolicyError, iso
from service.rollout.policy_file import PolicyFile
from service.rollout.routing import CompiledRoute, candidate_share, plan_regions
from service.settings import ServiceSettings

log = logging.getLogger("service.rollout")

Clock = Callable[[], float]
LoadedVersions = Callable[[str], Collection[int]]  # a model's loaded version numbers
DECISIONS_SHOWN = 5


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
        self._pending: list[Change] = []
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._last_poll = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._read_file, False)
        if self.file.error is not None:  # no last good policy to keep: serving the wrong versions is worse
            raise PolicyError(self.file.error)
        try:
            await asyncio.to_thread(self.decisions_store.migrate)
            await self.poll_store()
        except StoreUnavailable as exc:
            log.warning("rollout state store unreachable at startup (%s); routing on the rollout file alone", exc)
        self._apply()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.to_thread(self.store.close)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rollout_tick_s)
            try:
                await self.tick()
            except Exception:  # the loop must outlive any one failure
                log.exception("rollout tick failed")

    async def tick(self) -> None:
        """Reload a changed file, read the store when due, judge the guardrails, refresh the gauges."""
        if await asyncio.to_thread(self._read_file, True):
            self._apply()
        if time.monotonic() - self._last_poll >= self.settings.rollout_poll_s:
            try:
                await self.poll_store()
            except StoreUnavailable:
                pass  # keep the last known state; health is in the store and in /readyz
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
                        False,
                    )
                )
        return True

    # -- the store -----------------------------------------------------------------------

    async def poll_store(self) -> None:
        """Write pending changes, then read every decision (raises StoreUnavailable)."""
        async with self._write_lock:  # a change made meanwhile must not be overwritten by an older read
            await self._poll_store()

    async def _poll_store(self) -> None:
        self._last_poll = time.monotonic()
        try:
            await self._flush()
            decisions = await asyncio.to_thread(self.decisions_store.read_all)
        finally:
            self._refresh_store_gauges()
        changed = [
            name for name in set(decisions) | set(self.decisions) if decisions.get(name) != self.decisions.get(name)
        ]
        self.decisions = decisions
        for name in changed:
            self.recent[name] = await asyncio.to_thread(self.decisions_store.history, name, DECISIONS_SHOWN)
        if changed:
            self._apply()

    async def _flush(self) -> None:
        while self._pending:
            change = self._pending[0]
            await asyncio.to_thread(self.decisions_store.write, change)
            self._pending.pop(0)

    async def history(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        """The audit trail of one model, newest first (raises StoreUnavailable)."""
        return await asyncio.to_thread(self.decisions_store.history, name, limit)

    # -- changes -------------------------------------------------------------------------

    async def change(
        self,
        name: str,
        action: str,
        after: ModelPolicy,
        actor: str,
        reason: str | None,
        readings: dict[str, Any] | None = None,
        must_persist: bool = True,
    ) -> ModelPolicy:
        """Record a decision: in the store at once (or, for automatic ones, as soon as it answers) and locally."""
        async with self._write_lock:
            before = self.policies.get(name)
            fingerprint = self.file.fingerprint(name)
            change = Change(name, self.clock(), actor, action, before, after, reason, readings, fingerprint)
            if must_persist:
                await self._flush()
                await asyncio.to_thread(
                    self.decisions_store.write, change
                )  # raises StoreUnavailable: the caller answers 503
            else:
                self._pending.append(change)
            revision = self.decisions[name].revision + 1 if name in self.decisions else 1
            self.decisions[name] = Decision(after, fingerprint, revision, change.at, actor, reason)
            self._apply()
            if must_persist:
                self._last_poll = 0.0  # read back soon, with the audit entry
            else:
                try:
                    await self._flush()
                except StoreUnavailable:
                    log.warning(
                        "state store unreachable: %s of %s is applied here and will be written later", action, name
                    )
            self.recent.setdefault(name, []).insert(
                0, {"at": iso(change.at), "actor": actor, "action": action, "reason": reason, "readings": readings}
            )
            del self.recent[name][DECISIONS_SHOWN:]
            return after

    async def rollback(
        self,
        name: str,
        actor: str,
        reason: str | None,
        readings: dict[str, Any] | None = None,
        must_persist: bool = True,
    ) -> ModelPolicy:
        policy = self._require(name)
        if policy.candidate is None:
            raise PolicyError(f"{name}: there is no candidate to roll back")
        return await self.change(
            name, "rollback", policy.model_copy(update={"stage": "rolled_back"}), actor, reason, readings, must_persist
        )

    async def promote(self, name: str, actor: str, reason: str | None) -> ModelPolicy:
        policy = self._require(name)
        if policy.candidate is None:
            raise PolicyError(f"{name}: there is no candidate to promote")
        if policy.candidate not in self.served_versions(name):
            raise PolicyError(f"{name}: candidate v{policy.candidate} is not loaded; it cannot take all traffic")
        return await self.change(name, "promote", policy.model_copy(update={"stage": "promoted"}), actor, reason)

    async def replace(self, name: str, policy: ModelPolicy, actor: str, reason: str | None) -> ModelPolicy:
        return await self.change(name, "replace", policy, actor, reason)

    def _require(self, name: str) -> ModelPolicy:
        policy = self.policies.get(name)
        if policy is None:
            raise LookupError(f"model {name!r} has no rollout policy")
        return policy

    # -- the effective policies ----------------------------------------------------------

    def _apply(self) -> None:
        policies, sources = {}, {}
        in_file = self.file.policies.models
        for name in sorted(set(in_file) | set(self.decisions)):
            decision = self.decisions.get(name)
            if decision is not None and decision.file_fingerprint == self.file.fingerprint(name):
                policies[name], sources[name] = decision.policy, "store"
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
                await self.rollback(
                    name,
                    f"guardrails ({self.replica})",
                    f"{verdict.reason}: {verdict.message}",
                    _json_safe(verdict.readings),
                    must_persist=False,
                )

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
        self.metrics.store_up.set(1 if self.store.healthy else 0)
        if self.store.last_ok_at is not None:
            self.metrics.store_age.set(max(0.0, time.time() - self.store.last_ok_at))

    def store_status(self) -> dict[str, Any]:
        described = self.store.describe()
        described["pending_writes"] = len(self._pending)
        described["last_ok_at"] = iso(described["last_ok_at"])
        if not self.store.healthy:
            described["detail"] = "state store unreachable: routing on the last known rollout state"
        return described


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
