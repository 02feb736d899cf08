"""inputs that used to answer 500 answer a 4xx JSON error, and are counted."""

from __future__ import annotations

import httpx

from tests.conftest import metric_value, penguin
from tests.hardening_support import WellBehavedClient


def test_an_integer_of_thousands_of_digits_is_422(make_repo, live_server):
    server = live_server(make_repo(("penguins", 1), ("digits", 1)))
    body = '{"rows": [{"island": "Dream", "bill_length_mm": ' + "9" * 5000 + "}]}"
    with WellBehavedClient(server.url, "digits") as client:
        response = httpx.post(
            f"{server.url}/v1/models/penguins/predict", content=body, headers={"Content-Type": "application/json"}
        )
        fine = httpx.post(f"{server.url}/v1/models/penguins/predict", json={"rows": [penguin()]})
    client.assert_served()
    assert response.status_code == 422, response.text
    assert "5000 digits" in response.json()["error"]["message"]
    assert fine.status_code == 200


def test_a_version_number_of_thousands_of_digits_is_404_and_counted(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)))
    with WellBehavedClient(server.url, "digits") as client:
        response = httpx.post(
            f"{server.url}/v1/models/digits/versions/{'7' * 5000}/predict",
            content=b"x",
            headers={"Content-Type": "image/png"},
        )
    client.assert_served()
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert metric_value(metrics, "serving_requests_total", model="digits", version="", outcome="client_error") == 1
