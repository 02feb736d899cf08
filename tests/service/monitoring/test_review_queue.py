"""GET /v1/predictions: the review queue over the prediction log, behind the reviewer (or admin) token."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import gradient_image, post_bytes

REVIEWER = {"Authorization": "Bearer reviewer-secret"}


def logged_client(
    make_client: Callable[..., Any], make_repo: Callable[..., Path], tmp_path: Path, **settings: Any
) -> Any:
    return make_client(
        make_repo(("digits", 1)), prediction_log=True, prediction_log_path=tmp_path / "predictions.sqlite", **settings
    )


def test_the_queue_is_refused_without_a_configured_token_and_with_a_wrong_one(make_client, make_repo, tmp_path):
    assert logged_client(make_client, make_repo, tmp_path).get("/v1/predictions").status_code == 403
    client = logged_client(make_client, make_repo, tmp_path, reviewer_token="reviewer-secret")
    wrong = client.get("/v1/predictions", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"]


def test_logged_predictions_are_listed_newest_first_and_leave_the_queue_once_answered(make_client, make_repo, tmp_path):
    client = logged_client(make_client, make_repo, tmp_path, reviewer_token="reviewer-secret")
    ids = [
        post_bytes(client, "/v1/models/digits/predict", gradient_image(seed)).json()["request_id"] for seed in range(3)
    ]

    listed = client.get("/v1/predictions?flagged=false&model=digits", headers=REVIEWER).json()["predictions"]
    assert [p["request_id"] for p in listed] == ids[::-1]
    first = listed[-1]
    assert first["model"] == "digits" and first["version"] == 1 and first["item"] == 0 and first["reasons"]
    assert first["outputs"][0]["label"] and first["inputs"][0]["sha256"]

    label = "0" if first["outputs"][0]["label"] != "0" else "1"
    assert client.post("/v1/feedback", json={"request_id": ids[0], "label": label}, headers=REVIEWER).status_code == 200
    still = client.get("/v1/predictions?flagged=false", headers=REVIEWER).json()["predictions"]
    assert ids[0] not in [p["request_id"] for p in still]
    reviewed = client.get("/v1/predictions?flagged=false&reviewed=true", headers=REVIEWER).json()["predictions"]
    assert [p["request_id"] for p in reviewed] == [ids[0]]


def test_flagged_items_carry_their_reasons_and_filters_name_bad_values(make_client, make_repo, tmp_path):
    client = logged_client(make_client, make_repo, tmp_path, admin_token="admin-secret")
    admin = {"Authorization": "Bearer admin-secret"}
    post_bytes(client, "/v1/models/digits/predict", gradient_image(7))
    flagged = client.get("/v1/predictions", headers=admin).json()["predictions"]
    assert all(set(p["reasons"]) <= {"ood", "low_confidence"} and p["reasons"] for p in flagged)
    bad = client.get("/v1/predictions?limit=0", headers=admin)
    assert bad.status_code == 422 and "limit" in bad.json()["error"]["message"]
    assert client.get("/v1/predictions?flagged=maybe", headers=admin).status_code == 422
