"""Bad input gets a clear JSON error with the right status, never a 500 or a hang; the service keeps serving."""

from __future__ import annotations

import io

import pytest

from tests.conftest import b64, image_bytes, metric_value, penguin, post_bytes


def assert_error(response, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    for fragment in fragments:
        assert fragment in error["message"]


def test_every_error_is_json_with_code_and_message(client):
    response = client.get("/no/such/route")

    assert_error(response, 404, "not_found")
    assert response.headers["content-type"] == "application/json"


# -- 404 / 405 ---------------------------------------------------------------------------------


def test_unknown_model_is_404_naming_it(client):
    assert_error(client.post("/v1/models/llama/predict", json={"rows": []}), 404, "not_found", "'llama'")


def test_unknown_version_is_404_listing_the_loaded_ones(client):
    response = post_bytes(client, "/v1/models/digits/versions/9/predict", image_bytes())

    assert_error(response, 404, "not_found", "version 9", "[1, 2]")


def test_a_version_that_is_not_a_number_is_404(client):
    response = post_bytes(client, "/v1/models/digits/versions/latest/predict", image_bytes())

    assert_error(response, 404, "not_found")
    assert response.headers["X-Request-Id"]


def test_wrong_method_is_405_in_json(client):
    response = client.get("/v1/models/digits/predict")

    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


# -- 413 ---------------------------------------------------------------------------------------


def test_body_over_the_declared_limit_is_413(model_repo, make_client):
    small = make_client(model_repo, max_body_bytes=1000)

    response = small.post("/v1/models/digits/predict", content=b"\0" * 5000, headers={"Content-Type": "image/png"})

    assert_error(response, 413, "payload_too_large", "5000 bytes", "1000")


def test_streamed_body_without_content_length_is_counted_and_cut_at_the_limit(model_repo, make_client):
    small = make_client(model_repo, max_body_bytes=1000)

    def chunks():
        for _ in range(10):
            yield b"\0" * 500

    response = small.post("/v1/models/digits/predict", content=chunks(), headers={"Content-Type": "image/png"})

    assert_error(response, 413, "payload_too_large", "limit of 1000 bytes")


def test_image_over_the_pixel_limit_is_413(model_repo, make_client):
    small = make_client(model_repo, max_image_pixels=100 * 100)

    response = small.post(
        "/v1/models/digits/predict", content=image_bytes(size=(200, 120)), headers={"Content-Type": "image/png"}
    )

    assert_error(response, 413, "payload_too_large", "200x120")


def test_decompression_bomb_is_refused_before_decoding(client):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (10_000, 5_000)).save(buf, format="PNG")  # 50 Mpx that compresses to a few KB
    assert len(buf.getvalue()) < 100_000

    response = client.post("/v1/models/digits/predict", content=buf.getvalue(), headers={"Content-Type": "image/png"})

    assert_error(response, 413, "payload_too_large", "pixels")


def test_too_many_instances_is_413(model_repo, make_client):
    small = make_client(model_repo, max_items_per_request=3)

    response = small.post("/v1/models/digits/predict", json={"instances": [{"b64": b64(image_bytes())}] * 4})

    assert_error(response, 413, "payload_too_large", "4 images", "limit is 3")


def test_too_many_rows_and_csv_lines_are_413(model_repo, make_client):
    small = make_client(model_repo, max_items_per_request=2)
    csv_body = b"island,sex\nDream,male\nDream,male\nBiscoe,female\n"

    assert_error(small.post("/v1/models/penguins/predict", json={"rows": [penguin()] * 3}), 413, "payload_too_large")
    response = small.post("/v1/models/penguins/predict", content=csv_body, headers={"Content-Type": "text/csv"})
    assert_error(response, 413, "payload_too_large", "3 rows")


def test_too_many_multipart_files_is_413(model_repo, make_client):
    small = make_client(model_repo, max_items_per_request=2)
    files = [("file", (f"{i}.png", image_bytes(), "image/png")) for i in range(3)]

    assert_error(small.post("/v1/models/digits/predict", files=files), 413, "payload_too_large")


# -- 415 ---------------------------------------------------------------------------------------


def test_unsupported_media_type_is_415_listing_the_accepted_ones(client):
    response = client.post("/v1/models/digits/predict", content=b"hello", headers={"Content-Type": "text/plain"})

    assert_error(response, 415, "unsupported_media_type", "text/plain", "image/jpeg")


def test_csv_sent_to_an_image_model_is_415(client):
    response = client.post("/v1/models/digits/predict", content=b"a,b\n1,2\n", headers={"Content-Type": "text/csv"})

    assert_error(response, 415, "unsupported_media_type")


def test_image_sent_to_a_tabular_model_is_415(client):
    response = client.post("/v1/models/penguins/predict", content=image_bytes(), headers={"Content-Type": "image/png"})

    assert_error(response, 415, "unsupported_media_type", "text/csv")


# -- 422: images -------------------------------------------------------------------------------


def test_corrupt_raw_image_is_422(client):
    response = post_bytes(client, "/v1/models/digits/predict", b"\x89PNG not really")

    assert_error(response, 422, "invalid_input", "body")


