"""The live rollout: routing on every model's effective policy, the guardrails, and the decisions made on it.

The effective policies (the policy file with the state store's decisions over
it) are kept by :class:`service.rollout.sync.SyncedPolicies`; here they route
requests, feed the guardrails their readings, and change: an admin's verbs
(replace, shadow, advance, promote, rollback) and the automatic ones (a
guardrail's rollback, a shadow stage that advances by itself, and a new
version held or shadowed as ``SERVING_NEW_VERSIONS`` says, see
:mod:`service.rollout.new_versions`).

Nothing on the request path or in the tick waits for the store: routing and
``GET /v1/rollouts`` read the in-memory state.

Guardrail readings are this replica's own observations (see
``service.rollout.guardrails``): each replica judges what it serves, and a breach
anywhere rolls the candidate back everywhere through the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from bundle.store import Store, StoreUnavailable
from service.rollout.guardrails import ArmObservations, ArmWindow, ReadingSource, Verdict
from service.rollout.metrics import RolloutMetrics
from service.rollout.new_versions import on_arrival
from service.rollout.policy import NEW_VERSIONS_TEMPLATE, SHADOW_ONLY, ModelPolicy, PolicyError, Template
from service.rollout.routing import CompiledRoute, candidate_share, plan_regions
from service.rollout.sync import Clock, RevisionConflict, SyncedPolicies, json_safe
from service.settings import ServiceSettings

__all__ = ["RevisionConflict", "RolloutManager"]

log = logging.getLogger("service.rollout")

LoadedVersions = Callable[[str], Collection[int]]  # a model's loaded version numbers
ModelNames = Callable[[], Collection[str]]  # the models the registry serves


class RolloutManager(SyncedPolicies):
    """Routes on the effective policy of every model; judges the guardrails; makes the rollout's changes."""

    def __init__(
        self,
        settings: ServiceSettings,
        metrics: RolloutMetrics,
        store: Store,
        loaded_versions: LoadedVersions,
        reading_sources: Mapping[str, ReadingSource] | None = None,
        clock: Clock = time.time,
        served_models: ModelNames | None = None,
    ) -> None:
        super().__init__(settings, metrics, store, clock)
        self.served_versions: LoadedVersions = loaded_versions
        self.served_models: ModelNames = served_models or (lambda: ())
        # readings from other components (drift, live accuracy) that the guardrails judge beside their own
        self.reading_sources: dict[str, ReadingSource] = dict(reading_sources or {})
        self._routes: dict[str, CompiledRoute] = {}  # each policy compiled for routing (rebuilt with the policies)
        self._watched: dict[str, dict[int, ArmWindow]] = {}
        self.observations: dict[str, ArmObservations] = {}
        self.verdicts: dict[str, Verdict] = {}
        region_header = settings.region_header.lower().encode("latin-1")
        self.header_names = frozenset({b"content-type", b"content-length", region_header, b"x-request-key"})
        self._sticky: dict[str, bytes] = {}
        self._task: asyncio.Task[None] | None = None

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
        self.new_versions()
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
        """Reload a changed file, start a store poll when due, judge the guardrails, move plans that advance by
        themselves, place new versions, refresh the gauges.

        The poll runs beside the tick: a store that hangs delays neither the guardrails nor the gauges."""
        if await asyncio.to_thread(self._read_file, True):
            self._apply()
        if time.monotonic() - self._last_poll >= self.settings.rollout_poll_s:
            self._sync_soon()
        await self.check_guardrails()
        self.advance_due()
        self.new_versions()
        self._refresh_gauges()

    # -- an admin's changes ------------------------------------------------------------

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

    async def shadow(
        self,
        name: str,
        version: int,
        template: str | None,
        actor: str,
        reason: str | None,
        expected: int | None = None,
    ) -> ModelPolicy:
        """Start ``version`` as the candidate in shadow beside the version serving as stable, under a template's
        plan (the policy file's ``templates:``) or the shadow-only plan."""
        plan = self.template(template)
        loaded = set(self.served_versions(name))
        if version not in loaded:
            raise PolicyError(f"version: {name} v{version} is not loaded; loaded: {sorted(loaded)}")

        def shadowed(policy: ModelPolicy | None) -> ModelPolicy:
            if policy is not None and policy.stage == "canary" and policy.candidate not in (None, version):
                raise PolicyError(
                    f"version: {name} v{policy.candidate} is in canary (answering real traffic); promote it or roll "
                    f"it back before starting v{version}"
                )
            stable = (
                policy.serving
                if policy is not None
                else max(v for v in loaded if v != version)
                if len(loaded) > 1
                else None
            )
            if stable is None:
                raise PolicyError(f"version: {name} has no other loaded version to serve as stable beside v{version}")
            if stable == version:
                raise PolicyError(f"version: {name} v{version} already serves as stable")
            return plan.plan(stable, version, self.clock())

        return await self.change(name, "shadow", shadowed, actor, reason, expected)

    async def advance(self, name: str, actor: str, reason: str | None, expected: int | None = None) -> ModelPolicy:
        """A plan held in shadow moves to its first step now."""

        def advanced(policy: ModelPolicy | None) -> ModelPolicy:
            return _advanced(name, _require(name, policy), self.clock())

        return await self.change(name, "advance", advanced, actor, reason, expected)

    def template(self, name: str | None) -> Template:
        """A template of the policy file by name (None: the shadow-only plan); PolicyError naming the field."""
        if name is None:
            return SHADOW_ONLY
        templates = self.file.policies.templates
        if name not in templates:
            where = f"in {self.file.path}" if self.file.path else "(no rollout file is configured)"
            raise PolicyError(f"template: no template {name!r} {where}; templates: {sorted(templates)}")
        return templates[name]

    # -- the automatic changes ---------------------------------------------------------

    def advance_due(self) -> None:
        """Plans with ``auto_advance`` whose shadow stage is over move to their first step."""
        now = self.clock()
        for name, policy in list(self.policies.items()):
            if policy.stage == "shadow" and policy.auto_advance and policy.start is not None:
                if policy.start.timestamp() <= now and self.sources.get(name) != "pending":
                    after = policy.model_copy(update={"stage": "canary"})
                    log.info(
                        "%s: the shadow stage of v%s is over; the plan's first step begins", name, policy.candidate
                    )
                    self._decide_here(
                        name, "advance", "rollout", policy, after, "auto_advance: the shadow hold is over"
                    )

    def new_versions(self) -> None:
        """Place versions that appeared in the repository as ``SERVING_NEW_VERSIONS`` says (hold, shadow, latest).

        Only once the store was read: what serves must be known before a newer version is judged new."""
        if self.settings.new_versions == "latest" or not self.store_read:
            return
        template = self.file.policies.templates.get(NEW_VERSIONS_TEMPLATE, SHADOW_ONLY)
        for name in sorted(self.served_models()):
            if self.sources.get(name) in ("pending", "refused"):
                continue
            before = self.policies.get(name)
            arrival = on_arrival(self.settings.new_versions, before, self.served_versions(name), template, self.clock())
            if arrival is None:
                continue
            action, after = arrival
            if action == "hold":
                reason = f"v{after.stable} serves as stable; newer versions are held until promoted"
            else:
                reason = f"new version v{after.candidate} runs in shadow beside v{after.stable}"
            log.info("%s: %s", name, reason)
            self._decide_here(name, action, "new versions", before, after, reason)

    def held(self, name: str) -> list[int]:
        """Loaded versions newer than the one serving as stable that take no unpinned traffic (pinned only)."""
        policy = self.policies.get(name)
        if policy is None:
            return []
        running = policy.candidate if policy.stage in ("shadow", "canary", "promoted") else None
        return [v for v in sorted(self.served_versions(name)) if v > policy.serving and v != running]

    def _readings_now(self, name: str) -> dict[str, Any] | None:
        """The guardrails' latest readings of a model's arms, kept with a decision (what it was made on)."""
        verdict = self.verdicts.get(name)
        return json_safe(verdict.readings) if verdict is not None and verdict.readings else None

    def _policies_changed(self) -> None:
        """Compile every policy for routing and point the guardrails' windows at its arms."""
        for name, policy in self.policies.items():
            self.observations.setdefault(name, ArmObservations(name, self.reading_sources)).reset_for(
                policy.stable, policy.candidate
            )
        self._routes = {name: CompiledRoute(name, policy) for name, policy in self.policies.items()}
        self._watched = {  # the windows the guardrails judge, by version, for the models whose candidate runs
            name: {policy.candidate: self.observations[name].candidate, policy.stable: self.observations[name].stable}
            for name, policy in self.policies.items()
            if policy.candidate is not None and policy.stage in ("shadow", "canary")
        }
        self._sticky = {name: p.sticky_key.lower().encode("latin-1") for name, p in self.policies.items()}
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
                self._decide_here(
                    name,
                    "rollback",
                    "guardrails",
                    policy,
                    policy.model_copy(update={"stage": "rolled_back"}),
                    f"{verdict.reason}: {verdict.message}",
                    json_safe(verdict.readings),
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


def _require(name: str, policy: ModelPolicy | None) -> ModelPolicy:
    if policy is None:
        raise LookupError(f"model {name!r} has no rollout policy")
    return policy


def _advanced(name: str, policy: ModelPolicy, now: float) -> ModelPolicy:
    """The plan in shadow moved to its first step at ``now``."""
    if policy.stage != "shadow" or policy.candidate is None:
        raise PolicyError(f"{name}: only a rollout in shadow can advance; this one is {policy.stage}")
    if not policy.steps:
        raise PolicyError(f"{name}: the plan has no steps after the shadow stage; promote v{policy.candidate} instead")
    return policy.model_copy(update={"stage": "canary", "start": datetime.fromtimestamp(now, UTC)})
