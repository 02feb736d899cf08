"""What no request, stored row or hung store may do to the rollout: stop the service, leak internals, hold threads.

Attacks on the rollout endpoints and its state store (issue 31): a policy the
service could not route by (validated once, the same way for a PUT, the file,
the CLI and a stored row), internals on reads anyone may make, credentials in
any form of store URL, a store that stops answering, a NUL in text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bundle.store import open_store
from service.rollout import cli
from service.rollout.decisions import MIGRATIONS
from service.rollout.policy import parse_policy_text
from tests.bundle.test_store_timeouts import FreezingForwarder
from tests.conftest import metric_value
from tests.service.rollout.test_rollout_service import (
    ADMIN,
    PAST,
    canary,
    predict,
    rollout_of,
    serve,
    wait_for,
    write_policy,
)

NOT_A_HEADER = "X-Ключ"  # not even latin-1: the old code stored it, then could not start


def policy_body(**changes: Any) -> dict[str, Any]:
    return {
        "stable": 1,
        "candidate": 2,
        "stage": "canary",
        "start": PAST,
        "steps": [{"regions": {"*": 100}}],
        **changes,
    }


# -- item 7: one validation everywhere; a bad stored policy never stops the service ------------------------------


def test_a_sticky_key_that_is_no_header_name_is_refused_by_put_and_by_the_cli_alike(
    make_repo: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    policy_file = write_policy(tmp_path / "rollout.yaml", canary(2))
    with serve(repo, rollout=policy_file) as client:
        refused = client.put("/v1/rollouts/digits", headers=ADMIN, json=policy_body(sticky_key=NOT_A_HEADER))
        assert refused.status_code == 422
        message = refused.json()["error"]["message"]
        assert message.startswith("models.digits.sticky_key: 'X-Ключ' is not an HTTP header name")
        assert rollout_of(client)["revision"] == 0 and client.get("/v1/rollouts/digits/history").json()["history"] == []
    bad_file = write_policy(
        tmp_path / "bad.yaml", canary(2).replace("stage: canary", f"stage: canary\n    sticky_key: {NOT_A_HEADER}")
    )
    assert cli.main(["check", str(bad_file)]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"steps": [{"regions": {"*": 1}, "hold": 1e300}, {"regions": {"*": 100}}]}, "steps[0].hold"),
        (
            {"start": "8999-12-31T00:00:00Z", "steps": [{"regions": {"*": 1}, "hold": "7d"}, {"regions": {"*": 100}}]},
            "",
        ),
    ],
    ids=["a hold of 1e300 s", "a plan past the year 9000"],
)
def test_a_plan_whose_times_cannot_be_shown_is_refused_before_it_is_stored(
    make_repo: Callable[..., Path], tmp_path: Path, changes: dict[str, Any], field: str
) -> None:
    """Accepted, such a plan made every later read of the rollout answer 500."""
    repo = make_repo(("digits", 1), ("digits", 2))
    with serve(repo, rollout=write_policy(tmp_path / "rollout.yaml", canary(2))) as client:
        refused = client.put("/v1/rollouts/digits", headers=ADMIN, json=policy_body(**changes))
        assert refused.status_code == 422 and refused.json()["error"]["message"].startswith(
            f"models.digits{'.' + field if field else ''}"
        )
        assert client.get("/v1/rollouts").status_code == 200 and rollout_of(client)["revision"] == 0


def test_a_stored_policy_that_no_longer_validates_is_reported_and_stable_serves(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    """A row an older release stored (a PUT it answered 500 to): the service starts, stable serves everyone,
    the listing, /readyz and a counter say why, and an admin can replace the row."""
    repo = make_repo(("digits", 1), ("digits", 2))
    text = canary(2, '{"*": 100}')
    policy_file = write_policy(tmp_path / "rollout.yaml", text)
    in_file = parse_policy_text(text).models["digits"]
    store = open_store("", tmp_path / "rollout.yaml.state.sqlite")
    store.migrate(MIGRATIONS)
    store.execute(
        "INSERT INTO rollout_state (model, policy, file_fingerprint, revision, updated_at, updated_by, reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            "digits",
            in_file.model_dump_json().replace("X-Request-Key", NOT_A_HEADER),
            in_file.fingerprint(),
            3,
            0.0,
            "admin",
            None,
        ),
    )
    store.close()
    with serve(repo, rollout=policy_file) as client:
        assert {predict(client, f"user-{i}").headers["X-Model-Version"] for i in range(10)} == {"1"}
        listing = client.get("/v1/rollouts").json()
        state = listing["models"]["digits"]
        assert (state["source"], state["stage"], state["stable"], state["revision"]) == ("refused", "off", 1, 3)
        assert "sticky_key" in listing["stored_policy_errors"]["digits"]
        assert any("revision 3" in problem for problem in state["problems"])
        ready = client.get("/readyz")
        assert ready.status_code == 200 and "digits" in ready.json()["rollout_problems"]
        assert (
            metric_value(client.get("/metrics").text, "serving_rollout_stored_policy_errors_total", model="digits") == 1
        )
        replaced = client.put("/v1/rollouts/digits", headers={**ADMIN, "If-Match": '"3"'}, json=policy_body())
        assert replaced.status_code == 200 and replaced.json()["revision"] == 4 and replaced.headers["ETag"] == '"4"'
        assert replaced.json()["problems"] == [] and client.get("/readyz").json()["rollout_problems"] == {}
        assert predict(client, "user-1").headers["X-Model-Version"] == "2"


# -- item 9: what anyone may read ------------------------------------------------------------------------------


def test_reads_without_the_admin_token_show_no_paths_file_errors_addresses_or_actors(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    policy_file = write_policy(tmp_path / "rollout.yaml", canary(2))
    with serve(repo, rollout=policy_file) as client:
        headers = {**ADMIN, "X-Actor": "alice.smith@campsite.example"}
        assert client.post("/v1/rollouts/digits/rollback", headers=headers, json={"reason": "dusk"}).status_code == 200
        write_policy(policy_file, "models: [this is: not: valid")  # a refused edit: its YAML error names the file
        wait_for(lambda: client.get("/v1/rollouts").json()["policy_error"])
        public = {
            path: client.get(path)
            for path in ("/v1/rollouts", "/v1/rollouts/digits", "/v1/rollouts/digits/history", "/readyz")
        }
        for path, response in public.items():
            assert response.status_code == 200, path
            for secret in (str(tmp_path), "rollout.yaml", "alice", "testclient", "not: valid"):
                assert secret not in response.text, (path, secret)
        listing = public["/v1/rollouts"].json()
        assert listing["policy_file"] is None and listing["state_store"]["location"] is None
        assert "admin token" in listing["policy_error"]
        assert listing["models"]["digits"]["decided"]["by"] == "admin"
        assert listing["models"]["digits"]["last_decisions"][0]["actor"] == "admin"
        assert public["/v1/rollouts/digits/history"].json()["history"][0]["actor"] == "admin"
        assert public["/readyz"].json()["state_store"]["location"] is None

        admin = client.get("/v1/rollouts", headers=ADMIN).json()
        assert admin["policy_file"] == str(policy_file) and str(policy_file) in admin["policy_error"]
        assert admin["state_store"]["location"].startswith(str(tmp_path))
        assert admin["models"]["digits"]["decided"]["by"] == "admin (alice.smith@campsite.example from testclient)"
        history = client.get("/v1/rollouts/digits/history", headers=ADMIN).json()["history"]
        assert history[0]["actor"].startswith("admin (alice.smith")
        assert client.get("/readyz", headers=ADMIN).json()["state_store"]["location"].startswith(str(tmp_path))


def test_the_audit_actor_is_printable_and_capped(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    with serve(repo, rollout=write_policy(tmp_path / "rollout.yaml", canary(2))) as client:
        actor = "Zoe\t\x7f" + "x" * 500
        assert client.post("/v1/rollouts/digits/rollback", headers={**ADMIN, "X-Actor": actor}).status_code == 200
        recorded = client.get("/v1/rollouts/digits/history", headers=ADMIN).json()["history"][0]["actor"]
        label = recorded.removeprefix("admin (").removesuffix(" from testclient)")
        assert len(label) == 64 and label.startswith("Zoe??xxx") and label.endswith("…")


def test_a_password_in_any_form_of_the_state_url_is_never_shown(
    make_repo: Callable[..., Path], tmp_path: Path, postgres_url: str
) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    state_url = postgres_url + "?user=postgres&password=hunter2-query&sslpassword=hunter2-ssl"
    log = dict(prediction_log=True, monitoring=True)
    with serve(repo, rollout=write_policy(tmp_path / "rollout.yaml", canary(2)), state_url=state_url, **log) as client:
        assert predict(client, "user-1").status_code == 200
        for headers in ({}, ADMIN):
            for path in ("/readyz", "/v1/rollouts", "/v1/models/digits/drift"):
                response = client.get(path, headers=headers)
                assert response.status_code == 200 and "hunter2" not in response.text, (path, headers)
        shown = client.get("/readyz", headers=ADMIN).json()["state_store"]["location"]
        assert "password=***" in shown and "sslpassword=***" in shown


# -- item 10: a store that stops answering ---------------------------------------------------------------------


def test_a_store_that_stops_answering_is_reported_within_a_second_and_delays_no_read_or_prediction(
    make_repo: Callable[..., Path], tmp_path: Path, postgres_url: str
) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    forwarder = FreezingForwarder()
    state_url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{forwarder.port}")
    policy_file = write_policy(tmp_path / "rollout.yaml", canary(2))
    try:
        with serve(repo, rollout=policy_file, state_url=state_url, store_timeout_s=1.0) as client:
            up = lambda: metric_value(client.get("/metrics").text, "serving_state_store_up")  # noqa: E731
            assert up() == 1
            forwarder.freeze()  # connections stay open; nothing comes back
            frozen_at = time.monotonic()
            wait_for(lambda: up() == 0, timeout_s=5)
            assert time.monotonic() - frozen_at < 2.0  # the stall (1 s) within a tick, not after the timeout
            started = time.monotonic()
            for i in range(10):
                assert predict(client, f"user-{i}").status_code == 200
                assert client.get("/v1/rollouts").json()["models"]["digits"]["stage"] == "canary"
            assert time.monotonic() - started < 2.0  # reads and routing never wait for the store
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["state_store"]["healthy"] is False
            started = time.monotonic()
            refused = client.post("/v1/rollouts/digits/rollback", headers=ADMIN)
            assert refused.status_code == 503 and time.monotonic() - started < 6.0
            assert rollout_of(client)["stage"] == "canary"  # refused, not half-made
    finally:
        forwarder.close()


# -- item 11: a NUL is the client's mistake, not the store's health --------------------------------------------


def test_a_nul_in_a_change_is_refused_422_and_the_shared_store_stays_healthy(
    make_repo: Callable[..., Path], tmp_path: Path, postgres_url: str
) -> None:
    repo = make_repo(("digits", 1), ("digits", 2))
    with serve(repo, rollout=write_policy(tmp_path / "rollout.yaml", canary(2)), state_url=postgres_url) as client:
        refused = client.post("/v1/rollouts/digits/rollback", headers=ADMIN, json={"reason": "bad\u0000reason"})
        assert refused.status_code == 422 and refused.json()["error"]["message"].startswith("reason:")
        assert client.get("/readyz").json()["state_store"]["healthy"] is True
        assert client.post("/v1/rollouts/digits/rollback", headers=ADMIN, json={"reason": "ok"}).status_code == 200
