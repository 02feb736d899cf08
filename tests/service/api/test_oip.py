"""The Open Inference Protocol (KServe V2 REST), spoken by Triton's own HTTP client to a live service.

Every answer is checked against the native API's for the same inputs, on
the same live server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer, gradient_image, metric_value, penguin

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.live_server

IMAGES = [gradient_image(seed) for seed in range(5)]


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[LiveServer]:
    live = LiveServer(model_repo, max_batch_size=4).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def triton(server: LiveServer) -> Any:
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield client
    client.close()


def native(server: LiveServer, path: str, **kwargs: Any) -> dict[str, Any]:
    response = httpx.post(server.url + path, timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def native_images(
    server: LiveServer, images: list[bytes], model: str = "digits", version: int | None = None
) -> list[dict[str, Any]]:
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    pinned = f"/versions/{version}" if version is not None else ""
    return native(server, f"/v1/models/{model}{pinned}/predict", files=files)["predictions"]


def bytes_input(images: list[bytes], binary: bool = True) -> Any:
    tensor = httpclient.InferInput("pixels", [len(images)], "BYTES")
    values = images if binary else [base64.b64encode(data).decode() for data in images]
    tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
    return tensor


def pixels_of(images: list[bytes], size: tuple[int, int] = (16, 16)) -> np.ndarray:
    """The pixels the native API feeds the graph, decoded by the shared preprocessing."""
    from bundle.images import ResizeSpec, preprocess

    return np.stack([preprocess(data, ResizeSpec(*size, "squish")) for data in images])


def uint8_input(pixels: np.ndarray, binary: bool = True) -> Any:
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    return tensor


def text(value: bytes | str) -> str:
    """A BYTES element: bytes when it came as binary data, str when it came as JSON."""
    return value.decode() if isinstance(value, bytes) else value


def assert_same_classification(result: Any, predictions: list[dict[str, Any]]) -> None:
    labels = [text(label) for label in result.as_numpy("label")]
    assert labels == [p["label"] for p in predictions]
    assert result.as_numpy("index").tolist() == [p["index"] for p in predictions]
    expected = np.array([list(p["probabilities"].values()) for p in predictions], dtype=np.float32)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=1e-6, atol=1e-7)


def error_of(server: LiveServer, path: str, body: Any) -> httpx.Response:
    response = httpx.post(server.url + path, json=body, timeout=30)
    assert 400 <= response.status_code < 500
    assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)
    return response


# -- health and metadata ---------------------------------------------------------------------------


def test_server_is_live_and_ready_and_names_its_extensions(triton: Any) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "fastprod"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_is_the_manifests_graph(triton: Any, model_repo: Path) -> None:
    from bundle.manifest import read_manifest

    manifest = read_manifest(model_repo / "digits" / "2")
    metadata = triton.get_model_metadata("digits")
    assert metadata["name"] == "digits" and metadata["versions"] == ["1", "2"]
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "UINT8", "shape": [-1, 3, 16, 16]}]
    n_classes = len(manifest.outputs.classes)
    assert metadata["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, n_classes]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "index", "datatype": "INT64", "shape": [-1]},
    ]
    assert metadata["parameters"]["classes"] == manifest.outputs.classes
    assert triton.get_model_metadata("digits", "1")["versions"] == ["1"]


def test_tabular_metadata_has_one_input_per_raw_column(triton: Any) -> None:
    metadata = triton.get_model_metadata("penguins")
    assert metadata["inputs"] == [
        {"name": "island", "datatype": "BYTES", "shape": [-1]},
        {"name": "sex", "datatype": "BYTES", "shape": [-1]},
        {"name": "bill_length_mm", "datatype": "FP64", "shape": [-1]},
        {"name": "bill_depth_mm", "datatype": "FP64", "shape": [-1]},
        {"name": "flipper_length_mm", "datatype": "FP64", "shape": [-1]},
    ]


def test_models_and_versions_report_readiness(triton: Any) -> None:
    assert triton.is_model_ready("digits")
    assert triton.is_model_ready("digits", "1")
    assert not triton.is_model_ready("digits", "7")
    assert not triton.is_model_ready("nope")


# -- inference -------------------------------------------------------------------------------------


def test_encoded_images_as_binary_bytes_answer_as_the_native_api(server: LiveServer, triton: Any) -> None:
    result = triton.infer("digits", [bytes_input(IMAGES)])
    assert_same_classification(result, native_images(server, IMAGES))
    assert result.get_response()["model_version"] == "2"


def test_encoded_images_as_base64_json_bytes_answer_as_the_native_api(server: LiveServer, triton: Any) -> None:
    result = triton.infer("digits", [bytes_input(IMAGES, binary=False)])
    assert_same_classification(result, native_images(server, IMAGES))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_preprocessed_uint8_pixels_answer_as_the_native_api(server: LiveServer, triton: Any, binary: bool) -> None:
    names = ("probabilities", "label", "index")
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in names]
    result = triton.infer("digits", [uint8_input(pixels_of(IMAGES), binary)], outputs=outputs)
    assert_same_classification(result, native_images(server, IMAGES))


def test_a_pinned_version_answers_as_the_native_pinned_version(server: LiveServer, triton: Any) -> None:
    result = triton.infer("digits", [bytes_input(IMAGES)], model_version="1")
    assert_same_classification(result, native_images(server, IMAGES, version=1))
    assert result.get_response()["model_version"] == "1"


def test_tabular_columns_answer_as_the_native_rows(server: LiveServer, triton: Any) -> None:
    rows = [penguin(), penguin(island="Biscoe", sex="male", bill_length_mm=48.1), penguin(flipper_length_mm=230)]
    inputs = []
    for column in ("island", "sex"):
        tensor = httpclient.InferInput(column, [len(rows)], "BYTES")
        tensor.set_data_from_numpy(np.array([r[column].encode() for r in rows], dtype=object))
        inputs.append(tensor)
    for column in ("bill_length_mm", "bill_depth_mm", "flipper_length_mm"):
        tensor = httpclient.InferInput(column, [len(rows), 1], "FP64")
        tensor.set_data_from_numpy(np.array([[r[column]] for r in rows], dtype=np.float64))
        inputs.append(tensor)
    result = triton.infer("penguins", inputs)
    expected = native(server, "/v1/models/penguins/predict", json={"rows": rows})["predictions"]
    assert_same_classification(result, expected)


def test_nulls_in_json_columns_are_missing_values_as_in_native_rows(server: LiveServer) -> None:
    rows = [penguin(sex=None, bill_length_mm=None), penguin(island=None, flipper_length_mm=None)]
    body = {
        "inputs": [
            {
                "name": column,
                "datatype": "BYTES" if column in ("island", "sex") else "FP64",
                "shape": [2, 1],
                "data": [[r[column]] for r in rows],
            }
            for column in ("island", "sex", "bill_length_mm", "bill_depth_mm", "flipper_length_mm")
        ]
    }
    answer = native(server, "/v2/models/penguins/infer", json=body)
    expected = native(server, "/v1/models/penguins/predict", json={"rows": rows})["predictions"]
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    assert outputs["label"] == [p["label"] for p in expected]
    np.testing.assert_allclose(outputs["probabilities"], [v for p in expected for v in p["probabilities"].values()])


def test_regression_serves_the_value_with_the_log_target_undone(server: LiveServer, triton: Any) -> None:
    rows = [penguin(), penguin(island="Biscoe", bill_depth_mm=15.0)]
    body = {
        "inputs": [
            {"name": "island", "datatype": "BYTES", "shape": [2], "data": [r["island"] for r in rows]},
            {"name": "sex", "datatype": "BYTES", "shape": [2], "data": [r["sex"] for r in rows]},
            *[
                {"name": c, "datatype": "FP64", "shape": [2], "data": [r[c] for r in rows]}
                for c in ("bill_length_mm", "bill_depth_mm", "flipper_length_mm")
            ],
        ]
    }
    answer = native(server, "/v2/models/mass/infer", json=body)
    value = next(o for o in answer["outputs"] if o["name"] == "value")
    expected = native(server, "/v1/models/mass/predict", json={"rows": rows})["predictions"]
    assert value["datatype"] == "FP64" and value["shape"] == [2]
    np.testing.assert_allclose(value["data"], [p["value"] for p in expected], rtol=1e-12)


def test_multilabel_labels_are_json_lists_of_class_names(server: LiveServer, triton: Any) -> None:
    result = triton.infer("tags", [bytes_input(IMAGES)])
    expected = native_images(server, IMAGES, "tags")
    assert [json.loads(text) for text in result.as_numpy("labels")] == [p["labels"] for p in expected]


def test_only_the_requested_outputs_come_back(triton: Any) -> None:
    result = triton.infer("digits", [bytes_input(IMAGES)], outputs=[httpclient.InferRequestedOutput("label")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]


def test_the_classification_extension_gives_the_top_classes(server: LiveServer, triton: Any) -> None:
    wanted = [httpclient.InferRequestedOutput("probabilities", class_count=2, binary_data=False)]
    result = triton.infer("digits", [bytes_input(IMAGES)], outputs=wanted)
    top = result.as_numpy("probabilities")
    assert top.shape == (len(IMAGES), 2)
    for row, prediction in zip(top, native_images(server, IMAGES)):
        score, index, label = text(row[0]).split(":", 2)
        assert (int(index), label) == (prediction["index"], prediction["label"])
        assert float(score) == pytest.approx(max(prediction["probabilities"].values()), abs=1e-6)


def test_the_request_id_and_parameters_are_echoed(triton: Any) -> None:
    result = triton.infer("digits", [bytes_input(IMAGES[:1])], request_id="req-42", parameters={"tenant": "a"})
    response = result.get_response()
    assert response["id"] == "req-42"
    assert response["parameters"]["tenant"] == "a"
    # beside the client's parameters, monitoring's out-of-domain flags, one per item (as the native API's ``ood``)
    assert [set(flags) for flags in response["parameters"]["ood"]] == [{"score", "flagged", "reasons"}]


def test_a_request_larger_than_a_batch_is_split_and_reassembled(server: LiveServer, triton: Any) -> None:
    images = [gradient_image(seed) for seed in range(100, 111)]  # 11 items, batches of at most 4
    before = httpx.get(server.url + "/metrics").text
    result = triton.infer("digits", [uint8_input(pixels_of(images))], model_version="1")
    after = httpx.get(server.url + "/metrics").text
    runs = {"model": "digits", "version": "1"}
    count, items = (
        metric_value(after, name, **runs) - metric_value(before, name, **runs)
        for name in ("serving_batch_size_count", "serving_batch_size_sum")
    )
    assert (count, items) == (3, 11)
    assert_same_classification(result, native_images(server, images, version=1))


def test_inference_is_counted_in_the_native_metrics(server: LiveServer, triton: Any) -> None:
    labels = {"model": "digits", "version": "2", "outcome": "ok"}
    before = metric_value(httpx.get(server.url + "/metrics").text, "serving_requests_total", **labels)
    triton.infer("digits", [bytes_input(IMAGES[:1])])
    after = metric_value(httpx.get(server.url + "/metrics").text, "serving_requests_total", **labels)
    assert after == before + 1


# -- errors ----------------------------------------------------------------------------------------


def test_an_unknown_model_or_version_is_a_protocol_404(server: LiveServer, triton: Any) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        triton.infer("nope", [bytes_input(IMAGES[:1])])
    assert unknown.value.status() == "404" and "nope" in unknown.value.message()
    with pytest.raises(InferenceServerException) as missing_version:
        triton.infer("digits", [bytes_input(IMAGES[:1])], model_version="9")
    assert missing_version.value.status() == "404"
    assert httpx.get(server.url + "/v2/nothing/here").json() == {"error": "Not Found"}


def test_a_wrong_method_is_a_protocol_405(server: LiveServer) -> None:
    response = httpx.get(server.url + "/v2/models/digits/infer")
    assert response.status_code == 405 and response.json() == {"error": "Method Not Allowed"}


def test_a_wrong_datatype_is_a_protocol_error_naming_the_input(server: LiveServer) -> None:
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": [0.0] * 768}]}
    assert "pixels" in error_of(server, "/v2/models/digits/infer", body).json()["error"]
    column = {"inputs": [{"name": "bill_length_mm", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    assert "bill_length_mm" in error_of(server, "/v2/models/penguins/infer", column).json()["error"]


def test_a_wrong_shape_is_a_protocol_error(server: LiveServer) -> None:
    body = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 8, 8], "data": [0] * 192}]}
    assert "[N, 3, 16, 16]" in error_of(server, "/v2/models/digits/infer", body).json()["error"]
    mismatch = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 16, 16], "data": [0] * 700}]}
    assert "700 data elements" in error_of(server, "/v2/models/digits/infer", mismatch).json()["error"]


def test_a_missing_input_is_a_protocol_error(server: LiveServer) -> None:
    body = {"inputs": [{"name": "island", "datatype": "BYTES", "shape": [1], "data": ["Dream"]}]}
    assert "is missing" in error_of(server, "/v2/models/penguins/infer", body).json()["error"]


def test_an_undecodable_image_and_unknown_output_are_protocol_errors(triton: Any) -> None:
    with pytest.raises(InferenceServerException) as bad_image:
        triton.infer("digits", [bytes_input([b"not an image"])])
    assert bad_image.value.status() == "422" and "pixels[0]" in bad_image.value.message()
    with pytest.raises(InferenceServerException) as bad_output:
        triton.infer("digits", [bytes_input(IMAGES[:1])], outputs=[httpclient.InferRequestedOutput("nope")])
    assert bad_output.value.status() == "422"


def test_the_item_limit_applies(server: LiveServer) -> None:
    pixels = np.zeros((65, 3, 16, 16), np.uint8)  # the default limit is 64 items per request
    tensor = {"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}
    body = {"inputs": [tensor]}
    assert error_of(server, "/v2/models/digits/infer", body).status_code == 413


def test_binary_data_that_does_not_add_up_is_a_protocol_error(server: LiveServer) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "UINT8",
                    "shape": [1, 3, 16, 16],
                    "parameters": {"binary_data_size": 768},
                }
            ]
        }
    ).encode()
    response = httpx.post(
        server.url + "/v2/models/digits/infer",
        content=header + bytes(100),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 422 and "binary data" in response.json()["error"]


def test_the_openapi_document_lists_the_protocol_routes(server: LiveServer) -> None:
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    ):
        assert path in paths
