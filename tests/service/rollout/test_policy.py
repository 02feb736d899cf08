"""The rollout policy and its pure routing functions, called with any key, region and time."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundle.durations import parse_duration
from service.rollout.policy import ModelPolicy, PolicyError, parse_policy_text
from service.rollout.routing import CompiledRoute, bucket, candidate_share, choose_version, shadowed, step_at

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "docs" / "rollouts" / "bear-detector.yaml"
START = datetime(2026, 12, 1, 8, tzinfo=UTC).timestamp()
DAY = 86_400.0

CAMPSITES = """
models:
  digits:
    stable: 1
    candidate: 2
    stage: canary
    steps:
      - {regions: {campsite-1: 100}, hold: 1d}
      - {regions: {campsite-1: 100, campsite-2: 100}, hold: 7d}
      - {regions: {marin: 100, campsite-1: 100, campsite-2: 100}, hold: 30d}
      - {regions: {"*": 100}}
    start: 2026-12-01T08:00:00Z
"""


def policy(**changes: object) -> ModelPolicy:
    values = {
        "stable": 1,
        "candidate": 2,
        "stage": "canary",
        "start": "2026-12-01T08:00:00Z",
        "steps": [{"regions": {"eu": 10, "us": 50, "*": 1}}],
    }
    values.update(changes)
    return ModelPolicy.model_validate(values)


def keys(n: int) -> list[str]:
    return [f"user-{i}" for i in range(n)]


# -- the file -----------------------------------------------------------------------------------


def test_a_bad_hold_is_named_by_its_field() -> None:
    text = CAMPSITES.replace("hold: 7d", "hold: 7 fortnights")
    with pytest.raises(PolicyError, match=r"models\.digits\.steps\[1\]\.hold: a duration"):
        parse_policy_text(text)


def test_other_bad_fields_are_named_too() -> None:
    with pytest.raises(PolicyError, match=r"models\.digits\.stage: Input should be 'off'"):
        parse_policy_text(CAMPSITES.replace("stage: canary", "stage: sideways"))
    with pytest.raises(PolicyError, match=r"models\.digits\.steps\[0\]\.regions: .*campsite-1.*between 0 and 100"):
        parse_policy_text(CAMPSITES.replace("{campsite-1: 100}, hold: 1d", "{campsite-1: 150}, hold: 1d"))
    with pytest.raises(PolicyError, match=r"models\.digits\.colour: Extra inputs"):
        parse_policy_text(CAMPSITES + "    colour: red\n")
    with pytest.raises(PolicyError, match=r"models\.digits: .*canary.*needs a start"):
        parse_policy_text(CAMPSITES.replace("    start: 2026-12-01T08:00:00Z\n", ""))
    with pytest.raises(PolicyError, match="not valid YAML"):
        parse_policy_text("models: [unclosed")


def test_durations() -> None:
    assert [parse_duration(d) for d in ("5m", "1d", "7d", "30d", "90s", "2h")] == [
        300,
        DAY,
        7 * DAY,
        30 * DAY,
        90,
        7200,
    ]
    with pytest.raises(ValueError):
        parse_duration("0m")


def test_the_documented_example_is_valid() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "rollout", "check", str(EXAMPLE)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "ok: bears: stable v3, candidate v4, stage canary, 4 steps" in done.stdout


# -- assignment ---------------------------------------------------------------------------------


def test_buckets_are_a_stable_hash_of_model_candidate_and_key() -> None:
    # Fixed values: a different process, machine or Python gives the same bucket (Python's hash would not).
    assert bucket("digits", 2, "user-1") == bucket("digits", 2, "user-1")
    assert 0 <= bucket("digits", 2, "user-1") < 10_000
    assert bucket("bears", 4, "cam-7") == 6001
    assert len({bucket("digits", 2, k) for k in keys(1000)}) > 900
    assert bucket("digits", 3, "user-1") != bucket("digits", 2, "user-1") or bucket("digits", 3, "x") != bucket(
        "digits", 2, "x"
    )


def test_observed_shares_per_region_are_within_two_points_of_the_policy() -> None:
    p = policy()
    now = START + 1
    for region, expected in (("eu", 10), ("us", 50), ("asia", 1), (None, 1)):
        on_candidate = sum(choose_version("digits", p, k, region, now) == 2 for k in keys(20_000))
        assert abs(on_candidate / 20_000 * 100 - expected) <= 2, region


def test_a_region_not_listed_gets_nothing_without_a_star() -> None:
    p = policy(steps=[{"regions": {"eu": 100}}])
    now = START + 1
    assert all(choose_version("digits", p, k, "us", now) == 1 for k in keys(2000))
    assert all(choose_version("digits", p, k, None, now) == 1 for k in keys(2000))
    assert all(choose_version("digits", p, k, "eu", now) == 2 for k in keys(2000))


REGIONS = ["eu", "us", "campsite-1", "*"]
shares = st.sampled_from([0, 0.001, 0.004, 0.005, 1, 33.333, 50, 99.99, 99.996, 100])
steps = st.lists(
    st.fixed_dictionaries(
        {
            "regions": st.dictionaries(st.sampled_from(REGIONS), shares, max_size=3),
            "hold": st.sampled_from(["5m", "1d", "7d"]),
        }
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(
    steps=steps,
    stage=st.sampled_from(["off", "shadow", "canary", "promoted", "rolled_back"]),
    ends=st.booleans(),
    offset=st.floats(-DAY, 40 * DAY),
    region=st.sampled_from([*REGIONS, "asia", None]),
    key=st.one_of(st.none(), st.text(max_size=12)),
    share=shares,
)
def test_the_compiled_route_chooses_and_shadows_what_the_policy_says(
    steps: list[dict], stage: str, ends: bool, offset: float, region: str | None, key: str | None, share: float
) -> None:
    p = policy(steps=steps, stage=stage, end="2026-12-09T08:00:00Z" if ends else None, shadow={"percent": share})
    now = START + offset
    route = CompiledRoute("digits", p)
    assert route.choose(key, region, now) == choose_version("digits", p, key, region, now)
    if key is not None:
        assert route.shadows(key) == shadowed("digits", p, key)


def test_raising_a_share_keeps_every_key_already_on_the_candidate() -> None:
    now = START + 1
    shares = [1, 5, 10, 25, 50, 90, 100]
    previous: set[str] = set()
    for share in shares:
        p = policy(steps=[{"regions": {"eu": share}}])
        current = {k for k in keys(20_000) if choose_version("digits", p, k, "eu", now) == 2}
        assert previous <= current, share
        previous = current
    assert len(previous) == 20_000


def test_shadow_selects_its_own_share_of_keys() -> None:
    p = policy(stage="shadow", shadow={"percent": 30})
    picked = sum(shadowed("digits", p, k) for k in keys(20_000))
    assert abs(picked / 20_000 - 0.30) <= 0.02
    assert not any(shadowed("digits", policy(), k) for k in keys(100))  # canary: no shadow copies
    assert all(choose_version("digits", p, k, "eu", START + 1) == 1 for k in keys(1000))  # stable answers


# -- the plan walks by the clock ----------------------------------------------------------------


def test_step_progression_by_the_clock() -> None:
    p = parse_policy_text(CAMPSITES).models["digits"]
    at = lambda t, region: candidate_share(p, region, t)  # noqa: E731
    # before start: nothing anywhere
    assert step_at(p, START - 1).phase == "not_started" and step_at(p, START - 1).next_at == START
    assert at(START - 1, "campsite-1") == 0
    # step 0: campsite-1 for a day
    assert step_at(p, START).index == 0 and step_at(p, START).next_at == START + DAY
    assert (at(START, "campsite-1"), at(START, "campsite-2"), at(START, "marin")) == (100, 0, 0)
    # step 1: two campsites for a week
    assert step_at(p, START + DAY).index == 1
    assert (at(START + DAY, "campsite-2"), at(START + 8 * DAY - 1, "marin")) == (100, 0)
    # step 2: marin for a month
    assert step_at(p, START + 8 * DAY).index == 2 and at(START + 8 * DAY, "marin") == 100
    assert at(START + 8 * DAY, "sonoma") == 0
    # the last step: everyone, and it stays until someone promotes
    later = START + 38 * DAY
    assert step_at(p, later).index == 3 and step_at(p, later).phase == "last_step" and step_at(p, later).next_at is None
    assert at(later, "sonoma") == 100 and at(later + 365 * DAY, "anywhere") == 100


def test_after_the_end_the_candidate_gets_nothing() -> None:
    p = policy(end="2026-12-03T08:00:00Z", steps=[{"regions": {"*": 100}}])
    assert candidate_share(p, "eu", START + DAY) == 100
    assert step_at(p, START + DAY).next_at == START + 2 * DAY
    assert candidate_share(p, "eu", START + 2 * DAY) == 0 and step_at(p, START + 2 * DAY).phase == "ended"


def test_an_end_inside_a_step_cuts_it_short() -> None:
    campsites = parse_policy_text(CAMPSITES).models["digits"]
    p = campsites.model_copy(update={"end": datetime(2026, 12, 4, 8, tzinfo=UTC)})
    assert step_at(p, START + DAY).index == 1 and step_at(p, START + DAY).next_at == START + 3 * DAY
    assert step_at(p, START + 3 * DAY).phase == "ended"


def test_a_copy_with_another_start_walks_its_own_clock() -> None:
    """The step times are computed once per plan; a copy with a new start must not reuse the old ones."""
    p = parse_policy_text(CAMPSITES).models["digits"]
    assert step_at(p, START + DAY).index == 1
    later = p.model_copy(update={"start": datetime(2026, 12, 2, 8, tzinfo=UTC)})
    assert step_at(later, START + DAY).index == 0 and step_at(later, START + DAY).next_at == START + 2 * DAY
    assert candidate_share(later, "campsite-2", START + DAY) == 0
    assert candidate_share(p, "campsite-2", START + DAY) == 100


def test_stages_other_than_canary_route_by_stage() -> None:
    now = START + 1
    assert choose_version("digits", policy(stage="off"), "k", "eu", now) == 1
    assert choose_version("digits", policy(stage="rolled_back"), "k", "us", now) == 1
    assert choose_version("digits", policy(stage="promoted"), "k", "mars", now) == 2


# -- the CLI ------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", "rollout", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_plan_and_at(tmp_path: Path) -> None:
    plan = run_cli("plan", str(EXAMPLE), "--model", "bears")
    assert plan.returncode == 0, plan.stderr
    assert "step 1: from 2026-12-02T08:00:00Z until 2026-12-09T08:00:00Z (7d): campsite-1 100%, campsite-2 100%" in (
        plan.stdout
    )
    on_day_two = run_cli("at", str(EXAMPLE), "--time", "2026-12-03T00:00:00Z", "--region", "campsite-2", "--key", "c")
    assert on_day_two.returncode == 0 and "v4 (candidate)" in on_day_two.stdout and "step 1" in on_day_two.stdout
    on_day_one = run_cli("at", str(EXAMPLE), "--time", "2026-12-01T09:00:00Z", "--region", "campsite-2", "--key", "c")
    assert "v3 (stable)" in on_day_one.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("hold: 7d", "hold: soon"))
    checked = run_cli("check", str(bad))
    assert checked.returncode == 1 and "models.bears.steps[1].hold" in checked.stderr


def test_cli_check_validates_templates_naming_the_field(tmp_path: Path) -> None:
    checked = run_cli("check", str(EXAMPLE))
    assert checked.returncode == 0, checked.stderr
    assert "ok: template course: shadow 100% for 1d, then campsite-1 100% for 1d" in checked.stdout
    assert "an admin advances it from shadow" in checked.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        EXAMPLE.read_text()
        .replace("auto_advance: false", "auto_advance: true")
        .replace("shadow: {percent: 100, hold: 1d}", "shadow: {percent: 100}")
    )
    refused = run_cli("check", str(bad))
    assert refused.returncode == 1 and "templates.course" in refused.stderr and "auto_advance" in refused.stderr


def test_a_template_plans_shadow_first_and_starts_its_steps_only_with_auto_advance() -> None:
    file = parse_policy_text(EXAMPLE.read_text())
    held = file.templates["course"].plan(stable=3, candidate=5, now=START)
    assert (held.stage, held.start, len(held.steps), held.shadow.percent) == ("shadow", None, 3, 100)
    assert candidate_share(held, "campsite-1", START + 30 * DAY) == 0  # nothing moves until an admin advances
    auto = file.templates["course"].model_copy(update={"auto_advance": True}).plan(stable=3, candidate=5, now=START)
    assert auto.start is not None and auto.start.timestamp() == START + DAY


def test_a_policy_without_auto_advance_keeps_the_fingerprint_it_had() -> None:
    assert policy().fingerprint() == policy(auto_advance=False).fingerprint() != policy(auto_advance=True).fingerprint()


def test_the_steering_cli_reports_an_unreachable_service_with_exit_status_2() -> None:
    unreachable = run_cli("status", "digits", "--url", "http://127.0.0.1:9", "--timeout", "2")
    assert unreachable.returncode == 2 and "cannot reach the service" in unreachable.stderr
