"""The HTTP API of the contract, against real bundles and ONNX Runtime (Starlette's TestClient)."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest

from bundle.images import ResizeSpec, preprocess
from bundle.manifest import read_manifest
from tests.conftest import b64, gradient_image, image_bytes, metric_value, penguin, post_bytes


def direct_probabilities(model_repo, name: str, version: int, images: list[bytes]) -> np.ndarray:
    """What the ONNX graph says for these images when run by hand, one at a time."""
    bundle = model_repo / name / str(version)
    image = read_manifest(bundle).image
    session = ort.InferenceSession(str(bundle / "model.onnx"))
    spec = ResizeSpec(image.height, image.width, image.resize_method, image.pad_mode)
    return np.concatenate([session.run(None, {"pixels": preprocess(img, spec)[None]})[0] for img in images])


# -- image bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"), ("BMP", "image/bmp"), ("GIF", "image/gif")],
)
def test_raw_image_body_of_each_format_is_predicted(client, fmt, content_type):
    response = post_bytes(client, "/v1/models/digits/predict", image_bytes(fmt), content_type)

    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert prediction["label"] == str(prediction["index"])
    assert math.isclose(sum(prediction["probabilities"].values()), 1.0, rel_tol=1e-5)


def test_octet_stream_body_is_read_as_an_image(client):
    response = client.post(
        "/v1/models/digits/predict", content=image_bytes("PNG"), headers={"Content-Type": "application/octet-stream"}
    )

    assert response.status_code == 200


def test_grayscale_rgba_and_palette_images_are_accepted(client):
    bodies = [
        image_bytes("PNG", mode="L", color=90),
        image_bytes("PNG", mode="RGBA", color=(1, 2, 3, 100)),
        image_bytes("GIF", mode="P", color=7),
    ]

    for body in bodies:
        assert post_bytes(client, "/v1/models/digits/predict", body).status_code == 200


def test_multipart_with_several_files_returns_predictions_in_part_order(client, model_repo):
    images = [gradient_image(i) for i in range(3)]
    files = [("file", (f"{i}.png", img, "image/png")) for i, img in enumerate(images)]

    response = client.post("/v1/models/digits/versions/1/predict", files=files)

    assert response.status_code == 200, response.text
    got = [list(p["probabilities"].values()) for p in response.json()["predictions"]]
    np.testing.assert_allclose(got, direct_probabilities(model_repo, "digits", 1, images), atol=1e-6)


def test_json_instances_with_base64_images_are_predicted_in_order(client, model_repo):
    images = [gradient_image(i, fmt="JPEG") for i in range(4)]

    instances = [{"b64": b64(i)} for i in images]
    response = client.post("/v1/models/digits/versions/1/predict", json={"instances": instances})

    assert response.status_code == 200, response.text
    got = [list(p["probabilities"].values()) for p in response.json()["predictions"]]
    np.testing.assert_allclose(got, direct_probabilities(model_repo, "digits", 1, images), atol=1e-6)


def test_thumbnails_decoded_in_place_or_in_the_pool_give_identical_predictions(client, model_repo, make_client):
    pooled = make_client(model_repo, inline_decode_max_pixels=0)
    image = gradient_image(5)

    in_place = post_bytes(client, "/v1/models/digits/versions/1/predict", image).json()["predictions"]
    in_pool = post_bytes(pooled, "/v1/models/digits/versions/1/predict", image).json()["predictions"]

    assert in_place == in_pool


def test_request_with_more_items_than_a_batch_is_split_and_reassembled_in_order(client, model_repo):
    images = [gradient_image(i) for i in range(19)]  # batches hold 8 items in the test settings

    instances = [{"b64": b64(i)} for i in images]
    response = client.post("/v1/models/digits/versions/2/predict", json={"instances": instances})

    got = [list(p["probabilities"].values()) for p in response.json()["predictions"]]
    np.testing.assert_allclose(got, direct_probabilities(model_repo, "digits", 2, images), atol=1e-6)


# -- response shapes per task ------------------------------------------------------------------


def test_classification_prediction_has_label_index_and_probabilities(client):
    body = post_bytes(client, "/v1/models/digits/predict", image_bytes()).json()

    (prediction,) = body["predictions"]
    assert set(prediction) == {"label", "index", "probabilities", "ood"}
    assert list(prediction["probabilities"]) == [str(i) for i in range(10)]
    assert prediction["index"] == int(np.argmax(list(prediction["probabilities"].values())))


def test_multilabel_prediction_lists_the_labels_over_their_thresholds(client, model_repo):
    manifest = read_manifest(model_repo / "tags" / "1")
    thresholds = dict(zip(manifest.outputs.classes, manifest.outputs.thresholds))
    assert sorted(thresholds.values()) == [0.45, 0.5, 0.5, 0.55]
    body = client.post("/v1/models/tags/predict", files=[("file", ("a.png", gradient_image(1), "image/png"))]).json()

    (prediction,) = body["predictions"]
    probabilities = prediction["probabilities"]
    assert list(probabilities) == list(thresholds)
    assert prediction["labels"] == [c for c, p in probabilities.items() if p >= thresholds[c]]


def test_regression_prediction_is_a_value_within_the_y_range(client):
    body = post_bytes(client, "/v1/models/counts/predict", image_bytes()).json()

    (prediction,) = body["predictions"]
    assert set(prediction) == {"value", "ood"}
    assert 0.0 <= prediction["value"] <= 10.0


def test_regression_with_several_targets_returns_values_by_target_name(client):
    body = post_bytes(client, "/v1/models/boxes/predict", image_bytes()).json()

    (prediction,) = body["predictions"]
    assert list(prediction["values"]) == ["width", "height"]


# -- tabular bodies ----------------------------------------------------------------------------


def test_json_rows_are_predicted_and_missing_keys_and_nulls_are_missing_values(client):
    rows = [penguin(), {"island": "Biscoe"}, penguin(bill_length_mm=None, sex=None)]

    response = client.post("/v1/models/penguins/predict", json={"rows": rows})

    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    assert all(p["label"] in ("Adelie", "Chinstrap", "Gentoo") for p in predictions)


def test_csv_body_gives_the_same_predictions_as_json_rows(client):
    rows = [penguin(), penguin(island="Biscoe", sex="male", bill_length_mm=50.2), penguin(bill_depth_mm=None)]
    header = list(rows[0])
    lines = [",".join(header)] + [",".join("" if r[c] is None else str(r[c]) for c in header) for r in rows]
    csv_body = ("\n".join(lines) + "\n").encode()

    from_json = client.post("/v1/models/penguins/predict", json={"rows": rows}).json()["predictions"]
    from_csv = client.post("/v1/models/penguins/predict", content=csv_body, headers={"Content-Type": "text/csv"})

    assert from_csv.status_code == 200, from_csv.text
    for a, b in zip(from_json, from_csv.json()["predictions"]):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-6)


def test_log_target_regression_is_served_on_the_original_scale(client, model_repo):
    from bundle.manifest import read_manifest
    from bundle.tabular import TabularProcessor, rows_to_frame

    manifest = read_manifest(model_repo / "mass" / "1")
    processor = TabularProcessor.from_dict(manifest.tabular.processor)
    table = processor.transform(rows_to_frame([penguin()], manifest.tabular.raw_columns))
    session = ort.InferenceSession(str(model_repo / "mass" / "1" / "model.onnx"))
    log_value = session.run(None, {"x_cat": table.x_cat, "x_cont": table.x_cont})[0][0, 0]

    body = client.post("/v1/models/mass/predict", json={"rows": [penguin()]}).json()

    assert body["predictions"][0]["value"] == pytest.approx(math.exp(log_value), rel=1e-5)


def test_model_without_category_inputs_gets_only_its_continuous_input(client):
    rows = [{"bill_length_mm": 41, "flipper_length_mm": 190}]
    response = client.post("/v1/models/measures/predict", json={"rows": rows})

    assert response.status_code == 200, response.text


# -- versions, headers, ids --------------------------------------------------------------------


def test_unversioned_predict_goes_to_the_highest_version(client):
    response = post_bytes(client, "/v1/models/digits/predict", image_bytes())

    assert response.json()["version"] == 2
    assert response.headers["X-Model-Version"] == "2"


def test_pinned_version_answers_from_that_version(client):
    response = post_bytes(client, "/v1/models/digits/versions/1/predict", image_bytes())

    assert response.json()["version"] == 1
    assert response.headers["X-Model-Version"] == "1"


def test_client_request_id_is_echoed_in_the_header_and_the_body_names_the_services_own(client):
    response = post_bytes(client, "/v1/models/digits/predict", image_bytes(), x_request_id="abc-123")

    assert response.headers["X-Request-Id"] == "abc-123"
    assert len(response.json()["request_id"]) == 32  # the id feedback names (issue 31: a client's id names nothing)


def test_request_id_is_generated_when_absent_and_on_every_response(client):
    responses = (client.get("/healthz"), client.get("/nope"), client.post("/v1/models/digits/predict", content=b""))
    for response in responses:
        assert len(response.headers["X-Request-Id"]) == 32


def test_generated_request_ids_are_unique_and_in_time_order():
    import time

    from service.http.request_id import new_request_id

    ids = []
    for _ in range(3):
        ids += [new_request_id() for _ in range(2_000)]
        time.sleep(0.002)
    assert len(set(ids)) == len(ids) and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    stamps = [int(i[:12], 16) for i in ids]  # milliseconds first: the prediction log's index grows at its end
    assert stamps == sorted(stamps) and abs(stamps[-1] / 1000 - time.time()) < 5


def test_unsafe_client_request_id_is_replaced(client):
    response = client.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})

    assert response.headers["X-Request-Id"] != "bad id\twith spaces"


# -- model listing, health, metrics, OpenAPI ---------------------------------------------------


def test_models_list_names_versions_task_input_kind_and_state(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}

    assert set(models) == {"digits", "tags", "counts", "boxes", "penguins", "mass", "measures"}
    assert models["digits"] == {
        "name": "digits",
        "versions": [1, 2],
        "task": "classification",
        "input_kind": "image",
        "state": "serving",
        "serving_version": 2,
    }
    assert models["penguins"]["input_kind"] == "tabular"


def test_image_model_description_has_classes_and_image_input_schema(client, model_repo):
    manifest = read_manifest(model_repo / "digits" / "2")

    body = client.get("/v1/models/digits").json()

    assert body["classes"] == manifest.outputs.classes
    assert (body["input"]["height"], body["input"]["width"]) == (manifest.image.height, manifest.image.width)
    assert body["input"]["resize_method"] == manifest.image.resize_method
    assert [v["version"] for v in body["versions"]] == [1, 2]
    assert body["versions"][0]["provider"] == "cpu"


def test_tabular_model_description_lists_raw_columns_with_kinds_and_vocabularies(client):
    columns = {c["name"]: c for c in client.get("/v1/models/penguins").json()["input"]["columns"]}

    assert columns["island"]["kind"] == "categorical"
    assert columns["island"]["vocab"][0] == "#na#"
    assert columns["bill_length_mm"] == {
        "name": "bill_length_mm",
        "kind": "continuous",
        "minimum": -1e15,
        "maximum": 1e15,
    }


def test_unknown_model_description_is_404(client):
    response = client.get("/v1/models/nope")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_healthz_and_readyz_answer_200_when_everything_is_loaded(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"]["digits"] == 2


def test_metrics_count_requests_by_model_version_region_and_outcome(client):
    marin_ok = dict(model="penguins", region="marin", outcome="ok")
    before = metric_value(client.get("/metrics").text, "serving_requests_total", **marin_ok)

    client.post("/v1/models/penguins/predict", json={"rows": [penguin()]}, headers={"X-Region": "marin"})
    client.post("/v1/models/penguins/predict", json={"rows": [penguin()]}, headers={"X-Region": "atlantis"})

    text = client.get("/metrics").text
    assert metric_value(text, "serving_requests_total", version="1", **marin_ok) == before + 1
    assert metric_value(text, "serving_requests_total", model="penguins", region="other", outcome="ok") >= 1
    assert 'region="atlantis"' not in text


def test_metrics_expose_every_serving_family_of_the_contract(client):
    post_bytes(client, "/v1/models/tags/predict", image_bytes())

    text = client.get("/metrics").text

    families = (
        "serving_request_duration_seconds",
        "serving_queue_wait_seconds",
        "serving_inference_duration_seconds",
        "serving_batch_size",
        "serving_queue_depth",
        "serving_model_info",
    )
    for family in families:
        assert f"# TYPE {family} " in text
    assert metric_value(text, "serving_model_info", model="tags", version="1", task="multilabel", provider="cpu") == 1


def test_unknown_model_names_do_not_become_metric_labels(client):
    client.post("/v1/models/made-up-name/predict", json={"rows": []})

    text = client.get("/metrics").text
    assert "made-up-name" not in text
    assert metric_value(text, "serving_requests_total", model="unknown", outcome="client_error") >= 1


def test_openapi_document_describes_every_route(client):
    document = client.get("/openapi.json").json()

    assert document["openapi"].startswith("3.")
    assert {
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/models",
        "/v1/models/{name}",
        "/v1/models/digits/predict",
        "/v1/models/digits/versions/{version}/predict",
        "/v1/models/penguins/predict",
    } <= set(document["paths"])
    assert "multipart/form-data" in document["paths"]["/v1/models/digits/predict"]["post"]["requestBody"]["content"]
