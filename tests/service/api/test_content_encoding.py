"""Bodies are read as sent: a compressed one is 415 on both protocols, before it is read; identity is accepted."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, gradient_image, penguin
from tests.hardening_support import raw_connection, read_response

ROWS = json.dumps({"rows": [penguin()]}).encode()
PIXELS = json.dumps(
    {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 16, 16], "data": [0] * 768}]}
).encode()


def native(client: Any, path: str, body: bytes, content_type: str, *encodings: str) -> Any:
    headers = [("Content-Type", content_type), *(("Content-Encoding", e) for e in encodings)]
    return client.post(path, content=body, headers=headers)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP", "x-anything"])
def test_a_compressed_image_is_415_naming_the_encoding(client: Any, encoding: str) -> None:
    response = native(client, "/v1/models/digits/predict", gzip.compress(gradient_image(1)), "image/png", encoding)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert "Content-Encoding" in response.json()["error"]["message"]


def test_compressed_rows_are_415_even_when_the_bytes_are_plain_json(client: Any) -> None:
    assert native(client, "/v1/models/penguins/predict", ROWS, "application/json", "gzip").status_code == 415


def test_identity_is_accepted_however_it_is_written(client: Any) -> None:
    for encoding in ("identity", "Identity", " identity "):
        assert native(client, "/v1/models/penguins/predict", ROWS, "application/json", encoding).status_code == 200


def test_gzip_named_beside_identity_is_still_refused(client: Any) -> None:
    both = native(client, "/v1/models/penguins/predict", ROWS, "application/json", "identity", "gzip")
    assert both.status_code == 415
    v2 = client.post(
        "/v2/models/digits/infer",
        content=PIXELS,
        headers=[("Content-Type", "application/json"), ("Content-Encoding", "identity"), ("Content-Encoding", "gzip")],
    )
    assert v2.status_code == 415 and "Content-Encoding" in v2.json()["error"]


@pytest.mark.live_server
def test_a_compressed_body_is_refused_before_it_is_sent(model_repo: Path, live_server: Any) -> None:
    server: LiveServer = live_server(model_repo)
    sock = raw_connection(server.port)
    sock.sendall(
        b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: 1000000\r\n\r\n"
    )  # headers only: the million bytes never come

    status, _, body = read_response(sock)

    assert status == 415 and json.loads(body)["error"]["code"] == "unsupported_media_type"
