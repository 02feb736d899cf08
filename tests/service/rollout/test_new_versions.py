"""New versions arrive safely (SERVING_NEW_VERSIONS), and a candidate starts in shadow under a template's plan."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import image_bytes, install_bundle, service_settings

TOKEN = "s3cret-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
FAST = dict(rollout_tick_s=0.05, rollout_poll_s=0.1, admin_token=TOKEN)

TEMPLATES = """
models: {}
templates:
  course:              # shadow, then one region for a day, two for a week, then everyone
    shadow: {percent: 100, hold: 1d}
    steps:
      - {regions: {campsite-1: 100}, hold: 1d}
      - {regions: {campsite-1: 100, campsite-2: 100}, hold: 7d}
      - {regions: {"*": 100}}
  quick:
    shadow: {percent: 100, hold: 1s}
    steps:
      - {regions: {"*": 100}}
    auto_advance: true
"""


@contextmanager
def serve(models: Path, **overrides: Any) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from service.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = TestClient(create_app(service_settings(models, **{**FAST, **overrides})))
    with client:
        yield client


def predict(client: Any, version: int | None = None) -> Any:
    path = "/v1/models/digits/predict" if version is None else f"/v1/models/digits/versions/{version}/predict"
    return client.post(path, content=image_bytes(), headers={"Content-Type": "image/png"})


def wait_for(check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)
    return value


def loaded(client: Any) -> list[int]:
    return client.get("/v1/models/digits").json()["versions"]


def stored(client: Any) -> bool:
    return client.get("/v1/rollouts/digits").json().get("source") == "store"


# -- hold (the default) ----------------------------------------------------------------------------


def test_a_version_dropped_into_a_watched_repository_is_held_and_reachable_pinned(make_repo, bundle_library):
    repo = make_repo(("digits", 1))
    with serve(repo, watch_interval_s=0.05) as client:
        install_bundle(bundle_library, repo, "digits", 2)
        wait_for(lambda: [v["version"] for v in loaded(client)] == [1, 2])

        assert predict(client).json()["version"] == 1
        assert predict(client, version=2).json()["version"] == 2
        document = client.get("/v1/models/digits").json()
        assert (document["stable_version"], document["held_versions"]) == (1, [2])
        assert document["held"].startswith("held: 2, pinned only")
        assert "python -m service rollout shadow digits 2" in document["held"]
        assert "held: pinned only" in client.get("/ui/models/digits").text


def test_a_restart_keeps_serving_the_version_that_served(make_repo, bundle_library, tmp_path):
    repo = make_repo(("digits", 1))
    state = tmp_path / "state.sqlite"
    with serve(repo, state_path=state) as client:
        wait_for(lambda: stored(client))
    install_bundle(bundle_library, repo, "digits", 2)  # arrives while the service is down

    with serve(repo, state_path=state) as client:
        assert predict(client).json()["version"] == 1
        assert client.get("/v1/models/digits").json()["held_versions"] == [2]


def test_a_first_start_with_an_empty_store_serves_the_newest_version(make_repo, tmp_path):
    with serve(make_repo(("digits", 1), ("digits", 2)), state_path=tmp_path / "state.sqlite") as client:
        assert predict(client).json()["version"] == 2
        assert client.get("/v1/models/digits").json()["held_versions"] == []


def test_shadow_mode_starts_a_new_version_in_shadow_while_stable_answers(make_repo, bundle_library):
    repo = make_repo(("digits", 1))
    with serve(repo, watch_interval_s=0.05, new_versions="shadow") as client:
        install_bundle(bundle_library, repo, "digits", 2)

        rollout = wait_for(lambda: (r := client.get("/v1/rollouts/digits").json()).get("candidate") == 2 and r)
        assert (rollout["stage"], rollout["stable"], rollout["shadow_percent"]) == ("shadow", 1, 100)
        assert predict(client).json()["version"] == 1


def test_latest_mode_keeps_the_newest_version_taking_all_traffic(make_repo, bundle_library):
    repo = make_repo(("digits", 1))
    with serve(repo, watch_interval_s=0.05, new_versions="latest") as client:
        install_bundle(bundle_library, repo, "digits", 2)
        wait_for(lambda: [v["version"] for v in loaded(client)] == [1, 2])

        assert predict(client).json()["version"] == 2
        assert client.get("/v1/rollouts").json()["enabled"] is False


# -- shadow, advance, templates ------------------------------------------------------------------


def served_with_templates(make_repo: Callable[..., Path], tmp_path: Path, **overrides: Any) -> Any:
    (tmp_path / "rollout.yaml").write_text(TEMPLATES)
    repo = make_repo(("digits", 1))
    return repo, serve(repo, rollout=tmp_path / "rollout.yaml", watch_interval_s=0.05, **overrides)


def test_shadow_under_the_course_template_waits_for_an_admin_to_advance(make_repo, bundle_library, tmp_path):
    repo, serving = served_with_templates(make_repo, tmp_path)
    with serving as client:
        install_bundle(bundle_library, repo, "digits", 2)
        wait_for(lambda: client.get("/v1/models/digits").json()["held_versions"] == [2])

        shadowed = client.post("/v1/rollouts/digits/shadow", json={"version": 2, "template": "course"}, headers=ADMIN)
        assert shadowed.status_code == 200, shadowed.text
        body = shadowed.json()
        assert (body["stage"], body["stable"], body["candidate"], body["step"]["of"]) == ("shadow", 1, 2, 3)
        assert body["policy"]["start"] is None  # no auto_advance: nothing moves by itself
        assert predict(client).json()["version"] == 1

        etag = shadowed.headers["ETag"]
        advanced = client.post("/v1/rollouts/digits/advance", json={"reason": "looks fine"}, headers=ADMIN)
        assert advanced.json()["stage"] == "canary"
        assert advanced.json()["step"]["index"] == 0
        assert advanced.json()["shares"] == {"campsite-1": 1.0, "campsite-2": 0.0, "*": 0.0}
        stale = client.post("/v1/rollouts/digits/rollback", headers={**ADMIN, "If-Match": etag})
        assert stale.status_code == 409


def test_a_template_with_auto_advance_moves_to_its_first_step_after_the_shadow_hold(
    make_repo, bundle_library, tmp_path
):
    repo, serving = served_with_templates(make_repo, tmp_path)
    with serving as client:
        install_bundle(bundle_library, repo, "digits", 2)
        wait_for(lambda: 2 in [v["version"] for v in loaded(client)])

        started = client.post("/v1/rollouts/digits/shadow", json={"version": 2, "template": "quick"}, headers=ADMIN)
        assert started.json()["stage"] == "shadow"

        wait_for(lambda: client.get("/v1/rollouts/digits").json()["stage"] == "canary")
        assert predict(client).json()["version"] == 2


def test_shadow_refuses_what_it_cannot_do_naming_the_field(make_repo, tmp_path):
    _, serving = served_with_templates(make_repo, tmp_path)
    with serving as client:
        unknown = client.post("/v1/rollouts/digits/shadow", json={"version": 2, "template": "nope"}, headers=ADMIN)
        missing = client.post("/v1/rollouts/digits/shadow", json={"version": 7}, headers=ADMIN)
        not_a_number = client.post("/v1/rollouts/digits/shadow", json={"version": "two"}, headers=ADMIN)
        no_token = client.post("/v1/rollouts/digits/shadow", json={"version": 2})
        nothing_to_advance = client.post("/v1/rollouts/digits/advance", headers=ADMIN)

    assert unknown.status_code == 422 and "template" in unknown.json()["error"]["message"]
    assert missing.status_code == 422 and "v7 is not loaded" in missing.json()["error"]["message"]
    assert not_a_number.status_code == 422 and not_a_number.json()["error"]["message"].startswith("version:")
    assert no_token.status_code == 401
    assert nothing_to_advance.status_code == 422 and "only a rollout in shadow" in nothing_to_advance.text


def test_replicas_on_one_postgresql_store_agree_on_the_held_version(make_repo, bundle_library, postgres_url):
    repo = make_repo(("digits", 1))
    shared = dict(state_url=postgres_url, prediction_log=False)
    with serve(repo, **shared) as first:
        wait_for(lambda: stored(first))
    install_bundle(bundle_library, repo, "digits", 2)  # a replica that starts later sees v2 at once

    with serve(repo, **shared) as second, serve(repo, **shared) as third:
        assert [predict(c).json()["version"] for c in (second, third)] == [1, 1]
        assert second.get("/v1/models/digits").json()["held_versions"] == [2]
        shadowed = third.post("/v1/rollouts/digits/shadow", json={"version": 2}, headers=ADMIN)
        assert shadowed.status_code == 200, shadowed.text
        assert third.post("/v1/rollouts/digits/promote", headers=ADMIN).json()["stage"] == "promoted"
        wait_for(lambda: predict(second).json()["version"] == 2)  # read from the store within a poll


def test_shadow_mode_uses_the_new_versions_template_when_the_file_has_one(make_repo, bundle_library, tmp_path):
    (tmp_path / "rollout.yaml").write_text(TEMPLATES.replace("  quick:", "  new_versions:"))
    repo = make_repo(("digits", 1))
    with serve(repo, rollout=tmp_path / "rollout.yaml", watch_interval_s=0.05, new_versions="shadow") as client:
        install_bundle(bundle_library, repo, "digits", 2)

        wait_for(lambda: client.get("/v1/rollouts/digits").json()["candidate"] == 2)
        wait_for(lambda: client.get("/v1/rollouts/digits").json()["stage"] == "canary")  # its auto_advance after 1s
        assert client.get("/v1/rollouts/digits").json()["last_decisions"][0]["action"] == "advance"
