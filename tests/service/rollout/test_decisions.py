"""The rollout's tables: revisioned decisions (compare-and-swap), every attempt audited, retention; SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundle.store import Store, open_store
from service.rollout.decisions import (
    APPLIED,
    CONFLICT,
    MIGRATIONS,
    Change,
    DecisionStore,
    StaleRevision,
)
from service.rollout.policy import ModelPolicy

CANARY = ModelPolicy.model_validate(
    {"stable": 1, "candidate": 2, "stage": "canary", "start": "2020-01-01T00:00:00Z", "steps": [{"regions": {"*": 50}}]}
)
ROLLED_BACK = CANARY.model_copy(update={"stage": "rolled_back"})


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    made = open_store(url, tmp_path / "state.sqlite")
    yield made
    made.close()


@pytest.fixture
def decisions(store: Store) -> DecisionStore:
    made = DecisionStore(store)
    made.migrate()
    return made


def change(policy: ModelPolicy, based_on: int, actor: str = "admin (test)", at: float = 1000.0) -> Change:
    return Change("digits", at, actor, "replace", None, policy, "why", None, "fp", based_on=based_on)


def test_a_write_based_on_the_stored_revision_lands_and_moves_it_on(decisions: DecisionStore) -> None:
    assert decisions.write(change(CANARY, based_on=0)) == 1
    assert decisions.write(change(ROLLED_BACK, based_on=1)) == 2
    stored = decisions.read_all().decisions["digits"]
    assert (stored.revision, stored.policy.stage) == (2, "rolled_back")
    assert [(e["outcome"], e["revision"], e["based_on"]) for e in decisions.history("digits", 10)] == [
        (APPLIED, 2, 1),
        (APPLIED, 1, 0),
    ]


@pytest.mark.parametrize("based_on", [0, 1, 5])
def test_a_write_based_on_any_other_revision_loses_and_writes_nothing(decisions: DecisionStore, based_on: int) -> None:
    decisions.write(change(CANARY, based_on=0))
    decisions.write(change(CANARY, based_on=1))  # another replica moved it on to revision 2
    with pytest.raises(StaleRevision) as lost:
        decisions.write(change(ROLLED_BACK, based_on=based_on))
    assert (lost.value.based_on, lost.value.current) == (based_on, 2)
    assert decisions.read_all().decisions["digits"].policy.stage == "canary"
    assert len(decisions.history("digits", 10)) == 2  # nor an audit entry: the caller records the lost attempt


def test_a_lost_attempt_is_recorded_with_its_outcome_and_the_revision_it_met(decisions: DecisionStore) -> None:
    decisions.write(change(CANARY, based_on=0))
    decisions.record(change(ROLLED_BACK, based_on=0, actor="admin (late)"), CONFLICT, revision=1)
    entry = decisions.history("digits", 1)[0]
    assert (entry["outcome"], entry["revision"], entry["based_on"], entry["actor"]) == (CONFLICT, 1, 0, "admin (late)")
    assert [e["outcome"] for e in decisions.history("digits", 10, applied_only=True)] == [APPLIED]


def test_of_writers_racing_from_one_revision_exactly_one_wins(decisions: DecisionStore) -> None:
    decisions.write(change(CANARY, based_on=0))
    outcomes: list[str] = []

    def write(i: int) -> None:
        try:
            decisions.write(change(ROLLED_BACK, based_on=1, actor=f"admin ({i})"))
            outcomes.append("won")
        except StaleRevision:
            outcomes.append("lost")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost"] * 5 + ["won"]
    assert decisions.read_all().decisions["digits"].revision == 2


def test_a_stored_row_that_no_longer_validates_is_returned_apart_with_its_revision(
    decisions: DecisionStore, store: Store
) -> None:
    """What the old code stored for a PUT with a non-ASCII sticky key (it answered 500 after writing)."""
    bad = CANARY.model_dump_json().replace('"X-Request-Key"', '"X-Ünicode"')
    store.execute(
        "INSERT INTO rollout_state (model, policy, file_fingerprint, revision, updated_at, updated_by, reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        ("digits", bad, "fp", 4, 1000.0, "admin", None),
    )
    state = decisions.read_all()
    assert state.decisions == {}
    refused = state.refused["digits"]
    assert (refused.revision, refused.stable, refused.file_fingerprint) == (4, 1, "fp")
    assert refused.error.startswith("policy.sticky_key: 'X-Ünicode' is not an HTTP header name")
    assert decisions.write(change(CANARY, based_on=4)) == 5  # an admin replaces it on its revision


def test_an_audit_trail_from_before_the_outcome_column_reads_as_applied(tmp_path: Path) -> None:
    store = open_store("", tmp_path / "old.sqlite")
    store.migrate(MIGRATIONS[:1])  # a database the previous release made
    store.execute(
        "INSERT INTO rollout_audit (model, at, actor, action, reason) VALUES (?, ?, ?, ?, ?)",
        ("digits", 1000.0, "admin (old)", "rollback", "from before"),
    )
    decisions = DecisionStore(store)
    decisions.migrate()
    (entry,) = decisions.history("digits", 10)
    assert (entry["action"], entry["outcome"], entry["revision"]) == ("rollback", APPLIED, None)


def test_entries_older_than_the_retention_are_pruned(decisions: DecisionStore) -> None:
    now = time.time()
    for age_days in (400, 366, 364, 1):
        decisions.record(change(CANARY, based_on=0, at=now - age_days * 86_400))
    assert decisions.prune(older_than=now - 365 * 86_400) == 2
    assert len(decisions.history("digits", 10)) == 2
