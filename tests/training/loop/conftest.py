"""A campsite world for the feedback loop: a live service serving digits v1, real traffic, real answers.

Traffic comes in two regions: ``campsite-1`` sends ordinary digits,
``campsite-2`` inverted ones (white background: the shifted slice v1 never
saw). Answers arrive two ways: a reviewer pages through the review queue and
answers what it lists (reviewer token), an outside system answers the rest
through the feedback API (feedback token).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import LiveServer

ADMIN, REVIEWER, REPORTER = "admin-secret", "reviewer-secret", "reporter-secret"
REGIONS = ["campsite-1", "campsite-2"]


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def digits(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images[start:stop] * (255 / 16)).round().astype(np.uint8), data.target[start:stop]


def write_validation_folder(root: Path, start: int = 1500, stop: int = 1700) -> Path:
    """The original validation set: ordinary digits v1 was never trained on, ``root/<label>/<i>.png``."""
    images, labels = digits(start, stop)
    for i, (pixels, label) in enumerate(zip(images, labels)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        (root / str(label) / f"{i:04d}.png").write_bytes(png(pixels))
    return root


@dataclass
class Campsites:
    """The service and what was sent to it: ``sent[request_id] = [(true label, region), ...]``."""

    server: LiveServer
    repo: Path
    log: Path
    valid: Path
    sent: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def serve_traffic(self, start: int, stop: int, batch: int = 20) -> None:
        """Digits ``start..stop``: even batches from campsite-1 as they are, odd ones from campsite-2 inverted."""
        images, labels = digits(start, stop)
        with httpx.Client(base_url=self.url, timeout=30) as http:
            for n, at in enumerate(range(0, len(images), batch)):
                region = REGIONS[n % 2]
                chunk = images[at : at + batch] if region == "campsite-1" else 255 - images[at : at + batch]
                files = [("file", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(chunk)]
                answer = http.post("/v1/models/digits/predict", files=files, headers={"X-Region": region})
                assert answer.status_code == 200, answer.text
                body = answer.json()
                self.sent[body["request_id"]] = [(str(t), region) for t in labels[at : at + batch]]

    def flush(self) -> None:
        """What the service answered reaches the log (listing the review queue waits for it)."""
        with httpx.Client(base_url=self.url, timeout=30) as http:
            http.get("/v1/predictions", params={"limit": 1}, headers={"Authorization": f"Bearer {REVIEWER}"})

    def answer(self, wrong: bool = False, reviewer_share: float = 0.5) -> dict[str, int]:
        """Ground truth for everything sent and not yet answered: the review queue's items by the reviewer (up
        to ``reviewer_share`` of them), the rest by the feedback API. ``wrong``: every label shifted by one."""
        counts = {"review": 0, "feedback": 0}
        done: set[tuple[str, int]] = set()
        total = sum(len(v) for v in self.sent.values())
        with httpx.Client(base_url=self.url, timeout=30) as http:
            queue = http.get(
                "/v1/predictions",
                params={"model": "digits", "limit": 200},
                headers={"Authorization": f"Bearer {REVIEWER}"},
            )
            assert queue.status_code == 200, queue.text
            for entry in queue.json()["predictions"]:
                key = (entry["request_id"], entry["item"])
                if key[0] in self.sent and counts["review"] < reviewer_share * total:
                    self._send(http, key, REVIEWER, wrong)
                    done.add(key)
                    counts["review"] += 1
            for request_id, items in self.sent.items():
                for item in range(len(items)):
                    if (request_id, item) not in done:
                        self._send(http, (request_id, item), REPORTER, wrong)
                        counts["feedback"] += 1
        self.sent.clear()
        return counts

    def _send(self, http: httpx.Client, key: tuple[str, int], token: str, wrong: bool) -> None:
        label = self.sent[key[0]][key[1]][0]
        if wrong:
            label = str((int(label) + 1) % 10)
        body = {"request_id": key[0], "item": key[1], "label": label}
        if token == REVIEWER:
            body["source"] = "review"  # a person answering from the review queue
        answer = http.post("/v1/feedback", json=body, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text


def log_images_setting() -> Any:
    """Keep every image's bytes in the log: ``all`` where the setting has levels, ``True`` where it is a flag."""
    from service.settings import ServiceSettings

    annotation = str(ServiceSettings.model_fields["prediction_log_images"].annotation)
    return True if annotation in ("bool", "<class 'bool'>") else "all"


@pytest.fixture(scope="session")
def digits_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits v1: a small CNN trained for one epoch on 240 ordinary digits (through training's own export)."""
    import torch

    from tests.bundle_factory import build_image_bundle

    torch.set_num_threads(1)
    lib = tmp_path_factory.mktemp("loop-library")
    build_image_bundle(lib, "digits", 1)
    return lib


@pytest.fixture
def campsites(digits_library: Path, tmp_path: Path) -> Iterator[Callable[..., Campsites]]:
    """``campsites(**settings)`` -> a live service on a fresh repository holding digits v1, its log in tmp_path."""
    from tests.conftest import install_bundle

    started: list[LiveServer] = []

    def start(**overrides: Any) -> Campsites:
        repo = tmp_path / "models"
        install_bundle(digits_library, repo, "digits", 1)
        log = tmp_path / "predictions.sqlite"
        settings: dict[str, Any] = dict(
            prediction_log=True,
            prediction_log_path=log,
            prediction_log_images=log_images_setting(),
            admin_token=ADMIN,
            reviewer_token=REVIEWER,
            feedback_token=REPORTER,
            regions=REGIONS,
            watch_interval_s=0.2,
            state_path=tmp_path / "state.sqlite",
        )
        settings.update(overrides)
        server = LiveServer(repo, **settings).start()
        started.append(server)
        return Campsites(server, repo, log, write_validation_folder(tmp_path / "valid"))

    yield start
    for server in started:
        server.stop()


def wait_for(condition: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


# a fixed rate and length: no learning-rate search in tests
FAST = ["--lr", "1e-2", "--epochs", "6", "--bs", "32", "--load-timeout", "30"]


def nightly_args(world, *extra: str) -> list[str]:
    return [
        "nightly",
        "--model",
        "digits",
        "--repo",
        str(world.repo),
        "--log",
        str(world.log),
        "--service",
        world.url,
        "--token",
        ADMIN,
        "--valid",
        str(world.valid),
        *FAST,
        *extra,
    ]
