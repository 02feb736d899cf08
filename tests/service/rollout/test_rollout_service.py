"""Rollouts in the running service: routing, the clock, shadow, guardrails, admin, reloads, restarts."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from service.rollout.policy import parse_policy_text
from service.rollout.routing import choose_version
from tests.bundle_factory import _handmade_image_bundle
from tests.conftest import gradient_image, install_bundle, metric_value, post_bytes, service_settings

TOKEN = "s3cret-admin-token"
FAST = dict(rollout_tick_s=0.05, rollout_poll_s=0.2, admin_token=TOKEN)
PAST = "2020-01-01T00:00:00Z"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def arms_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits v1 (stable); v2 answers exactly like v1; v3 disagrees (labels reversed); v4 is slow; v5 fails on every real image."""
    import torch

    torch.set_num_threads(1)
    lib = tmp_path_factory.mktemp("arms")
    _handmade_image_bundle(lib, "digits", 1, seed=1)
    _handmade_image_bundle(lib, "digits", 2, seed=1)
    # the same network exported with its class list reversed: every label differs (an export gone wrong)
    _handmade_image_bundle(lib, "digits", 3, seed=1, classes=[str(9 - i) for i in range(10)])
    _handmade_image_bundle(lib, "digits", 4, seed=1, slow_steps=400)
    _handmade_image_bundle(lib, "digits", 5, seed=1, fails_on_real_input=True)
    return lib


@pytest.fixture
def arms_repo(arms_library: Path, tmp_path: Path) -> Callable[..., Path]:
    def make(*versions: int) -> Path:
        repo = tmp_path / "models"
        for v in versions:
            install_bundle(arms_library, repo, "digits", v)
        return repo

    return make


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextmanager
def serve(models: Path, clock: Callable[[], float] | None = None, **overrides: Any) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from service.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = TestClient(create_app(service_settings(models, **{**FAST, **overrides}), clock=clock))
    with client:
        yield client


def write_policy(path: Path, text: str) -> Path:
    """Write the file and move its mtime on, so a reload notices even within one clock tick."""
    existed = path.exists()
    path.write_text(text)
    if existed:
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    return path


def canary(candidate: int, regions: str = '{"*": 50}', guardrails: str = "{}", stage: str = "canary") -> str:
    return f"""
models:
  digits:
    stable: 1
    candidate: {candidate}
    stage: {stage}
    shadow: {{percent: 100}}
    steps:
      - {{regions: {regions}}}
    start: {PAST}
    guardrails: {guardrails}
"""


def predict(client: Any, key: str, region: str | None = None, seed: int = 0, **headers: str) -> Any:
    extra = {"x_request_key": key, **({"x_region": region} if region else {}), **headers}
    return post_bytes(client, "/v1/models/digits/predict", gradient_image(seed), **extra)


def rollout_of(client: Any) -> dict[str, Any]:
    return client.get("/v1/rollouts").json()["models"]["digits"]


