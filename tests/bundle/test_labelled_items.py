"""bundle.prediction_log.labelled_items: the served items that have ground truth, as a dataset reads them."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from bundle.prediction_log import REVIEW, labelled_items, open_log
from tests.conftest import gradient_image, post_bytes, serve

REVIEWER = {"Authorization": "Bearer reviewer-token"}
LABELLER = {"Authorization": "Bearer labeller-token"}
TOKENS = dict(reviewer_token="reviewer-token", feedback_token="labeller-token")


def served(client: Any, n: int) -> list[dict[str, Any]]:
    bodies = [post_bytes(client, "/v1/models/digits/predict", gradient_image(seed)).json() for seed in range(n)]
    return [{"request_id": b["request_id"], "label": b["predictions"][0]["label"]} for b in bodies]


def test_each_answer_comes_back_with_its_source_prediction_and_the_image_kept_for_review(make_repo, tmp_path: Path):
    log = tmp_path / "predictions.sqlite"
    settings = dict(prediction_log=True, prediction_log_path=log, prediction_log_image_sample=0.0, **TOKENS)
    with serve(make_repo(("digits", 1)), **settings) as client:
        answers = served(client, 12)
        for i, answer in enumerate(answers):
            truth = "3" if i % 3 else answer["label"]
            if i % 2:
                body, headers = {"request_id": answer["request_id"], "label": truth, "source": "review"}, REVIEWER
            else:
                body, headers = {"request_id": answer["request_id"], "label": truth}, LABELLER
            assert client.post("/v1/feedback", json=body, headers=headers).status_code == 200
            answer["truth"] = truth

    store = open_log(str(log))
    items = labelled_items(store, "digits", since_s=3600)
    flagged = {
        (r["request_id"], r["item"]) for r in store.query(f"SELECT * FROM {REVIEW} WHERE ood + low_confidence > 0")
    }

    assert [(i.request_id, i.label, i.predicted) for i in items] == [
        (a["request_id"], a["truth"], a["label"]) for a in answers
    ]
    assert Counter(i.source for i in items) == {"review": 6, "api": 6}
    assert all(i.version == 1 and i.item == 0 and i.row is None and 0 < (i.confidence or 0) <= 1 for i in items)
    assert {(i.request_id, i.item) for i in items if i.chosen_by_model} == flagged
    # the sample share is 0 here: exactly the items sent to review kept their bytes
    assert [i.image == gradient_image(n) for n, i in enumerate(items) if i.chosen_by_model] == [True] * len(flagged)
    assert all(i.image is None for i in items if not i.chosen_by_model)
    assert labelled_items(store, "digits", sources=("review",))[0].source == "review"
    two_hours_on = time.time() + 7200
    assert labelled_items(store, "digits", since_s=3600, until=two_hours_on) == []  # nothing answered in that hour


def test_images_true_still_means_every_image_and_false_none(make_repo, tmp_path: Path):
    log = tmp_path / "predictions.sqlite"
    settings = dict(prediction_log=True, prediction_log_path=log, prediction_log_images="true", **TOKENS)
    with serve(make_repo(("digits", 1)), **settings) as client:
        for answer in served(client, 3):
            client.post("/v1/feedback", json={"request_id": answer["request_id"], "label": "1"}, headers=LABELLER)

    items = labelled_items(open_log(str(log)), "digits")
    assert [i.image for i in items] == [gradient_image(n) for n in range(3)]


def test_a_review_answer_needs_the_reviewer_credential(make_repo, tmp_path: Path):
    settings = dict(prediction_log=True, prediction_log_path=tmp_path / "log.sqlite", **TOKENS)
    with serve(make_repo(("digits", 1)), **settings) as client:
        (answer,) = served(client, 1)
        claimed = {"request_id": answer["request_id"], "label": "1", "source": "review"}
        refused = client.post("/v1/feedback", json=claimed, headers=LABELLER)
        unknown = client.post("/v1/feedback", json={**claimed, "source": "oracle"}, headers=REVIEWER)

    assert refused.status_code == 422 and refused.json()["error"]["message"].startswith("source:")
    assert unknown.status_code == 422 and "source" in unknown.json()["error"]["message"]


def test_until_ends_the_window_limit_keeps_the_newest_predictions_come_only_when_named(make_repo, tmp_path: Path):
    log = tmp_path / "predictions.sqlite"
    settings = dict(prediction_log=True, prediction_log_path=log, **TOKENS)
    with serve(make_repo(("digits", 1)), **settings) as client:
        answers = served(client, 6)
        for n, answer in enumerate(answers[:4]):
            if n == 2:
                halfway = time.time()
            client.post("/v1/feedback", json={"request_id": answer["request_id"], "label": "1"}, headers=LABELLER)
    store = open_log(str(log))
    ids = [a["request_id"] for a in answers]

    assert [i.request_id for i in labelled_items(store, "digits", until=halfway)] == ids[:2]
    assert [i.request_id for i in labelled_items(store, "digits", limit=3)] == ids[1:4]
    mixed = labelled_items(store, "digits", sources=("api", "predictions"))
    unanswered = [i for i in mixed if i.source == "predictions"]
    assert [(i.request_id, i.label, i.answered_at) for i in unanswered] == [
        (a["request_id"], a["label"], None) for a in answers[4:]
    ]
    assert [i.source for i in labelled_items(store, "digits")] == ["api"] * 4


def test_a_postgresql_log_reads_the_same(make_repo, postgres_url: str):
    settings = dict(prediction_log=True, state_url=postgres_url, prediction_log_images="all", **TOKENS)
    with serve(make_repo(("digits", 1)), **settings) as client:
        answers = served(client, 4)
        for answer in answers[:2]:
            body = {"request_id": answer["request_id"], "label": "1", "source": "review"}
            client.post("/v1/feedback", json=body, headers=REVIEWER)
    store = open_log(postgres_url)

    items = labelled_items(store, "digits", since_s=3600, sources=("review", "predictions"), limit=3)
    # unanswered items sort by when they were served, answers by when they arrived: the limit keeps the newest 3
    assert [(i.request_id, i.source) for i in items] == [
        (answers[3]["request_id"], "predictions"),
        (answers[0]["request_id"], "review"),
        (answers[1]["request_id"], "review"),
    ]
    assert [i.answer for i in items] == [answers[3]["label"], "1", "1"]
    assert all(i.image is not None for i in items)
