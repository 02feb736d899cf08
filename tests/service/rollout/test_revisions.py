"""Replicas writing from stale copies: the store's revision decides, a stale writer loses and re-reads.

Two rollout managers over one state store are two replicas (each with its own
in-memory copy); their background loops are parked (hour-long ticks), so each
test says exactly when a replica reads the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bundle.store import open_store
from service.rollout.decisions import Change
from service.rollout.manager import RevisionConflict, RolloutManager
from service.rollout.metrics import RolloutMetrics
from service.rollout.policy import ModelPolicy
from tests.conftest import service_settings
from tests.service.rollout.test_rollout_service import canary, write_policy

ADMIN = "admin (test)"


def plan(regions: dict[str, float], candidate: int = 2, stage: str = "canary") -> ModelPolicy:
    return ModelPolicy.model_validate(
        {
            "stable": 1,
            "candidate": candidate,
            "stage": stage,
            "start": "2020-01-01T00:00:00Z",
            "steps": [{"regions": regions}],
            "guardrails": {"min_requests": 10, "max_error_rate": 0.05},
        }
    )


@asynccontextmanager
async def replicas(tmp_path: Path, count: int = 2, **settings: Any) -> AsyncIterator[list[RolloutManager]]:
    policy_file = write_policy(tmp_path / "rollout.yaml", canary(2, '{"*": 50}'))
    values = dict(rollout=policy_file, rollout_tick_s=3600.0, rollout_poll_s=3600.0, **settings)
    managers = []
    for _ in range(count):
        config = service_settings(tmp_path, **values)
        store = open_store("", config.sqlite_state_path())
        managers.append(RolloutManager(config, RolloutMetrics(CollectorRegistry()), store, lambda name: {1, 2, 3}))
    for manager in managers:
        await manager.start()
    try:
        yield managers
    finally:
        for manager in managers:
            await manager.stop()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


async def attempts(manager: RolloutManager) -> list[tuple[str, str, int | None, int | None]]:
    """(action, outcome, revision, based_on) of every audit entry, oldest first."""
    entries = await manager.history("digits")
    return [(e["action"], e["outcome"], e["revision"], e["based_on"]) for e in reversed(entries)]


def test_a_rollback_from_a_stale_copy_lands_on_the_newer_plan_instead_of_erasing_it(tmp_path: Path) -> None:
    async def test() -> None:
        async with replicas(tmp_path) as (a, b):
            await a.replace("digits", plan({"campsite-1": 100}), ADMIN, "one campsite")
            assert b.revision("digits") == 0  # b has not read the store since
            rolled_back = await b.rollback("digits", ADMIN, "looks wrong")
            assert rolled_back == plan({"campsite-1": 100}).model_copy(update={"stage": "rolled_back"})
            await a.poll_store()
            assert a.policies["digits"] == b.policies["digits"] == rolled_back
            assert a.revision("digits") == b.revision("digits") == 2
            assert await attempts(a) == [("replace", "applied", 1, 0), ("rollback", "applied", 2, 1)]

    run(test)


def test_a_change_that_no_longer_applies_is_refused_naming_the_current_revision(tmp_path: Path) -> None:
    async def test() -> None:
        async with replicas(tmp_path) as (a, b):
            await a.rollback("digits", ADMIN, "breaks at dusk")
            with pytest.raises(RevisionConflict, match=r"at revision 1 \(rolled_back, stable v1, candidate v2\)"):
                await b.replace("digits", plan({"*": 100}), ADMIN, "open everywhere")  # b still sees the canary
            assert b.policies["digits"].stage == "rolled_back"  # the loser has read the state it lost to
            assert await attempts(a) == [("rollback", "applied", 1, 0), ("replace", "conflict", 1, 0)]

    run(test)


def test_with_if_match_any_move_is_a_conflict_and_a_stale_copy_is_read_again_first(tmp_path: Path) -> None:
    async def test() -> None:
        async with replicas(tmp_path) as (a, b):
            await a.replace("digits", plan({"campsite-1": 100}), ADMIN, "one campsite")
            with pytest.raises(RevisionConflict):
                await b.rollback("digits", ADMIN, "as of revision 0", expected=0)  # it would apply, but 0 is gone
            await a.replace("digits", plan({"campsite-1": 50}), ADMIN, "half a campsite")  # revision 2
            # the admin read revision 2 on another replica; b's copy is older, so b reads before it decides
            done = await b.rollback("digits", ADMIN, "as of revision 2", expected=2)
            assert done.steps[0].regions == {"campsite-1": 50} and b.revision("digits") == 3

    run(test)


def test_an_automatic_rollback_over_a_decision_that_moved_on_is_superseded_and_judged_again(tmp_path: Path) -> None:
    """b's guardrails trip on candidate 2 while an admin on a has already moved the rollout to candidate 3: the
    rollback is not written over that decision; b follows it, and its guardrails start afresh on the new pair."""

    async def test() -> None:
        async with replicas(tmp_path) as (a, b):
            await b.replace("digits", plan({"*": 50}), ADMIN, "with guardrails")  # revision 1, both read it
            await a.poll_store()
            await a.replace("digits", plan({"*": 50}, candidate=3), ADMIN, "a better candidate")  # revision 2
            b.observe("digits", 1, True, 0.01, count=20)
            b.observe("digits", 2, False, 0.01, count=20)  # candidate 2 fails every request on b
            await b.check_guardrails()
            assert b.policies["digits"].stage == "rolled_back" and b.sources["digits"] == "pending"
            await b.poll_store()
            assert b.policies["digits"] == plan({"*": 50}, candidate=3) and b.sources["digits"] == "store"
            assert b.revision("digits") == 2
            trail = await attempts(b)
            assert trail[-1] == ("rollback", "superseded", 2, 1)
            await b.check_guardrails()
            assert b.verdicts["digits"].status == "waiting_for_data"  # candidate 3 has no readings yet

    run(test)


def test_a_change_written_by_another_replica_reaches_this_one_at_its_next_poll(tmp_path: Path) -> None:
    async def test() -> None:
        async with replicas(tmp_path) as (a, b):
            await a.promote("digits", ADMIN, "all good")
            assert b.policies["digits"].stage == "canary"
            await b.poll_store()
            assert (b.policies["digits"].stage, b.revision("digits"), b.sources["digits"]) == ("promoted", 1, "store")

    run(test)


def test_the_audit_trail_is_pruned_past_its_retention_by_the_poll_at_most_hourly(tmp_path: Path) -> None:
    async def test() -> None:
        old = time.time() - 400 * 86_400
        entry = Change("digits", old, ADMIN, "replace", None, None, "ancient", None, "fp", decision=False)
        async with replicas(tmp_path, count=1, audit_retention_days=365) as (a,):
            await asyncio.to_thread(a.decisions_store.record, entry)
        async with replicas(tmp_path, count=1, audit_retention_days=365) as (a,):
            assert await a.history("digits") == []  # pruned by the first poll, at startup
            await asyncio.to_thread(a.decisions_store.record, entry)
            await a.poll_store()
            assert len(await a.history("digits")) == 1  # not again within the hour

    run(test)
