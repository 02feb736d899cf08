"""Locust load test against a running service (point it at your own deployment or localhost).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 --headless -u 32 -r 8 -t 1m

Image users POST digits PNGs; table users POST penguin rows. Regions and
request keys are spread so rollout routing and metrics see varied traffic.
"""

from __future__ import annotations

import io
import random

import numpy as np
from locust import HttpUser, between, task
from PIL import Image

REGIONS = ["campsite-1", "campsite-2", "marin", "elsewhere"]
PENGUIN_ROWS = [
    {"island": "Torgersen", "bill_length_mm": 39.1, "bill_depth_mm": 18.7, "flipper_length_mm": 181,
     "body_mass_g": 3750, "sex": "male", "year": 2007},
    {"island": "Biscoe", "bill_length_mm": 46.1, "bill_depth_mm": 13.2, "flipper_length_mm": 211,
     "body_mass_g": 4500, "sex": "female", "year": 2007},
    {"island": "Dream", "bill_length_mm": 49.0, "bill_depth_mm": 19.5, "flipper_length_mm": 210,
     "body_mass_g": 3950, "sex": None, "year": 2008},
]


def _digit_pngs(n: int = 32) -> list[bytes]:
    from sklearn.datasets import load_digits

    images = (load_digits().images[:n] * (255 / 16)).astype(np.uint8)
    out = []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image, mode="L").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


DIGITS = _digit_pngs()


class ImageUser(HttpUser):
    wait_time = between(0.0, 0.05)

    @task(3)
    def predict_digit(self) -> None:
        headers = {"Content-Type": "image/png", "X-Region": random.choice(REGIONS),
                   "X-Request-Key": f"user-{random.randint(1, 1000)}"}
        self.client.post("/v1/models/digits/predict", data=random.choice(DIGITS), headers=headers,
                         name="/v1/models/digits/predict")


class TableUser(HttpUser):
    wait_time = between(0.0, 0.05)

    @task
    def predict_penguins(self) -> None:
        headers = {"X-Region": random.choice(REGIONS), "X-Request-Key": f"user-{random.randint(1, 1000)}"}
        self.client.post("/v1/models/penguins/predict", json={"rows": random.sample(PENGUIN_ROWS, 2)},
                         headers=headers, name="/v1/models/penguins/predict")
