"""small images that are expensive to parse never stall the event loop, and are refused."""

from __future__ import annotations

import struct
import time
import zlib

import httpx
import pytest

from bundle.images import ImageError, check_structure
from tests.conftest import image_bytes
from tests.hardening_support import WellBehavedClient


def comment_flooded_jpeg(segments: int) -> bytes:
    """An 8x8 JPEG with ``segments`` empty COM segments between SOI and the rest: megabytes, 64 pixels."""
    jpeg = image_bytes("JPEG", size=(8, 8))
    return jpeg[:2] + b"\xff\xfe\x00\x02" * segments + jpeg[2:]


def chunk_flooded_png(chunks: int) -> bytes:
    """An 8x8 PNG with ``chunks`` empty ancillary chunks before its image data."""
    png = image_bytes("PNG", size=(8, 8))
    empty = struct.pack(">I", 0) + b"tEXt" + struct.pack(">I", zlib.crc32(b"tEXt"))
    ihdr_end = 8 + 25
    return png[:ihdr_end] + empty * chunks + png[ihdr_end:]


def test_the_header_walk_refuses_floods_and_passes_real_images():
    check_structure(image_bytes("JPEG", size=(300, 200)), "JPEG")
    check_structure(image_bytes("PNG", size=(300, 200)), "PNG")
    with pytest.raises(ImageError, match="segments"):
        check_structure(comment_flooded_jpeg(5000), "JPEG")
    with pytest.raises(ImageError, match="chunks"):
        check_structure(chunk_flooded_png(5000), "PNG")


@pytest.mark.parametrize("flood", [comment_flooded_jpeg(1_000_000), chunk_flooded_png(300_000)], ids=["jpeg", "png"])
def test_a_flooded_thumbnail_is_refused_quickly_and_the_loop_keeps_answering(make_repo, live_server, flood):
    server = live_server(make_repo(("digits", 1)))
    with WellBehavedClient(server.url, "digits", interval_s=0.02) as client:
        started = time.perf_counter()
        response = httpx.post(
            f"{server.url}/v1/models/digits/predict", content=flood, headers={"Content-Type": "image/png"}, timeout=30
        )
        elapsed = time.perf_counter() - started
    client.assert_served(max_latency_s=1.0)
    assert response.status_code == 422, response.text
    assert "body" in response.json()["error"]["message"]
    assert elapsed < 5, f"refusing a {len(flood)} byte flood took {elapsed:.1f} s"
