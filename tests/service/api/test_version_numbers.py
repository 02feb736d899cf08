"""A version number from a client is ASCII digits, positive, at most 18 of them; anything else is a 404 or a 422.

``str.isdigit`` takes ``²`` (which ``int`` refuses) and ``int`` takes other scripts' digits (``٣`` is 3),
so every place that reads a version (paths of both protocols, query parameters) reads it the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import gradient_image, post_bytes

NOT_VERSIONS = ["²", "٣", "0", "-1", "1.0", "9" * 19, "9" * 5000, ""]


@pytest.mark.parametrize("text", NOT_VERSIONS)
def test_only_ascii_digits_name_a_version(text: str) -> None:
    from service.models.repository import version_number

    assert version_number(text) is None


def test_a_version_is_its_ascii_digits() -> None:
    from service.models.repository import version_number

    assert version_number("1") == 1 and version_number("007") == 7 and version_number("9" * 18) == 10**18 - 1


@pytest.mark.parametrize("text", ["²", "٣", "9" * 5000])
def test_a_pinned_version_that_is_no_number_is_404_on_both_protocols(client: Any, text: str) -> None:
    native = post_bytes(client, f"/v1/models/digits/versions/{text}/predict", gradient_image(1))
    v2_infer = client.post(f"/v2/models/digits/versions/{text}/infer", json={"inputs": []})
    v2_metadata = client.get(f"/v2/models/digits/versions/{text}")
    v2_ready = client.get(f"/v2/models/digits/versions/{text}/ready")
    assert [native.status_code, v2_infer.status_code, v2_metadata.status_code, v2_ready.status_code] == [404] * 4
    assert len(v2_metadata.text) < 300  # the number is quoted cut short, not echoed whole


@pytest.mark.parametrize("text", ["²", "٣", "9" * 5000])
def test_a_drift_version_that_is_no_number_is_422(client: Any, text: str) -> None:
    response = client.get("/v1/models/digits/drift", params={"version": text})
    assert response.status_code == 422 and "version" in response.json()["error"]["message"]


@pytest.mark.parametrize("query", ["version=²", "limit=²", "version=٣"])
def test_review_queue_numbers_that_are_no_numbers_are_422(
    make_client: Callable[..., Any], make_repo: Callable[..., Path], tmp_path: Path, query: str
) -> None:
    client = make_client(
        make_repo(("digits", 1)),
        prediction_log=True,
        prediction_log_path=tmp_path / "predictions.sqlite",
        reviewer_token="reviewer-secret",
    )
    response = client.get(f"/v1/predictions?{query}", headers={"Authorization": "Bearer reviewer-secret"})
    assert response.status_code == 422, response.text
