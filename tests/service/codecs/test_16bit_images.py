"""16-bit grayscale images are scaled to 8 bits, not clipped to black and white."""

from __future__ import annotations

import io

import httpx
import numpy as np
from PIL import Image

from bundle.images import ResizeSpec, preprocess
from tests.hardening_support import WellBehavedClient


def gray_png(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    return buf.getvalue()


GRADIENT = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
EIGHT_BIT = gray_png(GRADIENT)
SIXTEEN_BIT = gray_png(GRADIENT.astype(np.uint16) * 257)  # the same picture, 16 bits per sample


def test_sixteen_bit_pixels_equal_the_eight_bit_ones():
    spec = ResizeSpec(16, 16, "squish")
    assert Image.open(io.BytesIO(SIXTEEN_BIT)).mode.startswith("I")  # really 16-bit on disk

    np.testing.assert_array_equal(preprocess(SIXTEEN_BIT, spec), preprocess(EIGHT_BIT, spec))


def test_a_sixteen_bit_png_predicts_like_its_eight_bit_twin(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)))
    with WellBehavedClient(server.url, "digits") as client:
        answers = [
            httpx.post(f"{server.url}/v1/models/digits/predict", content=body, headers={"Content-Type": "image/png"})
            for body in (SIXTEEN_BIT, EIGHT_BIT)
        ]
    client.assert_served()
    wide, narrow = (a.json()["predictions"][0]["probabilities"] for a in answers)
    np.testing.assert_allclose(list(wide.values()), list(narrow.values()), atol=1e-6)
