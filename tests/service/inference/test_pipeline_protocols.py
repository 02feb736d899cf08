"""One predict pipeline for every protocol: the native API and the Open Inference Protocol (/v2) get the same
admission, limits, out-of-domain flags, prediction log records, feedback, shadow copies and metrics.

Each test sends the same request by both protocols (``PROTOCOLS``) to one real service and checks the
behaviour the pipeline owns, not the protocol's body shapes."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import gradient_image, metric_value, penguin, serve

TOKEN = "reviewer-secret"
PROTOCOLS = ["native", "v2"]
SHADOW_POLICY = """
models:
  digits:
    stable: 1
    candidate: 2
    stage: shadow
    shadow: {percent: 100}
"""


@pytest.fixture(scope="module")
def service(bundle_library: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """digits v1 (stable) shadowed by v2, and penguins; monitoring and the prediction log on."""
    from tests.conftest import install_bundle

    root = tmp_path_factory.mktemp("protocols")
    repo = root / "models"
    for name, version in (("digits", 1), ("digits", 2), ("penguins", 1)):
        install_bundle(bundle_library, repo, name, version)
    policy = root / "rollout.yaml"
    policy.write_text(SHADOW_POLICY)
    log = root / "predictions.sqlite"
    with serve(
        repo,
        rollout=policy,
        state_path=root / "state.sqlite",
        prediction_log=True,
        prediction_log_path=log,
        reviewer_token=TOKEN,
        max_items_per_request=4,
        max_body_bytes=200_000,
        shadow_max_share=1.0,
    ) as client:
        yield client, log


def image_request(protocol: str, images: list[bytes]) -> tuple[str, dict[str, Any]]:
    """The path and keyword arguments that post these images to digits by one protocol."""
    if protocol == "native":
        files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
        return "/v1/models/digits/predict", {"files": files}
    tensor = {
        "name": "pixels",
        "datatype": "BYTES",
        "shape": [len(images)],
        "data": [base64.b64encode(data).decode() for data in images],
    }
    return "/v2/models/digits/infer", {"json": {"inputs": [tensor]}}


def row_request(protocol: str, rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The path and keyword arguments that post these penguin rows by one protocol."""
    if protocol == "native":
        return "/v1/models/penguins/predict", {"json": {"rows": rows}}
    columns = {name for row in rows for name in row}
    numeric = {"bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"}
    inputs = [
        {
            "name": name,
            "datatype": "FP64" if name in numeric else "BYTES",
            "shape": [len(rows)],
            "data": [row.get(name) for row in rows],
        }
        for name in sorted(columns)
    ]
    return "/v2/models/penguins/infer", {"json": {"inputs": inputs}}


def flags_of(protocol: str, response: Any) -> list[dict[str, Any]]:
    """Each item's out-of-domain flags: ``predictions[i].ood`` natively, ``parameters.ood`` in /v2."""
    body = response.json()
    if protocol == "native":
        return [p["ood"] for p in body["predictions"]]
    return body["parameters"]["ood"]


def request_id_of(response: Any) -> str:
    return response.headers["x-request-id"]


def logged(log: Path, request_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
    """The prediction log's row for a request, once the writer has written it."""
    deadline = time.monotonic() + timeout_s
    while True:
        if log.exists():
            with sqlite3.connect(log) as conn:
                conn.row_factory = sqlite3.Row
                row = conn.execute(
                    "SELECT * FROM monitoring_predictions WHERE request_id = ?", (request_id,)
                ).fetchone()
            if row is not None:
                return dict(row)
        if time.monotonic() > deadline:
            raise AssertionError(f"request {request_id} was never logged")
        time.sleep(0.05)


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_body_declared_over_the_limit_is_refused_before_it_is_read(service: tuple[Any, Path], protocol: str) -> None:
    client, _ = service
    path, kwargs = image_request(protocol, [gradient_image(0)])
    kwargs["headers"] = {"Content-Length": "300000", "Content-Type": "image/png" if protocol == "native" else ""}
    kwargs["content"] = b"x" * 10  # the declared length alone decides
    kwargs.pop("files", None), kwargs.pop("json", None)

    response = client.post(path, **kwargs)

    assert response.status_code == 413


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_more_items_than_the_limit_are_refused(service: tuple[Any, Path], protocol: str) -> None:
    client, _ = service
    path, kwargs = image_request(protocol, [gradient_image(i) for i in range(5)])

    response = client.post(path, **kwargs)

    assert response.status_code == 413


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_out_of_domain_rows_are_flagged_with_their_reasons(service: tuple[Any, Path], protocol: str) -> None:
    client, _ = service
    path, kwargs = row_request(protocol, [penguin(), penguin(island="Atlantis")])

    response = client.post(path, **kwargs)

    assert response.status_code == 200
    flags = flags_of(protocol, response)
    assert "unseen_category" not in flags[0]["reasons"]
    assert flags[1]["flagged"] and "unseen_category" in flags[1]["reasons"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_answer_is_logged_with_its_arm_and_outputs(service: tuple[Any, Path], protocol: str) -> None:
    client, log = service
    path, kwargs = image_request(protocol, [gradient_image(3), gradient_image(4)])

    response = client.post(path, **kwargs)

    row = logged(log, request_id_of(response))
    assert (row["model"], row["version"], row["arm"]) == ("digits", 1, "stable")
    assert len(json.loads(row["outputs"])) == 2
    assert [item.keys() >= {"sha256", "bytes"} for item in json.loads(row["inputs"])] == [True, True]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_feedback_finds_the_prediction_of_either_protocol(service: tuple[Any, Path], protocol: str) -> None:
    client, log = service
    path, kwargs = row_request(protocol, [penguin()])
    response = client.post(path, **kwargs)
    request_id = request_id_of(response)
    logged(log, request_id)

    answer = client.post(
        "/v1/feedback",
        json={"request_id": request_id, "label": "Adelie"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )

    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_shadow_candidate_runs_on_a_copy_of_each_request(service: tuple[Any, Path], protocol: str) -> None:
    client, _ = service

    def compared() -> float:
        text = client.get("/metrics").text
        return metric_value(text, "serving_shadow_comparisons_total", model="digits", version="2")

    before = compared()
    path, kwargs = image_request(protocol, [gradient_image(7)])
    response = client.post(path, **kwargs)

    assert response.status_code == 200 and response.headers["x-model-version"] == "1"
    wait_until(lambda: compared() >= before + 1, "the shadow comparison")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_requests_are_counted_by_outcome_for_the_version_that_answered(
    service: tuple[Any, Path], protocol: str
) -> None:
    client, _ = service

    def count(outcome: str) -> float:
        text = client.get("/metrics").text
        return metric_value(text, "serving_requests_total", model="penguins", version="1", outcome=outcome)

    ok, bad = count("ok"), count("client_error")
    path, kwargs = row_request(protocol, [penguin()])
    client.post(path, **kwargs)
    path, kwargs = row_request(protocol, [penguin(bill_length_mm="long")])
    assert client.post(path, **kwargs).status_code == 422

    assert (count("ok"), count("client_error")) == (ok + 1, bad + 1)