def wait_for(check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


# -- routing ------------------------------------------------------------------------------------


def test_two_app_instances_route_20000_keys_identically(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    policy_file = write_policy(tmp_path / "rollout.yaml", canary(2, '{"eu": 30, "us": 70, "*": 5}'))
    text_policy = parse_policy_text(policy_file.read_text()).models["digits"]
    with (
        serve(repo, rollout=policy_file, state_path=tmp_path / "a.sqlite") as a,
        serve(repo, rollout=policy_file, state_path=tmp_path / "b.sqlite") as b,
    ):
        regions = ["eu", "us", "asia", None]
        routed_a = [
            a.app.state.components.router.route("digits", f"k{i}", regions[i % 4]).version for i in range(20_000)
        ]
        routed_b = [
            b.app.state.components.router.route("digits", f"k{i}", regions[i % 4]).version for i in range(20_000)
        ]
        assert routed_a == routed_b
        now = time.time()
        assert routed_a == [choose_version("digits", text_policy, f"k{i}", regions[i % 4], now) for i in range(20_000)]
        for region, share in (("eu", 30), ("us", 70), ("asia", 5)):
            picked = [v for i, v in enumerate(routed_a) if regions[i % 4] == region]
            assert abs(sum(v == 2 for v in picked) / len(picked) * 100 - share) <= 2, region
        # over HTTP too: the same key gets the same version from either instance, in X-Model-Version
        for i in range(40):
            ra, rb = predict(a, f"user-{i}", "eu"), predict(b, f"user-{i}", "eu")
            assert ra.status_code == rb.status_code == 200
            assert ra.headers["X-Model-Version"] == rb.headers["X-Model-Version"] == str(ra.json()["version"])
            assert int(ra.headers["X-Model-Version"]) == choose_version("digits", text_policy, f"user-{i}", "eu", now)


def test_pinned_versions_bypass_routing(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    policy_file = write_policy(tmp_path / "rollout.yaml", canary(2, '{"*": 100}'))
    with serve(repo, rollout=policy_file) as client:
        assert predict(client, "k").headers["X-Model-Version"] == "2"
        pinned = post_bytes(client, "/v1/models/digits/versions/1/predict", gradient_image(0))
        assert pinned.headers["X-Model-Version"] == "1"


def test_the_plan_walks_by_an_injected_clock(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    text = """
models:
  digits:
    stable: 1
    candidate: 2
    stage: canary
    steps:
      - {regions: {campsite-1: 100}, hold: 1d}
      - {regions: {campsite-1: 100, campsite-2: 100}, hold: 7d}
      - {regions: {"*": 100}}
    start: 2026-12-01T08:00:00Z
    end: 2027-06-01T00:00:00Z
"""
    policy_file = write_policy(tmp_path / "rollout.yaml", text)
    start = parse_policy_text(text).models["digits"].start.timestamp()  # type: ignore[union-attr]
    clock = Clock(start - 60)
    with serve(repo, clock, rollout=policy_file, regions=["campsite-1", "campsite-2"]) as client:
        version = lambda region: predict(client, "cam-1", region).headers["X-Model-Version"]  # noqa: E731
        assert (version("campsite-1"), rollout_of(client)["step"]["phase"]) == ("1", "not_started")
        clock.now = start + 3600
        state = rollout_of(client)
        assert (state["step"]["index"], state["step"]["next_at"]) == (0, "2026-12-02T08:00:00Z")
        assert state["shares"] == {"campsite-1": 1.0, "campsite-2": 0.0, "*": 0.0}
        assert (version("campsite-1"), version("campsite-2")) == ("2", "1")
        clock.now = start + 2 * 86_400
        assert (version("campsite-2"), version("marin")) == ("2", "1")
        clock.now = start + 30 * 86_400
        assert version("marin") == "2" and rollout_of(client)["step"]["phase"] == "last_step"
        clock.now = start + 400 * 86_400  # after the end
        assert version("campsite-1") == "1" and rollout_of(client)["step"]["phase"] == "ended"
        model = client.get("/v1/models/digits").json()
        assert model["rollout"]["stage"] == "canary" and model["rollout"]["candidate"] == 2
        metrics = client.get("/metrics").text
        wait_for(
            lambda: (
                metric_value(
                    client.get("/metrics").text, "serving_rollout_candidate_share", model="digits", region="campsite-1"
                )
                == 0.0
            )
        )
        assert metric_value(metrics, "serving_rollout_stage", model="digits", stage="canary") == 1


def test_a_policy_naming_a_version_not_loaded_is_reported_and_stable_serves(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    policy_file = write_policy(tmp_path / "rollout.yaml", canary(9, '{"*": 100}'))
    with serve(repo, rollout=policy_file) as client:
        assert {predict(client, f"k{i}").headers["X-Model-Version"] for i in range(10)} == {"1"}
        assert rollout_of(client)["problems"] == ["candidate version 9 is not loaded"]


# -- shadow -------------------------------------------------------------------------------------


def test_shadow_leaves_the_response_byte_identical_to_stable_only(
    arms_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = arms_repo(1, 3)
    shadow_file = write_policy(tmp_path / "shadow.yaml", canary(3, stage="shadow"))
    off_file = write_policy(tmp_path / "off.yaml", canary(3, stage="off"))
    with (
        serve(repo, rollout=shadow_file, state_path=tmp_path / "s.sqlite") as shadowing,
        serve(repo, rollout=off_file, state_path=tmp_path / "o.sqlite") as stable_only,
    ):
        for i in range(20):
            headers = {"x_request_id": f"req-{i}"}
            a, b = predict(shadowing, f"u{i}", seed=i, **headers), predict(stable_only, f"u{i}", seed=i, **headers)
            assert a.status_code == b.status_code == 200
            # byte-identical but for the id each service made for its request (the one feedback names)
            assert a.content.replace(a.json()["request_id"].encode(), b"") == b.content.replace(
                b.json()["request_id"].encode(), b""
            )
            assert a.headers["X-Model-Version"] == b.headers["X-Model-Version"] == "1"
        compared = wait_for(
            lambda: (
                metric_value(
                    shadowing.get("/metrics").text, "serving_shadow_comparisons_total", model="digits", version="3"
                )
                >= 20
            )
        )
        assert compared
        readings = wait_for(
            lambda: (r := rollout_of(shadowing)["guardrails"]["readings"])["candidate"]["compared"] == 20 and r
        )
        assert readings["stable"]["requests"] == 20 and readings["candidate"]["requests"] == 20


@pytest.mark.parametrize(
    ("percent", "limit"),
    [(100, {"shadow_max_in_flight": 0}), (90, {"shadow_max_share": 0.0})],
    ids=["saturated candidate", "time budget of a partial share"],
)
def test_shadow_is_shed_first_when_the_cap_or_the_time_budget_is_reached(
    arms_repo: Callable[..., Path], tmp_path: Path, percent: int, limit: dict[str, Any]
) -> None:
    repo = arms_repo(1, 3)
    policy = canary(3, stage="shadow").replace("percent: 100", f"percent: {percent}")
    shadow_file = write_policy(tmp_path / "shadow.yaml", policy)
    with serve(repo, rollout=shadow_file, **limit) as client:
        assert all(predict(client, f"u{i}").status_code == 200 for i in range(5))  # every key in a 90 % share
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "serving_shadow_shed_total", model="digits") == 5
        assert metric_value(metrics, "serving_shadow_comparisons_total") == 0
        # the readings say so too, beside what was compared
        readings = wait_for(lambda: rollout_of(client)["guardrails"]["readings"].get("candidate"))
        assert (readings["shadow_shed"], readings["compared"]) == (5, 0)


def test_a_full_shadow_runs_every_copy_whatever_the_time_budget(arms_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = arms_repo(1, 2)
    shadow_file = write_policy(tmp_path / "shadow.yaml", canary(2, stage="shadow"))  # percent: 100
    with serve(repo, rollout=shadow_file, shadow_max_share=0.0) as client:
        for i in range(40):
            assert predict(client, f"u{i}", seed=i).status_code == 200
        readings = wait_for(
            lambda: (r := rollout_of(client)["guardrails"]["readings"]["candidate"])["compared"] == 40 and r
        )

    assert readings["shadow_shed"] == 0


def test_the_shadow_budget_takes_copies_until_its_share_of_the_window_is_spent() -> None:
    from service.inference.shadow import ShadowBudget

    budget = ShadowBudget(share=0.5, window_s=1.0)  # half a second of shadow work per second
    budget.ran(copies=2, seconds=0.25)  # 125 ms a copy
    assert sum(budget.take(now=0.5) for _ in range(50)) == 4  # the fifth copy finds the 500 ms spent
    assert budget.take(now=1.6)  # a new window
    budget.ran(copies=1, seconds=1.0)  # copies got dearer: the moving average follows (0.8 * 0.125 + 0.2 * 1)
    assert budget.cost_per_copy == pytest.approx(0.3)
    assert sum(budget.take(now=1.7) for _ in range(50)) == 2  # 0.125 spent: 0.425, 0.725, then no more
    # the window overran (0.725 s): its excess is carried, so the next one has room for one copy, not two
    assert sum(budget.take(now=2.7) for _ in range(50)) == 1


# -- guardrails ---------------------------------------------------------------------------------


def drive_until_rolled_back(client: Any, min_requests: int, limit: int = 400) -> int:
    """Send requests until the candidate is rolled back; checks it is still on before both arms have enough."""
    for i in range(limit):
        response = predict(client, f"user-{i}", seed=i)
        assert response.status_code in (200, 500)
        state = rollout_of(client)
        if state["stage"] == "rolled_back":  # the readings it was judged on are in the audit trail
            return i + 1
        readings = state["guardrails"]["readings"]
        arms = (readings.get("stable", {}).get("requests", 0), readings.get("candidate", {}).get("requests", 0))
        if min(arms) < min_requests:
            assert state["guardrails"]["status"] == "waiting_for_data", state["guardrails"]
            assert state["guardrails"]["message"].startswith("waiting for data")
    raise AssertionError(f"never rolled back in {limit} requests: {rollout_of(client)['guardrails']}")


def assert_rolled_back(client: Any, reason: str) -> None:
    state = wait_for(lambda: (s := rollout_of(client))["source"] == "store" and s)  # written by the background task
    assert state["stage"] == "rolled_back" and state["source"] == "store"
    assert state["last_decisions"][0]["action"] == "rollback"
    assert state["last_decisions"][0]["reason"].startswith(reason)
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "serving_rollbacks_total", model="digits", reason=reason) == 1
    assert metric_value(metrics, "serving_rollout_stage", model="digits", stage="rolled_back") == 1
    history = client.get("/v1/rollouts/digits/history").json()["history"]
    assert history[0]["action"] == "rollback" and history[0]["actor"].startswith("guardrails")
    assert history[0]["readings"]["candidate"]["requests"] >= history[0]["readings"]["min_requests"]
    assert history[0]["before"]["stage"] != "rolled_back" and history[0]["after"]["stage"] == "rolled_back"
    # and from now on stable answers everyone
    assert {predict(client, f"after-{i}").headers["X-Model-Version"] for i in range(10)} == {"1"}


def test_a_candidate_that_errors_is_rolled_back(arms_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = arms_repo(1, 5)
    policy_file = write_policy(
        tmp_path / "rollout.yaml", canary(5, '{"*": 50}', "{min_requests: 15, max_error_rate: 0.05}")
    )
    with serve(repo, rollout=policy_file) as client:
        drive_until_rolled_back(client, 15)
        assert_rolled_back(client, "error_rate")


def test_a_rolled_back_rollout_shows_its_end_the_decision_and_the_readings_it_was_made_on(
    arms_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = arms_repo(1, 5)
    policy_file = write_policy(
        tmp_path / "rollout.yaml", canary(5, '{"*": 50}', "{min_requests: 15, max_error_rate: 0.05}")
    )
    with serve(repo, rollout=policy_file) as client:
        drive_until_rolled_back(client, 15)
        state = wait_for(lambda: (s := rollout_of(client))["source"] == "store" and s)

    assert state["step"]["phase"] == "final" and state["step"]["index"] is None and state["step"]["next_at"] is None
    final = state["final"]
    assert (final["stage"], final["action"], final["actor"]) == ("rolled_back", "rollback", "guardrails")
    assert final["reason"].startswith("error_rate")
    guardrails = state["guardrails"]
    assert guardrails["status"] == "decided" and guardrails["breach"] == "error_rate"
    assert guardrails["readings"]["candidate"]["error_rate"] > 0.05  # what the decision saw, not "waiting for data"


def test_a_promoted_rollout_keeps_the_readings_the_admin_promoted_on(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    policy_file = write_policy(tmp_path / "rollout.yaml", canary(2, '{"*": 50}', "{min_requests: 5}"))
    with serve(repo, rollout=policy_file) as client:
        for i in range(30):
            predict(client, f"user-{i}", seed=i)
        wait_for(lambda: rollout_of(client)["guardrails"]["status"] == "ok")
        assert (
            client.post("/v1/rollouts/digits/promote", json={"reason": "looks good"}, headers=ADMIN).status_code == 200
        )
        state = rollout_of(client)

    assert state["stage"] == "promoted" and state["step"]["phase"] == "final"
    assert (state["final"]["action"], state["final"]["reason"]) == ("promote", "looks good")
    assert state["guardrails"]["readings"]["candidate"]["requests"] >= 5


def test_a_candidate_that_is_slow_is_rolled_back(arms_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = arms_repo(1, 4)
    # v4 takes 20-50 ms a run (35 ms on CI), stable about 1.5 ms: a limit of 10 ms sits far from both
    policy_file = write_policy(tmp_path / "rollout.yaml", canary(4, '{"*": 50}', "{min_requests: 8, max_p99_ms: 10}"))
    with serve(repo, rollout=policy_file) as client:
        drive_until_rolled_back(client, 8)
        assert_rolled_back(client, "p99_latency")


def test_a_candidate_that_disagrees_in_shadow_is_rolled_back(arms_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = arms_repo(1, 3)
    policy_file = write_policy(
        tmp_path / "rollout.yaml", canary(3, guardrails="{min_requests: 15, max_disagreement: 0.2}", stage="shadow")
    )
    with serve(repo, rollout=policy_file) as client:
        drive_until_rolled_back(client, 15)
        assert_rolled_back(client, "disagreement")


def test_the_live_accuracy_guardrail_waits_for_enough_feedback_then_rolls_back(
    arms_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = arms_repo(1, 2)
    policy_file = write_policy(
        tmp_path / "rollout.yaml", canary(2, '{"*": 50}', "{min_requests: 10, min_live_accuracy: 0.5}")
    )
    log = tmp_path / "predictions.sqlite"
    with serve(repo, rollout=policy_file, prediction_log=True, prediction_log_path=log, feedback_token="fb") as client:
        answers = [predict(client, f"user-{i}", seed=i) for i in range(60)]
        on_candidate = [a.json() for a in answers if a.headers["X-Model-Version"] == "2"]
        assert len(on_candidate) >= 12 and len(answers) - len(on_candidate) >= 12
        wait_for(lambda: rollout_of(client)["guardrails"]["status"] == "ok")  # both arms have their requests
        for count, answer in enumerate(on_candidate[:12], start=1):
            wrong = str((int(answer["predictions"][0]["label"]) + 1) % 10)
            reply = client.post(
                "/v1/feedback",
                json={"request_id": answer["request_id"], "label": wrong},
                headers={"Authorization": "Bearer fb"},
            )
            assert reply.status_code == 200 and reply.json()["counted"] is True
            if count < 10:  # accuracy 0 over fewer answers than min_requests is not judged yet
                time.sleep(0.05)
                assert rollout_of(client)["stage"] == "canary", rollout_of(client)["guardrails"]
        wait_for(lambda: rollout_of(client)["stage"] == "rolled_back")
        assert_rolled_back(client, "live_accuracy")


def test_a_candidate_that_agrees_keeps_its_stage(arms_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = arms_repo(1, 2)
    policy_file = write_policy(
        tmp_path / "rollout.yaml",
        canary(2, guardrails="{min_requests: 10, max_disagreement: 0.2, max_error_rate: 0.05}", stage="shadow"),
    )
    with serve(repo, rollout=policy_file) as client:
        for i in range(15):
            assert predict(client, f"user-{i}", seed=i).status_code == 200
        state = wait_for(lambda: (s := rollout_of(client))["guardrails"]["status"] == "ok" and s)
        assert state["stage"] == "shadow"
        assert state["guardrails"]["readings"]["candidate"]["disagreement"] == 0.0


# -- admin ---------------------------------------------------------------------------------------


def test_admin_endpoints_need_the_token(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    policy_file = write_policy(tmp_path / "rollout.yaml", canary(2, '{"*": 100}'))
    with serve(repo, rollout=policy_file, admin_token=None, state_path=tmp_path / "none.sqlite") as client:
        refused = client.post("/v1/rollouts/digits/rollback", headers=ADMIN)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    with serve(repo, rollout=policy_file) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            wrong = client.post("/v1/rollouts/digits/rollback", headers=headers)
            assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
        assert rollout_of(client)["stage"] == "canary"
        done = client.post("/v1/rollouts/digits/rollback", headers=ADMIN, json={"reason": "bears look odd"})
        assert done.status_code == 200 and done.json()["stage"] == "rolled_back"
        assert predict(client, "k").headers["X-Model-Version"] == "1"
        promoted = client.post("/v1/rollouts/digits/promote", headers=ADMIN, json={"reason": "all good"})
        assert promoted.status_code == 200 and promoted.json()["stage"] == "promoted"
        assert predict(client, "k", "anywhere").headers["X-Model-Version"] == "2"
        history = client.get("/v1/rollouts/digits/history").json()["history"]
        assert [(h["action"], h["reason"]) for h in history[:2]] == [
            ("promote", "all good"),
            ("rollback", "bears look odd"),
        ]
        assert history[0]["actor"].startswith("admin")
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "serving_rollbacks_total", model="digits", reason="manual") == 1


def test_put_replaces_the_policy_and_names_bad_fields(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    policy_file = write_policy(tmp_path / "rollout.yaml", canary(2, '{"*": 0}'))
    with serve(repo, rollout=policy_file) as client:
        bad = client.put(
            "/v1/rollouts/digits",
            headers=ADMIN,
            json={
                "stable": 1,
                "candidate": 2,
                "stage": "canary",
                "start": PAST,
                "steps": [{"regions": {"eu": 100}, "hold": "soon"}, {"regions": {"*": 1}}],
            },
        )
        assert bad.status_code == 422
        assert bad.json()["error"]["message"].startswith("models.digits.steps[0].hold: a duration")
        new = {
            "stable": 1,
            "candidate": 2,
            "stage": "canary",
            "start": PAST,
            "steps": [{"regions": {"eu": 100}}],
            "reason": "open eu",
        }
        done = client.put("/v1/rollouts/digits", headers=ADMIN, json=new)
        assert done.status_code == 200 and done.json()["shares"] == {"eu": 1.0}
        assert predict(client, "k", "eu").headers["X-Model-Version"] == "2"
        assert client.get("/v1/rollouts/digits/history").json()["history"][0]["action"] == "replace"


# -- the policy file and the state --------------------------------------------------------------


def test_a_bad_policy_edit_keeps_the_previous_policy(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    policy_file = write_policy(tmp_path / "rollout.yaml", canary(2, '{"eu": 100}'))
    with serve(repo, rollout=policy_file) as client:
        assert predict(client, "k", "eu").headers["X-Model-Version"] == "2"
        write_policy(policy_file, canary(2, '{"eu": 100}').replace("start: ", "start: yesterday-ish ") + "\n")
        listing = wait_for(lambda: (r := client.get("/v1/rollouts", headers=ADMIN).json())["policy_error"] and r)
        assert "models.digits.start" in listing["policy_error"]
        assert listing["models"]["digits"]["shares"] == {"eu": 1.0}
        assert predict(client, "k", "eu").headers["X-Model-Version"] == "2"
        assert metric_value(client.get("/metrics").text, "serving_rollout_policy_errors_total") == 1
        write_policy(policy_file, canary(2, '{"eu": 0}'))  # a good edit applies
        wait_for(
            lambda: (
                (r := client.get("/v1/rollouts").json())["policy_error"] is None
                and r["models"]["digits"]["shares"] == {"eu": 0.0}
            )
        )
        assert predict(client, "k", "eu").headers["X-Model-Version"] == "1"


def test_a_policy_file_caught_half_written_is_never_applied(tmp_path: Path) -> None:
    """An edit is read once the file has stayed put for one tick: a truncated file seen between an editor's
    truncate and its write does not drop the model's policy for a tick."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from bundle.store import open_store
    from service.rollout.manager import RolloutManager
    from service.rollout.metrics import RolloutMetrics

    policy_file = write_policy(tmp_path / "rollout.yaml", canary(2, '{"eu": 100}'))
    settings = service_settings(tmp_path, rollout=policy_file)
    store = open_store("", settings.sqlite_state_path())
    manager = RolloutManager(settings, RolloutMetrics(CollectorRegistry()), store, lambda name: {1, 2})

    async def ticks() -> list[str]:
        await manager.start()
        seen = []
        try:
            write_policy(policy_file, "")  # truncated, as a non-atomic save leaves it for a moment
            await manager.tick()
            seen.append(manager.policies["digits"].steps[0].regions["eu"])
            write_policy(policy_file, canary(2, '{"eu": 10}'))  # the save completes before the next tick
            for _ in range(3):
                await manager.tick()
                seen.append(manager.policies["digits"].steps[0].regions["eu"])
        finally:
            await manager.stop()
        return seen

    assert asyncio.run(ticks()) == [100, 100, 10, 10]  # the edit applies once it has settled for a tick
    assert manager.file.error is None


def test_a_rollback_survives_a_restart(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    policy_file = write_policy(tmp_path / "rollout.yaml", canary(2, '{"*": 100}'))
    with serve(repo, rollout=policy_file) as client:
        assert client.post("/v1/rollouts/digits/rollback", headers=ADMIN).status_code == 200
    assert (tmp_path / "rollout.yaml.state.sqlite").exists()
    with serve(repo, rollout=policy_file) as client:
        assert rollout_of(client)["stage"] == "rolled_back"
        assert predict(client, "k").headers["X-Model-Version"] == "1"
    # editing the model's entry in the file starts a new plan
    write_policy(policy_file, canary(2, '{"*": 100}').replace("stable: 1", "stable: 1\n    sticky_key: X-User"))
    with serve(repo, rollout=policy_file) as client:
        assert rollout_of(client)["stage"] == "canary" and rollout_of(client)["source"] == "file"


def test_open_inference_protocol_requests_obey_the_rollout_and_pinned_ones_bypass_it(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    import numpy as np

    repo = make_repo(("digits", 1), ("digits", 2))
    policy_file = write_policy(tmp_path / "rollout.yaml", canary(2, '{"campsite-1": 100}'))
    pixels = np.zeros((1, 3, 16, 16), dtype=np.uint8)
    body = {
        "inputs": [
            {"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}
        ]
    }
    with serve(repo, rollout=policy_file, state_path=tmp_path / "state.sqlite") as client:
        at_campsite = client.post("/v2/models/digits/infer", json=body, headers={"X-Region": "campsite-1"})
        elsewhere = client.post("/v2/models/digits/infer", json=body, headers={"X-Region": "marin"})
        pinned = client.post("/v2/models/digits/versions/1/infer", json=body, headers={"X-Region": "campsite-1"})
        assert at_campsite.status_code == elsewhere.status_code == pinned.status_code == 200, at_campsite.text
        assert at_campsite.headers["X-Model-Version"] == "2"
        assert elsewhere.headers["X-Model-Version"] == "1"
        assert pinned.headers["X-Model-Version"] == "1"