def test_truncated_jpeg_is_422(client):
    jpeg = image_bytes("JPEG", size=(64, 64))

    response = post_bytes(client, "/v1/models/digits/predict", jpeg[: len(jpeg) // 2], "image/jpeg")

    assert_error(response, 422, "invalid_input")


def test_corrupt_multipart_file_names_the_part(client):
    files = [("file", ("good.png", image_bytes(), "image/png")), ("file", ("bad.png", b"garbage", "image/png"))]

    response = client.post("/v1/models/digits/predict", files=files)

    assert_error(response, 422, "invalid_input", "file[1] (bad.png)")


def test_multipart_without_file_parts_is_422(client):
    files = [("other", ("x.png", b"x", "image/png"))]
    response = client.post("/v1/models/digits/predict", data={"note": "hi"}, files=files)

    assert_error(response, 422, "invalid_input", "'file'")


def test_multipart_without_boundary_is_422(client):
    response = post_bytes(client, "/v1/models/digits/predict", b"--x--", "multipart/form-data")

    assert_error(response, 422, "invalid_input", "boundary")


def test_bad_base64_names_the_instance(client):
    instances = [{"b64": b64(image_bytes())}, {"b64": b64(image_bytes())}, {"b64": "not base64!!"}]

    response = client.post("/v1/models/digits/predict", json={"instances": instances})

    assert_error(response, 422, "invalid_input", "instances[2].b64: invalid base64")


def test_base64_of_something_that_is_not_an_image_names_the_instance(client):
    response = client.post("/v1/models/digits/predict", json={"instances": [{"b64": b64(b"just text")}]})

    assert_error(response, 422, "invalid_input", "instances[0].b64")


def test_instance_without_b64_is_422(client):
    response = client.post("/v1/models/digits/predict", json={"instances": [{"url": "http://x"}]})

    assert_error(response, 422, "invalid_input", "instances[0]")


@pytest.mark.parametrize("body", [{"rows": [penguin()]}, {}, []])
def test_missing_instances_is_422(client, body):
    assert_error(client.post("/v1/models/digits/predict", json=body), 422, "invalid_input", "instances: missing")


def test_empty_instances_is_422(client):
    assert_error(client.post("/v1/models/digits/predict", json={"instances": []}), 422, "invalid_input", "empty")


def test_empty_raw_body_is_422(client):
    response = client.post("/v1/models/digits/predict", content=b"", headers={"Content-Type": "image/png"})

    assert_error(response, 422, "invalid_input", "empty image")


# -- 422: JSON and tables ----------------------------------------------------------------------


def test_invalid_json_is_422(client):
    response = post_bytes(client, "/v1/models/penguins/predict", b'{"rows": [', "application/json")

    assert_error(response, 422, "invalid_input", "invalid JSON")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_tokens_are_refused(client, token):
    body = ('{"rows": [{"island": "Dream", "bill_length_mm": ' + token + "}]}").encode()

    response = client.post("/v1/models/penguins/predict", content=body, headers={"Content-Type": "application/json"})

    assert_error(response, 422, "invalid_input", token.lstrip("-"))


def test_missing_rows_is_422(client):
    response = client.post("/v1/models/penguins/predict", json={"row": [penguin()]})

    assert_error(response, 422, "invalid_input", "rows: missing")


def test_rows_that_are_not_a_list_is_422(client):
    response = client.post("/v1/models/penguins/predict", json={"rows": penguin()})

    assert_error(response, 422, "invalid_input", "rows: expected a list")


def test_row_that_is_not_an_object_names_the_row(client):
    response = client.post("/v1/models/penguins/predict", json={"rows": [penguin(), [1, 2]]})

    assert_error(response, 422, "invalid_input", "rows[1]")


def test_text_in_a_number_column_names_row_and_column(client):
    response = client.post("/v1/models/penguins/predict", json={"rows": [penguin(), penguin(bill_length_mm="long")]})

    assert_error(response, 422, "invalid_input", "rows[1].bill_length_mm: expected a number")


def test_nested_value_in_a_column_names_row_and_column(client):
    response = client.post("/v1/models/penguins/predict", json={"rows": [penguin(island={"name": "Dream"})]})

    assert_error(response, 422, "invalid_input", "rows[0].island")


def test_csv_with_text_in_a_number_column_names_the_row_and_column(client):
    body = b"island,bill_length_mm\nDream,40\nDream,forty\n"

    response = client.post("/v1/models/penguins/predict", content=body, headers={"Content-Type": "text/csv"})

    assert_error(response, 422, "invalid_input", "csv row 2", "bill_length_mm")


def test_csv_with_infinity_is_422(client):
    body = b"island,bill_length_mm\nDream,inf\n"

    response = client.post("/v1/models/penguins/predict", content=body, headers={"Content-Type": "text/csv"})

    assert_error(response, 422, "invalid_input", "bill_length_mm")


def test_csv_without_any_model_column_is_422(client):
    response = client.post("/v1/models/penguins/predict", content=b"a,b\n1,2\n", headers={"Content-Type": "text/csv"})

    assert_error(response, 422, "invalid_input", "none of the model's columns")


def test_empty_csv_is_422(client):
    response = client.post("/v1/models/penguins/predict", content=b"", headers={"Content-Type": "text/csv"})

    assert_error(response, 422, "invalid_input", "CSV")


# -- the service stays up ----------------------------------------------------------------------


def test_bad_requests_are_counted_as_client_errors_and_good_ones_still_succeed(client):
    def client_errors() -> float:
        text = client.get("/metrics").text
        return metric_value(text, "serving_requests_total", model="penguins", outcome="client_error")

    before = client_errors()
    post_bytes(client, "/v1/models/penguins/predict", b"{", "application/json")

    after = client_errors()
    assert after == before + 1
    assert client.post("/v1/models/penguins/predict", json={"rows": [penguin()]}).status_code == 200
