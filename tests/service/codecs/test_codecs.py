"""Input decoders and output encoders on their own: bodies in, arrays out; arrays in, predictions out."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from bundle.images import ResizeSpec, preprocess
from bundle.manifest import read_manifest
from service.codecs.images import ImageInputs
from service.codecs.media import media_type_of
from service.codecs.multipart import parse_multipart
from service.codecs.outputs import PredictionEncoder
from service.codecs.strict_json import parse_json
from service.codecs.tables import TabularInputs
from service.http.errors import InvalidInput
from tests.conftest import gradient_image, image_bytes, penguin


@pytest.fixture
def digits(model_repo):
    return read_manifest(model_repo / "digits" / "1")


def test_media_type_ignores_parameters_and_case():
    assert media_type_of("Multipart/Form-Data; boundary=abc") == "multipart/form-data"
    assert media_type_of("") == ""


def test_image_decoder_replays_the_shared_preprocessing(digits):
    body = gradient_image(0, fmt="JPEG")

    (pixels,) = ImageInputs(digits, 8, 10**7).decode("image/jpeg", "image/jpeg", body).arrays

    image = digits.image
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 3, image.height, image.width)
    spec = ResizeSpec(image.height, image.width, image.resize_method, image.pad_mode)
    np.testing.assert_array_equal(pixels[0], preprocess(body, spec))


def test_thumbnail_is_decoded_in_place_exactly_as_in_the_pool(digits):
    decoder = ImageInputs(digits, 8, 10**7, inline_max_pixels=64 * 64)
    body = image_bytes(size=(64, 64))

    (in_place,) = decoder.decode_in_place("image/png", "image/png", body).arrays

    np.testing.assert_array_equal(in_place, decoder.decode("image/png", "image/png", body).arrays[0])


def test_the_decoder_tells_monitoring_each_image_size_as_its_header_states_it(digits):
    from bundle.monitoring import encoded_size

    bodies = [
        gradient_image(1, fmt="JPEG", size=(48, 32)),  # Pillow reads it
        image_bytes(size=(30, 41)),  # a plain PNG: libspng reads it
        image_bytes(size=(33, 17), mode="RGBA", color=(1, 2, 3, 4)),  # not plain: Pillow reads it
    ]
    body = (
        b"".join(b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + data + b"\r\n" for data in bodies)
        + b"--b--\r\n"
    )
    raw = ImageInputs(digits, 8, 10**7).decode("multipart/form-data", "multipart/form-data; boundary=b", body).raw

    assert raw.images == bodies
    assert raw.sizes == [encoded_size(data) for data in bodies] == [(48, 32), (30, 41), (33, 17)]


def test_image_over_the_in_place_limit_is_left_for_the_pool(digits):
    decoder = ImageInputs(digits, 8, 10**7, inline_max_pixels=64 * 64)

    assert decoder.decode_in_place("image/png", "image/png", image_bytes(size=(65, 64))) is None


def test_only_raw_images_are_decoded_in_place(digits):
    decoder = ImageInputs(digits, 8, 10**7, inline_max_pixels=10**6)

    assert decoder.decode_in_place("application/json", "application/json", b'{"instances": []}') is None
    assert ImageInputs(digits, 8, 10**7, inline_max_pixels=0).decode_in_place("image/png", "", image_bytes()) is None


def test_corrupt_thumbnail_is_invalid_input_at_once(digits):
    decoder = ImageInputs(digits, 8, 10**7, inline_max_pixels=10**6)

    with pytest.raises(InvalidInput, match="body"):
        decoder.decode_in_place("image/png", "image/png", b"garbage")


def test_tabular_decoding_always_goes_to_the_pool(model_repo):
    decoder = TabularInputs(read_manifest(model_repo / "penguins" / "1"), 8)

    assert decoder.decode_in_place("application/json", "application/json", b'{"rows": [{}]}') is None


def test_tabular_decoder_gives_the_inputs_the_manifest_lists_in_order(model_repo):
    manifest = read_manifest(model_repo / "penguins" / "1")

    x_cat, x_cont = (
        TabularInputs(manifest, 8).decode("application/json", "application/json", b'{"rows": [{}, {}]}').arrays
    )

    assert x_cat.dtype == np.int64 and x_cat.shape == (2, len(manifest.tabular.cat_names))
    assert x_cont.dtype == np.float32 and x_cont.shape == (2, 3)


def test_json_rows_and_csv_decode_to_the_same_arrays(model_repo):
    decoder = TabularInputs(read_manifest(model_repo / "penguins" / "1"), 8)
    row = penguin()
    csv_body = (",".join(row) + "\n" + ",".join(str(v) for v in row.values()) + "\n").encode()

    from_json = decoder.decode("application/json", "", json.dumps({"rows": [row]}).encode())
    from_csv = decoder.decode("text/csv", "text/csv", csv_body)

    for a, b in zip(from_json.arrays, from_csv.arrays):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("41.0", "expected a number"),
        (True, "expected a number"),
        (2e15, "2e+15 is out of range"),
        (-2e15, "-2e+15 is out of range"),
    ],
)
def test_a_bad_continuous_value_deep_in_a_long_request_is_named_by_its_row(model_repo, value, message):
    decoder = TabularInputs(read_manifest(model_repo / "penguins" / "1"), 1000)
    rows = [penguin() for _ in range(1000)]
    rows[700]["bill_length_mm"] = value

    with pytest.raises(InvalidInput, match=re.escape(f"rows[700].bill_length_mm: {message}")):
        decoder.decode("application/json", "application/json", json.dumps({"rows": rows}).encode())


def test_strict_json_refuses_nan_and_overflow():
    assert parse_json(b'{"a": 1.5}') == {"a": 1.5}
    with pytest.raises(InvalidInput, match="NaN"):
        parse_json(b'{"a": NaN}')
    with pytest.raises(InvalidInput, match="out of range"):
        parse_json(b'{"a": -1e400}')


def test_multipart_parts_keep_names_filenames_and_bytes_in_order():
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\nAAA\r\n"
        b'--xyz\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--xyz--\r\n'
    )

    parts = parse_multipart("multipart/form-data; boundary=xyz", body, max_parts=5)

    assert [(p.name, p.filename, bytes(p.data)) for p in parts] == [("file", "a.png", b"AAA"), ("note", None, b"hello")]


def test_truncated_multipart_is_invalid():
    body = b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nAAA'

    with pytest.raises(InvalidInput, match="closing boundary"):
        parse_multipart("multipart/form-data; boundary=xyz", body, max_parts=5)


def test_classification_encoder_names_the_argmax_class(digits):
    output = np.zeros((1, 10), np.float32)
    output[0, 7] = 0.9

    (prediction,) = PredictionEncoder(digits).encode(output)

    assert prediction["label"] == "7" and prediction["index"] == 7
    assert prediction["probabilities"]["7"] == pytest.approx(0.9)


def test_multilabel_encoder_applies_each_class_threshold(model_repo):
    # classes blue, green, red, round (sorted) with thresholds 0.5, 0.5, 0.45, 0.55
    encoder = PredictionEncoder(read_manifest(model_repo / "tags" / "1"))

    (prediction,) = encoder.encode(np.array([[0.5, 0.49, 0.46, 0.54]], np.float32))

    assert prediction["labels"] == ["blue", "red"]


def test_log_target_encoder_exponentiates(model_repo):
    encoder = PredictionEncoder(read_manifest(model_repo / "mass" / "1"))

    (prediction,) = encoder.encode(np.array([[np.log(4200.0)]], np.float32))

    assert prediction["value"] == pytest.approx(4200.0, rel=1e-5)


def test_regression_value_json_cannot_express_is_sent_as_null(model_repo):
    encoder = PredictionEncoder(read_manifest(model_repo / "mass" / "1"))

    predictions = encoder.encode(np.array([[1000.0], [np.nan]], np.float32))

    assert predictions == [{"value": None}, {"value": None}]
