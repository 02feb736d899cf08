"""bundle.rollout_client against a live service: read the rollout, start a shadow, advance, promote, roll back."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundle.rollout_client import RolloutClient, RolloutError
from tests.conftest import free_port

TOKEN = "s3cret-admin-token"
POLICY = """
models:
  digits: {stable: 1}
templates:
  course:
    shadow: {percent: 100, hold: 1d}
    steps:
      - {regions: {campsite-1: 100}, hold: 1d}
      - {regions: {campsite-1: 100, campsite-2: 100}, hold: 7d}
      - {regions: {"*": 100}}
"""


@pytest.fixture
def service(make_repo, live_server, tmp_path: Path):
    (tmp_path / "rollout.yaml").write_text(POLICY)
    repo = make_repo(("digits", 1), ("digits", 2))
    return live_server(repo, rollout=tmp_path / "rollout.yaml", admin_token=TOKEN, rollout_tick_s=0.05)


def test_a_candidate_goes_from_shadow_to_its_first_step_to_everyone(service):
    client = RolloutClient(service.url, token=TOKEN, actor="nightly")
    assert client.stable_version("digits") == "1"

    shadowed = client.shadow("digits", "2", template="course", reason="nightly 2026-12-06")
    assert (shadowed["stage"], shadowed["stable"], shadowed["candidate"]) == ("shadow", 1, 2)
    assert client.stable_version("digits") == "1"  # stable keeps answering

    advanced = client.advance("digits", reason="shadow looked fine")
    assert (advanced["stage"], advanced["step"]["index"]) == ("canary", 0)
    assert client.promote("digits")["stage"] == "promoted"
    assert client.stable_version("digits") == "2"
    assert client.status("digits")["last_decisions"][0]["actor"].startswith("admin (nightly")


def test_a_refused_change_raises_with_the_services_status_and_message(service):
    client = RolloutClient(service.url, token=TOKEN)
    with pytest.raises(RolloutError) as refused:
        client.rollback("digits")
    assert refused.value.status == 422 and "no candidate to roll back" in refused.value.message

    with pytest.raises(RolloutError) as unauthorised:
        RolloutClient(service.url, token="wrong").shadow("digits", "2")
    assert unauthorised.value.status == 401

    revision = client.status("digits")["revision"]
    client.shadow("digits", "2")
    with pytest.raises(RolloutError) as stale:
        client.promote("digits", revision=revision)
    assert stale.value.status == 409


def test_a_model_without_a_policy_reads_its_serving_version(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)), new_versions="latest")
    client = RolloutClient(server.url)
    assert client.stable_version("digits") == "1"
    assert client.status("digits")["stage"] == "none"
    with pytest.raises(RolloutError) as missing:
        client.status("nope")
    assert missing.value.status == 404


def test_an_unreachable_service_is_a_rollout_error_not_a_hang():
    client = RolloutClient(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(RolloutError) as unreachable:
        client.status("digits")
    assert unreachable.value.status == 0 and "cannot reach" in unreachable.value.message
