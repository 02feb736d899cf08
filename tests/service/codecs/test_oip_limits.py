"""Open Inference Protocol requests are judged by what they declare before anything is allocated for them.

A shape is checked against what its body could carry (each element takes at least a byte) and, before
any data is read, against the model's inputs and item limit; outputs are named once each and few; what
the response would echo must be encodable. Each answer is a 4xx naming the field, never a 500.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
from typing import Any

import pytest

INFER = "/v2/models/digits/infer"
PIXELS = {"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 16, 16], "data": [0] * 768}


def with_binary(header: dict[str, Any], binary: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + binary, {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def infer(client: Any, body: dict[str, Any]) -> Any:
    return client.post(INFER, json=body)


def error(response: Any) -> str:
    assert set(response.json()) == {"error"}, response.text
    return response.json()["error"]


def test_a_bytes_shape_beyond_its_body_is_refused_before_anything_is_allocated(client: Any) -> None:
    body, headers = with_binary(
        {
            "inputs": [
                {"name": "pixels", "datatype": "BYTES", "shape": [10_000_000], "parameters": {"binary_data_size": 4}}
            ]
        },
        struct.pack("<I", 0),
    )  # about 120 bytes that declare ten million elements
    tracemalloc.start()
    try:
        response = client.post(INFER, content=body, headers=headers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 422 and "pixels" in error(response)
    assert peak < 5_000_000, f"{peak / 1e6:.0f} MB allocated for a {len(body)}-byte request"


@pytest.mark.parametrize("shape", [[0, 2**63], [2**62], [2**31, 2**31, 0], [1] * 9])
def test_shapes_no_array_could_have_are_422(client: Any, shape: list[int]) -> None:
    response = infer(client, {"inputs": [{**PIXELS, "shape": shape, "data": []}]})
    assert response.status_code == 422 and "shape" in error(response)


def test_a_bytes_count_over_the_item_limit_is_413_from_the_shape_before_the_data_is_read(client: Any) -> None:
    elements = b"".join(struct.pack("<I", 0) for _ in range(100_000))
    broken = elements[:40] + struct.pack("<I", 10**6) + elements[44:]  # element 10 claims a megabyte
    body, headers = with_binary(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "BYTES",
                    "shape": [100_000],
                    "parameters": {"binary_data_size": len(broken)},
                }
            ]
        },
        broken,
    )
    response = client.post(INFER, content=body, headers=headers)
    assert response.status_code == 413 and "100000 items" in error(response)  # the data was never walked


def test_a_json_bytes_count_over_the_item_limit_is_413_whatever_its_data(client: Any) -> None:
    response = infer(client, {"inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [65], "data": ["x"]}]})
    assert response.status_code == 413 and "65 items" in error(response)


def test_data_longer_than_its_shape_is_refused_naming_the_shape(client: Any) -> None:
    nested = [[[[0] * 16] * 16] * 3, [[[0] * 16] * 16] * 3]  # two images' worth for a shape of one
    response = infer(client, {"inputs": [{**PIXELS, "data": nested}]})
    assert response.status_code == 422 and "more data elements than the 768" in error(response)


def test_data_nested_deeper_than_its_shape_is_refused(client: Any) -> None:
    deep: Any = [0] * 768
    for _ in range(5):
        deep = [deep]
    response = infer(client, {"inputs": [{**PIXELS, "data": deep}]})
    assert response.status_code == 422 and "nested deeper" in error(response)


def test_an_output_named_twice_is_refused(client: Any) -> None:
    response = infer(client, {"inputs": [PIXELS], "outputs": [{"name": "label"}, {"name": "label"}]})
    assert response.status_code == 422 and "outputs[1]" in error(response) and "twice" in error(response)


def test_the_number_of_requested_outputs_is_capped(client: Any) -> None:
    outputs = [{"name": f"output-{i}"} for i in range(10_000)]
    response = infer(client, {"inputs": [PIXELS], "outputs": outputs})
    assert response.status_code == 413 and "outputs" in error(response)
    assert len(response.content) < 200


@pytest.mark.parametrize("parameters", [{"big": 2**70}, {"deep": json.loads("[" * 300 + "]" * 300)}])
def test_parameters_the_response_could_not_echo_are_refused(client: Any, parameters: dict[str, Any]) -> None:
    response = infer(client, {"inputs": [PIXELS], "parameters": parameters})
    assert response.status_code == 422 and "parameters" in error(response)


@pytest.mark.parametrize("length", ["²", "١٢", "12abc", "9" * 5000])
def test_a_header_length_that_is_no_ascii_number_is_400(client: Any, length: str) -> None:
    response = client.post(
        INFER,
        content=json.dumps({"inputs": [PIXELS]}).encode(),
        headers=[(b"Inference-Header-Content-Length", length.encode())],
    )
    assert response.status_code == 400 and "Inference-Header-Content-Length" in error(response)


@pytest.mark.parametrize("value", [1e300, -1e16, 2**62])
def test_a_number_beyond_the_native_apis_range_is_refused_naming_the_column(client: Any, value: float) -> None:
    columns = {"island": ("BYTES", "Dream"), "sex": ("BYTES", "female"), "bill_depth_mm": ("FP64", 17.4)}
    columns |= {"bill_length_mm": ("FP64" if isinstance(value, float) else "INT64", value)}
    columns |= {"flipper_length_mm": ("FP32", 186.0)}
    inputs = [{"name": n, "datatype": t, "shape": [1], "data": [v]} for n, (t, v) in columns.items()]
    response = client.post("/v2/models/penguins/infer", json={"inputs": inputs})
    assert response.status_code == 422 and "bill_length_mm[0]" in error(response) and "range" in error(response)
