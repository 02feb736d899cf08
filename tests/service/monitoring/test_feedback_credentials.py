"""POST /v1/feedback: who may send ground truth, what the answer says, what counts, and what the body may be.

Feedback moves live accuracy, and the ``min_live_accuracy`` guardrail rolls a candidate back on it, on every
replica: sending it takes a credential (issue 31, item 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import gradient_image, install_bundle, metric_value

LABELLER, REVIEWER, ADMIN = "labeller-secret", "reviewer-secret", "admin-secret"
CONFIDENT = {"color": "red", "shape": "circle", "x1": 3.0, "x2": 5.0, "x3": 50.0}  # label "a", far from the boundary


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def logged(make_client: Callable[..., Any], shapes_repo: Path, tmp_path: Path) -> Callable[..., Any]:
    """``logged(**settings)`` -> a client of the shapes model with a prediction log of its own."""

    def make(**settings: Any) -> Any:
        return make_client(
            shapes_repo, prediction_log=True, prediction_log_path=tmp_path / "predictions.sqlite", **settings
        )

    return make


def served(client: Any) -> str:
    response = client.post("/v1/models/shapes/predict", json={"rows": [CONFIDENT]})
    assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "a"
    return str(response.json()["request_id"])


def send(client: Any, request_id: str, label: str = "b", token: str | None = LABELLER) -> Any:
    return client.post(
        "/v1/feedback", json={"request_id": request_id, "label": label}, headers=bearer(token) if token else {}
    )


# -- credentials ---------------------------------------------------------------------------------


def test_feedback_is_refused_while_no_token_is_configured(logged: Callable[..., Any]) -> None:
    client = logged()
    refused = send(client, served(client), token=None)

    assert refused.status_code == 403
    assert "SERVING_FEEDBACK_TOKEN" in refused.json()["error"]["message"]


def test_feedback_without_a_token_or_with_a_wrong_one_is_401(logged: Callable[..., Any]) -> None:
    client = logged(feedback_token=LABELLER)
    request_id = served(client)

    assert send(client, request_id, token=None).status_code == 401
    assert send(client, request_id, token="guess").status_code == 401


def test_the_feedback_reviewer_and_admin_tokens_each_send_feedback(logged: Callable[..., Any]) -> None:
    client = logged(feedback_token=LABELLER, reviewer_token=REVIEWER, admin_token=ADMIN)

    for token in (LABELLER, REVIEWER, ADMIN):
        assert send(client, served(client), token=token).status_code == 200, token


def test_the_feedback_token_cannot_read_the_review_queue(logged: Callable[..., Any]) -> None:
    client = logged(feedback_token=LABELLER, reviewer_token=REVIEWER)
    served(client)

    assert client.get("/v1/predictions?flagged=false", headers=bearer(LABELLER)).status_code == 401
    assert client.get("/v1/predictions?flagged=false", headers=bearer(REVIEWER)).status_code == 200


def test_feedback_can_be_opened_to_anyone_on_purpose(logged: Callable[..., Any]) -> None:
    client = logged(feedback_open=True)

    assert send(client, served(client), token=None).status_code == 200


# -- what an answer says and what it counts ------------------------------------------------------------


def test_the_answer_says_whether_it_counted_and_nothing_of_the_prediction(logged: Callable[..., Any]) -> None:
    client = logged(feedback_token=LABELLER)
    request_id = served(client)

    reply = send(client, request_id, label="b")

    assert reply.json() == {"request_id": request_id, "item": 0, "counted": True, "reason": None}


def test_a_repeated_answer_replaces_the_stored_one_and_counts_once(logged: Callable[..., Any]) -> None:
    client = logged(feedback_token=LABELLER)
    request_id = served(client)

    first = send(client, request_id, label="b")  # wrong
    again = [send(client, request_id, label="a") for _ in range(3)]  # corrected, then repeated

    assert first.json()["counted"] is True
    assert [r.json()["counted"] for r in again] == [False] * 3
    assert {r.json()["reason"] for r in again} == {"already_answered"}
    (report,) = client.get("/v1/models/shapes/drift").json()["versions"]
    assert report["performance"]["feedback"] == 1 and report["performance"]["live_accuracy"] == 1.0
    text = client.get("/metrics").text
    assert metric_value(text, "serving_feedback_total", model="shapes") == 1


# -- the body ----------------------------------------------------------------------------------------


def test_feedback_sent_as_text_plain_is_refused(logged: Callable[..., Any]) -> None:
    # what a page of another origin can send without asking first (a CORS "simple request")
    client = logged(feedback_token=LABELLER)
    body = f'{{"request_id": "{served(client)}", "label": "b"}}'

    reply = client.post("/v1/feedback", content=body, headers={**bearer(LABELLER), "Content-Type": "text/plain"})

    assert reply.status_code == 415 and "Content-Type" in reply.json()["error"]["message"]


def test_a_feedback_body_over_its_limit_is_refused_before_it_is_parsed(logged: Callable[..., Any]) -> None:
    client = logged(feedback_token=LABELLER)
    padded = {"request_id": served(client), "label": "b", "note": "x" * 70_000}  # valid JSON, over 64 KiB

    reply = client.post("/v1/feedback", json=padded, headers=bearer(LABELLER))

    assert reply.status_code == 413


def test_a_request_id_the_service_cannot_have_given_is_422_before_the_store(logged: Callable[..., Any]) -> None:
    client = logged(feedback_token=LABELLER)

    reply = send(client, "abc\x00def")

    assert reply.status_code == 422 and "request_id" in reply.json()["error"]["message"]


# -- the guardrail, on a live server --------------------------------------------------------------------

CANARY = """
models:
  digits:
    stable: 1
    candidate: 2
    stage: canary
    steps:
      - {regions: {"*": 50}}
    start: 2020-01-01T00:00:00Z
    guardrails: {min_requests: 10, min_live_accuracy: 0.5}
"""


def test_wrong_labels_without_a_token_cannot_roll_a_candidate_back(
    digit_arms: Path, live_server: Callable[..., Any], tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    for version in (1, 2):
        install_bundle(digit_arms, repo, "digits", version)
    policy = tmp_path / "rollout.yaml"
    policy.write_text(CANARY)
    server = live_server(
        repo,
        rollout=policy,
        rollout_tick_s=0.05,
        prediction_log=True,
        prediction_log_path=tmp_path / "predictions.sqlite",
    )
    with httpx.Client(base_url=server.url) as http:
        answers = [
            http.post(
                "/v1/models/digits/predict",
                content=gradient_image(i),
                headers={"Content-Type": "image/png", "X-Request-Key": f"user-{i}"},
            )
            for i in range(60)
        ]
        on_candidate = [a.json() for a in answers if a.headers["X-Model-Version"] == "2"]
        assert len(on_candidate) >= 10 and len(answers) - len(on_candidate) >= 10
        for answer in on_candidate:  # the attack of the issue: wrong labels, no token
            wrong = str((int(answer["predictions"][0]["label"]) + 1) % 10)
            reply = http.post("/v1/feedback", json={"request_id": answer["request_id"], "label": wrong})
            assert reply.status_code == 403
        time.sleep(0.5)  # ten rollout ticks

        rollout = http.get("/v1/rollouts").json()["models"]["digits"]
    assert rollout["stage"] == "canary"
    assert rollout["guardrails"]["readings"]["candidate"]["live_accuracy"] is None
