"""GET /v1/predictions pages through the whole review queue with its real size; shadow disagreements are in it.

Issue 31, item 8: the queue read only the newest ``limit x 5`` rows, so ordinary traffic pushed flagged items
out of sight; its count was the page's size; ``disagreement`` never filled, as shadow answers were not logged.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import gradient_image, install_bundle, post_bytes

REVIEWER = {"Authorization": "Bearer reviewer-secret"}
CONFIDENT = {"color": "red", "shape": "circle", "x1": 1.0, "x2": 5.0, "x3": 50.0}  # typical: not flagged
UNSEEN = {**CONFIDENT, "color": "mauve"}  # flagged: an unseen category
PREDICT = "/v1/models/shapes/predict"


@pytest.fixture
def client(make_client: Callable[..., Any], shapes_repo: Path, tmp_path: Path) -> Any:
    return make_client(
        shapes_repo,
        prediction_log=True,
        prediction_log_path=tmp_path / "predictions.sqlite",
        reviewer_token="reviewer-secret",
    )


def predict(client: Any, *rows: dict[str, Any]) -> str:
    response = client.post(PREDICT, json={"rows": list(rows)})
    assert response.status_code == 200
    return str(response.json()["request_id"])


def queue(client: Any, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/predictions", params=params, headers=REVIEWER)
    assert response.status_code == 200, response.text
    return dict(response.json())


def every_page(client: Any, **params: Any) -> list[dict[str, Any]]:
    pages, cursor = [], None
    while True:
        page = queue(client, **params, **({"cursor": cursor} if cursor else {}))
        pages.append(page)
        cursor = page["next"]
        if cursor is None:
            return pages


def test_flagged_items_stay_in_reach_however_much_traffic_follows(client: Any) -> None:
    flagged = [predict(client, UNSEEN) for _ in range(3)]
    for _ in range(4):
        predict(client, *[CONFIDENT] * 20)  # 80 ordinary items after them

    pages = every_page(client, limit=2)

    assert [[p["request_id"] for p in page["predictions"]] for page in pages] == [flagged[:0:-1], flagged[:1]]


def test_the_count_is_the_size_of_the_queue_not_of_the_page(client: Any) -> None:
    for _ in range(3):
        predict(client, UNSEEN)
    predict(client, *[CONFIDENT] * 20)

    assert queue(client, limit=1)["total"] == 3
    assert queue(client, limit=1, reason="sample")["total"] == 20


def test_every_logged_item_pages_too(client: Any) -> None:
    ids = [predict(client, CONFIDENT, UNSEEN, CONFIDENT) for _ in range(3)]  # 9 items

    pages = every_page(client, flagged="false", limit=4)

    listed = [(p["request_id"], p["item"]) for page in pages for p in page["predictions"]]
    assert listed == [(request_id, item) for request_id in ids[::-1] for item in range(3)]
    assert [page["total"] for page in pages] == [9, 9, 9]


def test_answered_items_leave_the_queue_and_its_count(client: Any) -> None:
    first, second = predict(client, UNSEEN), predict(client, UNSEEN)
    answer = {"request_id": first, "label": "a"}
    assert client.post("/v1/feedback", json=answer, headers=REVIEWER).status_code == 200

    waiting = queue(client)
    reviewed = queue(client, reviewed="true")

    assert [p["request_id"] for p in waiting["predictions"]] == [second] and waiting["total"] == 1
    assert [p["request_id"] for p in reviewed["predictions"]] == [first] and reviewed["total"] == 1


def test_a_cursor_the_service_did_not_give_is_422_naming_it(client: Any) -> None:
    response = client.get("/v1/predictions", params={"cursor": "not-a-cursor"}, headers=REVIEWER)

    assert response.status_code == 422 and "cursor" in response.json()["error"]["message"]


def test_filters_that_cannot_be_meant_are_422_naming_them(client: Any) -> None:
    for params, name in (({"version": "²"}, "version"), ({"reason": "bored"}, "reason"), ({"model": "a\x00"}, "model")):
        response = client.get("/v1/predictions", params=params, headers=REVIEWER)
        assert response.status_code == 422 and name in response.json()["error"]["message"], params


# -- shadow answers and disagreements ------------------------------------------------------------------

SHADOW = """
models:
  digits:
    stable: 1
    candidate: 3
    stage: shadow
    shadow: {percent: 100}
    steps:
      - {regions: {"*": 0}}
    start: 2020-01-01T00:00:00Z
"""


@pytest.fixture
def shadowed(make_client: Callable[..., Any], digit_arms: Path, tmp_path: Path) -> tuple[Any, Path]:
    """digits v1 serving, v3 (every label different) in shadow, a prediction log; and the log's path."""
    repo = tmp_path / "models"
    for version in (1, 3):
        install_bundle(digit_arms, repo, "digits", version)
    policy = tmp_path / "rollout.yaml"
    policy.write_text(SHADOW)
    path = tmp_path / "predictions.sqlite"
    settings = dict(prediction_log=True, prediction_log_path=path, reviewer_token="reviewer-secret")
    return make_client(repo, rollout=policy, rollout_tick_s=0.05, **settings), path


def shadow_rows(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM monitoring_predictions WHERE arm = 'shadow'")]


def wait_for_shadows(client: Any, n: int) -> None:
    deadline = time.monotonic() + 10
    while queue(client, reason="disagreement")["total"] < n:
        assert time.monotonic() < deadline, "timed out waiting for the shadow answers"
        time.sleep(0.05)


def test_shadow_answers_are_logged_linked_to_the_request_they_copy(shadowed: tuple[Any, Path]) -> None:
    client, path = shadowed
    served = post_bytes(client, "/v1/models/digits/predict", gradient_image(1))
    wait_for_shadows(client, 1)

    (shadow,) = shadow_rows(path)

    assert shadow["shadow_of"] == served.json()["request_id"] and shadow["version"] == 3
    assert shadow["request_id"] != served.json()["request_id"] and shadow["inputs"] == "[]"


def test_items_the_shadow_disagrees_on_are_in_the_queue_with_its_answer(shadowed: tuple[Any, Path]) -> None:
    client, _ = shadowed
    served = post_bytes(client, "/v1/models/digits/predict", gradient_image(2)).json()
    wait_for_shadows(client, 1)

    (entry,) = queue(client, reason="disagreement")["predictions"]

    assert entry["request_id"] == served["request_id"] and entry["version"] == 1 and "disagreement" in entry["reasons"]
    assert entry["shadow"]["version"] == 3
    assert entry["shadow"]["outputs"][0]["label"] != served["predictions"][0]["label"]
