"""A bounded fuzzing harness for the parsers that read client bytes: image decode, multipart, JSON rows, CSV.

Each property feeds generated (often hostile) bodies to the real decoders and
requires one of two outcomes: arrays, or a ServiceError with a 4xx status,
never anything else (which the service would answer 500), and never a hang.
Bounded: a fixed number of examples per property, so it runs in CI.
"""

from __future__ import annotations

import io
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bundle.manifest import read_manifest
from service.codecs.images import ImageInputs
from service.codecs.tables import TabularInputs
from service.http.errors import ServiceError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
PER_INPUT_S = 2.0


@pytest.fixture(scope="module")
def digits(bundle_library):
    return ImageInputs(
        read_manifest(bundle_library / "digits" / "1"), 4, 10**6, inline_max_pixels=4096, max_request_pixels=2 * 10**6
    )


@pytest.fixture(scope="module")
def penguins(bundle_library):
    return TabularInputs(read_manifest(bundle_library / "penguins" / "1"), 4, max_columns=64, max_cells=200)


def decoded_or_refused(call) -> None:
    started = time.perf_counter()
    try:
        call()
    except ServiceError as exc:
        assert 400 <= exc.status < 500, f"{type(exc).__name__} {exc.status}: {exc}"
    assert time.perf_counter() - started < PER_INPUT_S


def _encoded(fmt: str, size: tuple[int, int], mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format=fmt)
    return buf.getvalue()


seeds = st.builds(
    _encoded,
    st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]),
    st.tuples(st.integers(1, 64), st.integers(1, 64)),
    st.just("RGB"),
)


@st.composite
def mutated_images(draw) -> bytes:
    """A real image, then cut, overwritten, spliced or padded: the shapes hostile images take."""
    data = bytearray(draw(seeds))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["cut", "flip", "insert", "repeat"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "cut":
            del data[at:]
        elif action == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(max_size=64))
        elif action == "repeat":
            data[at:at] = bytes(data[at : at + 16]) * draw(st.integers(1, 200))
    return bytes(data)


@FUZZ
@given(body=st.one_of(mutated_images(), st.binary(max_size=512)))
def test_image_bodies_decode_or_are_refused(digits, body):
    decoded_or_refused(lambda: digits.decode_in_place("image/png", "image/png", body))
    decoded_or_refused(lambda: digits.decode("image/png", "image/png", body))


@st.composite
def multipart_bodies(draw) -> tuple[str, bytes]:
    boundary = draw(st.text("abcdefXYZ0123456789-", min_size=1, max_size=20))
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(["file", "file", "other", ""]))
        headers = draw(
            st.sampled_from(
                [
                    f'Content-Disposition: form-data; name="{name}"; filename="a.png"\r\nContent-Type: image/png',
                    f"Content-Disposition: form-data; name={name}",
                    "Content-Type: image/png",
                    "",
                    "X: y",
                ]
            )
        )
        payload = draw(st.one_of(mutated_images(), st.binary(max_size=64)))
        parts.append(f"--{boundary}\r\n{headers}\r\n\r\n".encode() + payload + b"\r\n")
    body = draw(st.binary(max_size=16)) + b"".join(parts) + draw(st.sampled_from([f"--{boundary}--\r\n".encode(), b""]))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(body)))
        body = body[:at]
    content_type = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={boundary}",
                "multipart/form-data",
                f'multipart/form-data; boundary="{boundary}"',
            ]
        )
    )
    return content_type, body


@FUZZ
@given(request=multipart_bodies())
def test_multipart_bodies_decode_or_are_refused(digits, request):
    content_type, body = request
    decoded_or_refused(lambda: digits.decode("multipart/form-data", content_type, body))


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
columns = st.sampled_from(["island", "sex", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "x"])
rows = st.lists(st.dictionaries(columns, json_values, max_size=6) | json_values, max_size=6)


@FUZZ
@given(document=st.one_of(st.fixed_dictionaries({"rows": rows}), json_values), raw=st.binary(max_size=64))
def test_json_rows_decode_or_are_refused(penguins, document, raw):
    body = json.dumps(document).encode()
    decoded_or_refused(lambda: penguins.decode("application/json", "application/json", body))
    decoded_or_refused(lambda: penguins.decode("application/json", "application/json", raw))
    huge = body.replace(b"1", b"1" * 5000, 1)
    decoded_or_refused(lambda: penguins.decode("application/json", "application/json", huge))


cells = st.one_of(st.text(max_size=8), st.sampled_from(["", "NaN", "inf", "-1e999", "1e400", '"', "Dream", "39.5"]))


@FUZZ
@given(
    header=st.lists(st.one_of(columns, st.text(max_size=6)), min_size=0, max_size=8),
    table=st.lists(st.lists(cells, max_size=9), max_size=7),
    separator=st.sampled_from([",", ";", "\t"]),
    raw=st.binary(max_size=64),
)
def test_csv_bodies_decode_or_are_refused(penguins, header, table, separator, raw):
    lines = [separator.join(header)] + [separator.join(row) for row in table]
    body = "\n".join(lines).encode()
    decoded_or_refused(lambda: penguins.decode("text/csv", "text/csv", body))
    decoded_or_refused(lambda: penguins.decode("text/csv", "text/csv", raw))
