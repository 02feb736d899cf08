"""only allow-listed image formats are decoded, judged by the bytes, whatever the Content-Type says."""

from __future__ import annotations

import httpx

from tests.conftest import image_bytes
from tests.hardening_support import WellBehavedClient

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


def post(url: str, body: bytes, content_type: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/digits/predict", content=body, headers={"Content-Type": content_type})


def test_eps_is_refused_without_being_interpreted(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)))
    with WellBehavedClient(server.url, "digits") as client:
        for content_type in ("image/png", "application/octet-stream"):
            response = post(server.url, EPS, content_type)
            assert response.status_code == 422, response.text
            assert "not a recognised image format" in response.json()["error"]["message"]
    client.assert_served()


def test_tiff_sent_as_png_is_refused_by_default(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)))
    with WellBehavedClient(server.url, "digits") as client:
        response = post(server.url, image_bytes("TIFF"), "image/png")
    client.assert_served()
    assert response.status_code == 415, response.text
    assert "TIFF images are not accepted" in response.json()["error"]["message"]


def test_tiff_is_decoded_when_listed_in_the_settings(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)), image_formats=["PNG", "JPEG", "TIFF"])

    response = post(server.url, image_bytes("TIFF"), "image/tiff")

    assert response.status_code == 200, response.text
    assert post(server.url, image_bytes("GIF"), "image/gif").status_code == 415  # GIF was left off this list
