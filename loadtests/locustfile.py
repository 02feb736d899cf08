"""Locust load test against a running service (point it at your own deployment or localhost).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 --headless -u 32 -r 8 -t 1m \
        --csv bench-results/locust --html bench-results/locust.html

The load shape is chosen with ``LOAD_SHAPE``: unset, the command line's
users and spawn rate; ``step`` adds ``STEP_USERS`` (8) users every
``STEP_SECONDS`` (30 s) up to ``MAX_USERS`` (64), then stops; ``spike`` holds
8 users, jumps to ``MAX_USERS`` for 30 s, and falls back (does the service
refuse cheaply and recover?). Shapes override ``-u``/``-r``/``-t``.

Image users POST digits PNGs; table users POST penguin rows. Regions and
request keys are spread so rollout routing and metrics see varied traffic.
"""

from __future__ import annotations

import io
import os
import random

import numpy as np
from locust import HttpUser, LoadTestShape, between, task
from PIL import Image

REGIONS = ["campsite-1", "campsite-2", "marin", "elsewhere"]
PENGUIN_ROWS = [
    {
        "island": "Torgersen",
        "bill_length_mm": 39.1,
        "bill_depth_mm": 18.7,
        "flipper_length_mm": 181,
        "body_mass_g": 3750,
        "sex": "male",
        "year": 2007,
    },
    {
        "island": "Biscoe",
        "bill_length_mm": 46.1,
        "bill_depth_mm": 13.2,
        "flipper_length_mm": 211,
        "body_mass_g": 4500,
        "sex": "female",
        "year": 2007,
    },
    {
        "island": "Dream",
        "bill_length_mm": 49.0,
        "bill_depth_mm": 19.5,
        "flipper_length_mm": 210,
        "body_mass_g": 3950,
        "sex": None,
        "year": 2008,
    },
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
        headers = {
            "Content-Type": "image/png",
            "X-Region": random.choice(REGIONS),
            "X-Request-Key": f"user-{random.randint(1, 1000)}",
        }
        self.client.post(
            "/v1/models/digits/predict", data=random.choice(DIGITS), headers=headers, name="/v1/models/digits/predict"
        )


class TableUser(HttpUser):
    wait_time = between(0.0, 0.05)

    @task
    def predict_penguins(self) -> None:
        headers = {"X-Region": random.choice(REGIONS), "X-Request-Key": f"user-{random.randint(1, 1000)}"}
        self.client.post(
            "/v1/models/penguins/predict",
            json={"rows": random.sample(PENGUIN_ROWS, 2)},
            headers=headers,
            name="/v1/models/penguins/predict",
        )


def _env(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


class StepLoad(LoadTestShape):
    """Add ``STEP_USERS`` users every ``STEP_SECONDS`` up to ``MAX_USERS``; one more step at the top, then stop."""

    def tick(self) -> tuple[int, float] | None:
        step, seconds, top = _env("STEP_USERS", 8), _env("STEP_SECONDS", 30), _env("MAX_USERS", 64)
        n = int(self.get_run_time() // seconds) + 1
        if step * (n - 1) > top:
            return None
        return min(top, step * n), float(step)


class SpikeLoad(LoadTestShape):
    """8 users for 30 s, ``MAX_USERS`` for 30 s, 8 users for 30 s more, then stop."""

    def tick(self) -> tuple[int, float] | None:
        t, top = self.get_run_time(), _env("MAX_USERS", 64)
        if t < 30:
            return 8, 8.0
        if t < 60:
            return top, float(top)
        if t < 90:
            return 8, float(top)
        return None


_SHAPES = {"step": StepLoad, "spike": SpikeLoad}
_chosen = os.environ.get("LOAD_SHAPE", "")
if _chosen and _chosen not in _SHAPES:
    raise SystemExit(f"LOAD_SHAPE must be one of {', '.join(_SHAPES)}, got {_chosen!r}")
# locust uses the one LoadTestShape subclass defined in the file: keep only the chosen one (or none)
for _name, _shape in _SHAPES.items():
    if _name != _chosen:
        del globals()[_shape.__name__]
