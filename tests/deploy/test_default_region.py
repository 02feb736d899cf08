"""A per-region deployment knows where it runs: requests without X-Region belong to SERVING_DEFAULT_REGION."""

from __future__ import annotations

from service.settings import ServiceSettings
from tests.conftest import gradient_image, metric_value, post_bytes


def test_default_region_is_read_from_its_environment_variable_and_is_always_known(monkeypatch):
    monkeypatch.setenv("SERVING_REGIONS", "us-west,eu-central")
    monkeypatch.setenv("SERVING_DEFAULT_REGION", "us-west")
    assert ServiceSettings().default_region == "us-west"

    alone = ServiceSettings(regions=[], default_region="eu-central")
    assert alone.regions == ["eu-central"]
    assert alone.region_label("eu-central") == "eu-central"


def test_no_default_region_leaves_headerless_requests_in_other(monkeypatch):
    monkeypatch.delenv("SERVING_DEFAULT_REGION", raising=False)
    assert ServiceSettings().default_region == ""


def test_requests_without_x_region_are_counted_in_the_default_region(make_repo, make_client):
    client = make_client(make_repo(("digits", 1)), regions=["us-west", "eu-central"], default_region="eu-central")

    headerless = post_bytes(client, "/v1/models/digits/predict", gradient_image(1))
    elsewhere = post_bytes(client, "/v1/models/digits/predict", gradient_image(2), x_region="us-west")
    unknown = post_bytes(client, "/v1/models/digits/predict", gradient_image(3), x_region="atlantis")

    assert headerless.status_code == elsewhere.status_code == unknown.status_code == 200
    text = client.get("/metrics").text
    assert metric_value(text, "serving_requests_total", model="digits", region="eu-central", outcome="ok") == 1
    assert metric_value(text, "serving_requests_total", model="digits", region="us-west", outcome="ok") == 1
    assert metric_value(text, "serving_requests_total", model="digits", region="other", outcome="ok") == 1


def test_unknown_model_requests_without_x_region_are_counted_in_the_default_region(make_repo, make_client):
    client = make_client(make_repo(("digits", 1)), regions=["us-west"], default_region="us-west")

    assert post_bytes(client, "/v1/models/nope/predict", gradient_image(1)).status_code == 404

    text = client.get("/metrics").text
    assert metric_value(text, "serving_requests_total", model="unknown", region="us-west", outcome="client_error") == 1
