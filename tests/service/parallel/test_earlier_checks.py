"""Earlier checks, run against two worker processes: bad input, rollouts and their guardrails, OIP, pages."""

from __future__ import annotations

import time

import httpx

from tests.conftest import gradient_image
from tests.service.parallel.conftest import ServiceGroup
from tests.service.rollout.test_rollout_service import PAST, TOKEN, arms_library, canary, write_policy

__all__ = ["arms_library"]  # the rollout tests' handmade bundles (v5 fails on every real image)

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
FAST = dict(rollout_tick_s=0.05, rollout_poll_s=0.2, admin_token=TOKEN)


def predict(group: ServiceGroup, key: str, seed: int = 0) -> httpx.Response:
    headers = {"Content-Type": "image/png", "X-Request-Key": key}
    return httpx.post(f"{group.url}/v1/models/digits/predict", content=gradient_image(seed), headers=headers)


def test_bad_input_is_a_4xx_naming_the_problem_in_every_worker(make_repo, service_group):
    group = service_group(make_repo(("digits", 1)))
    for _ in range(6):  # fresh connections: both workers answer
        broken = httpx.post(f"{group.url}/v1/models/digits/predict", content=b"\x89PNG not really", headers={})
        assert 400 <= broken.status_code < 500 and broken.json()["error"]["message"]
        unknown = httpx.post(f"{group.url}/v1/models/nope/predict", content=gradient_image(1))
        assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]
    oip = httpx.post(
        f"{group.url}/v2/models/digits/infer",
        json={"inputs": [{"name": "x", "shape": [1, 1, 20, 24], "datatype": "FP32", "data": [0.0] * 480}]},
    )
    assert oip.status_code in (200, 400, 422), oip.text  # answered by the worker, never a 500
    assert httpx.get(f"{group.url}/ui").status_code == 200


def test_a_candidate_that_errors_is_rolled_back_once_for_the_whole_pod(arms_library, service_group, tmp_path):
    from tests.conftest import install_bundle

    repo = tmp_path / "models"
    for version in (1, 5):
        install_bundle(arms_library, repo, "digits", version)
    policy = write_policy(tmp_path / "rollout.yaml", canary(5, '{"*": 50}', "{min_requests: 15, max_error_rate: 0.05}"))
    group = service_group(repo, rollout=policy, state_path=tmp_path / "state.sqlite", **FAST)
    assert PAST in policy.read_text()
    for i in range(200):  # spread over both workers; the control process judges all of them together
        predict(group, f"user-{i}", seed=i % 7)
        state = httpx.get(f"{group.url}/v1/rollouts").json()["models"]["digits"]
        if state["stage"] == "rolled_back":
            break
    assert state["stage"] == "rolled_back", state
    history = httpx.get(f"{group.url}/v1/rollouts/digits/history").json()["history"]
    assert [entry["action"] for entry in history].count("rollback") == 1  # decided once, not once per worker
    assert history[0]["actor"] == "guardrails"

    def everyone_on_stable() -> bool:  # every worker, within moments of the decision
        return {predict(group, f"after-{i}").headers.get("X-Model-Version") for i in range(20)} == {"1"}

    deadline = time.monotonic() + 1.0
    while not everyone_on_stable():
        assert time.monotonic() < deadline, "a worker still routes to the rolled-back candidate"


def test_an_admin_change_applies_in_every_worker_at_once(make_repo, service_group, tmp_path):
    repo = make_repo(("digits", 1), ("digits", 2))
    policy = write_policy(tmp_path / "rollout.yaml", canary(2, '{"*": 100}'))
    group = service_group(repo, rollout=policy, state_path=tmp_path / "state.sqlite", **FAST)
    assert {predict(group, f"user-{i}").headers["X-Model-Version"] for i in range(6)} == {"2"}
    reply = httpx.post(f"{group.url}/v1/rollouts/digits/rollback", json={"reason": "test"}, headers=ADMIN)
    assert reply.status_code == 200, reply.text
    assert {predict(group, f"user-{i}").headers["X-Model-Version"] for i in range(12)} == {"1"}
