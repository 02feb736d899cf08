"""client-facing messages carry no absolute paths and no exception class names."""

from __future__ import annotations

import json

import httpx
from starlette.requests import Request

from service.http.errors import error_response
from tests.hardening_support import WellBehavedClient


def test_refusals_in_readyz_and_the_model_page_show_no_paths(make_repo, live_server):
    repo = make_repo(("digits", 1), ("penguins", 1))
    (repo / "penguins" / "1" / "model.onnx").write_bytes(b"tampered")  # refused: sha256 mismatch
    server = live_server(repo)
    with WellBehavedClient(server.url, "digits") as client:
        ready = httpx.get(f"{server.url}/readyz")
        page = httpx.get(f"{server.url}/v1/models/penguins")
    client.assert_served()
    assert ready.status_code == 503
    for text in (ready.text, json.dumps(page.json()["refused"])):
        assert "sha256" in text
        assert str(repo) not in text and str(repo.parent) not in text, text


def test_an_unexpected_error_names_no_exception_class():
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})

    response = error_response(request, KeyError("/srv/secret/path"))

    body = json.loads(response.body)
    assert response.status_code == 500 and body["error"]["code"] == "internal"
    assert "KeyError" not in body["error"]["message"] and "/srv" not in body["error"]["message"]
