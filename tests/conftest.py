"""Shared fixtures: model repositories built from real (tiny) bundles, in-process clients, live servers."""

from __future__ import annotations

import base64
import io
import shutil
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

SLOW_STEPS = 500  # ~100 ms per ONNX Runtime run on one thread: long enough to pile requests up


def pytest_configure(config: pytest.Config) -> None:
    # Starlette's TestClient prefers a successor of httpx; httpx is what this project installs.
    config.addinivalue_line("filterwarnings", "ignore:Using `httpx` with `starlette.testclient`")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers from what a test uses: ``-m "not postgres"``, ``-m browser`` and so on select by them."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        parts = Path(str(item.fspath)).parts
        if "live_server" in fixtures:
            item.add_marker(pytest.mark.live_server)
        if "postgres_url" in fixtures or "postgresql" in item.name:
            item.add_marker(pytest.mark.postgres)
        if "deploy" in parts:
            item.add_marker(pytest.mark.deployment)


# -- bundles and repositories ------------------------------------------------------------------


@pytest.fixture(scope="session")
def bundle_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session; tests copy bundles out of it into their own repositories."""
    import torch  # imported here so tests that build no bundle do not pay for it

    from tests.bundle_factory import build_image_bundle, build_tabular_bundle

    torch.set_num_threads(1)  # exporting must not fight the other tests for the machine's few cores
    lib = tmp_path_factory.mktemp("bundle-library")
    build_image_bundle(lib, "digits", 1)
    build_image_bundle(lib, "digits", 2)
    build_image_bundle(lib, "tags", 1, task="multilabel", thresholds=[0.5, 0.5, 0.45, 0.55])
    build_image_bundle(lib, "counts", 1, task="regression", y_range=(0.0, 10.0))
    build_image_bundle(lib, "boxes", 1, task="regression", n_targets=2, target_names=["width", "height"])
    build_tabular_bundle(lib, "penguins", 1)
    build_tabular_bundle(lib, "mass", 1, task="regression", log_target=True)
    build_tabular_bundle(lib, "measures", 1, cat_names=())
    build_image_bundle(lib, "slow", 1, slow_steps=SLOW_STEPS)
    build_image_bundle(lib, "steady", 1, slow_steps=25)
    return lib


def install_bundle(library: Path, repo: Path, name: str, version: int) -> Path:
    """Copy a bundle into a repository the way a deployment should: stage, then rename into place."""
    target = repo / name / str(version)
    staging = repo / name / f".staging-{version}"
    staging.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(library / name / str(version), staging)
    staging.rename(target)
    return target


@pytest.fixture
def make_repo(bundle_library: Path, tmp_path: Path) -> Callable[..., Path]:
    """``make_repo(("digits", 1), ("penguins", 1))`` -> a fresh repository holding copies of those bundles."""
    counter = iter(range(1000))

    def make(*bundles: tuple[str, int]) -> Path:
        repo = tmp_path / f"repo-{next(counter)}"
        repo.mkdir()
        for name, version in bundles:
            install_bundle(bundle_library, repo, name, version)
        return repo

    return make


@pytest.fixture(scope="session")
def model_repo(bundle_library: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared read-only repository: one model of every task and input kind."""
    repo = tmp_path_factory.mktemp("models")
    for name in ("digits", "tags", "counts", "boxes", "penguins", "mass", "measures"):
        install_bundle(bundle_library, repo, name, 1)
    install_bundle(bundle_library, repo, "digits", 2)
    return repo


# -- settings and clients ----------------------------------------------------------------------


def service_settings(models: Path, **overrides: Any) -> Any:
    """Settings sized for a 2-core test machine: one ORT thread, small batches, no repository watching."""
    from service.settings import ServiceSettings

    values: dict[str, Any] = dict(
        models=models,
        intra_op_threads=1,
        preprocess_threads=2,
        max_batch_size=8,
        watch_interval_s=0.0,
        prediction_log=False,  # tests that want the log turn it on with a path of their own
    )
    values.update(overrides)
    stateless = values.get("new_versions") == "latest"
    if not stateless and not any(values.get(key) for key in ("state_url", "state_path", "rollout")):
        # the store that remembers each model's serving version (SERVING_NEW_VERSIONS=hold): one per app, never
        # a state.sqlite in the working directory shared by every test
        values["state_path"] = Path(tempfile.mkdtemp(prefix="fastprod-state-")) / "state.sqlite"
    return ServiceSettings(**values)


@contextmanager
def serve(models: Path, **overrides: Any) -> Iterator[Any]:
    """A Starlette TestClient around a fresh app, lifespan included."""
    from starlette.testclient import TestClient

    from service.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = TestClient(create_app(service_settings(models, **overrides)))
    with client:
        yield client


@pytest.fixture(scope="session")
def client(model_repo: Path) -> Iterator[Any]:
    """One client for the shared repository (tests must not change its state)."""
    with serve(model_repo, regions=["campsite-1", "marin"]) as c:
        yield c


@pytest.fixture
def make_client() -> Iterator[Callable[..., Any]]:
    """``make_client(repo, **settings)`` -> a TestClient closed at the end of the test."""
    with ExitStack() as stack:
        yield lambda models, **overrides: stack.enter_context(serve(models, **overrides))


# -- live servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A real uvicorn server on 127.0.0.1 in a background thread."""

    def __init__(self, models: Path, **overrides: Any) -> None:
        import uvicorn

        from service.app import create_app
        from service.http.connections import server_config

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = service_settings(models, **overrides)
        self.app = create_app(self.settings)
        # The configuration `python -m service` runs with: its connection limits included.
        config = server_config(self.app, self.settings, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout_s: float = 30.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the live server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def live_server() -> Iterator[Callable[..., LiveServer]]:
    """``live_server(repo, **settings)`` -> a started LiveServer, stopped at the end of the test."""
    servers: list[LiveServer] = []

    def start(models: Path, **overrides: Any) -> LiveServer:
        server = LiveServer(models, **overrides).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# -- request bodies ----------------------------------------------------------------------------


def image_bytes(
    fmt: str = "PNG", size: tuple[int, int] = (40, 30), color: Any = (200, 30, 30), mode: str = "RGB"
) -> bytes:
    """A small encoded image; the colour varies predictions between test images."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()


def gradient_image(seed: int, fmt: str = "PNG", size: tuple[int, int] = (24, 20)) -> bytes:
    """Images that differ from each other (random pixels from ``seed``)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def post_bytes(client: Any, path: str, body: Any, content_type: str = "image/png", **headers: str) -> Any:
    """POST a raw body; ``headers`` use underscores for dashes (``x_request_id="a"``)."""
    extra = {name.replace("_", "-"): value for name, value in headers.items()}
    return client.post(path, content=body, headers={"Content-Type": content_type, **extra})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def penguin(**values: Any) -> dict[str, Any]:
    row = {"island": "Dream", "sex": "female", "bill_length_mm": 39.5, "bill_depth_mm": 17.4, "flipper_length_mm": 186}
    row.update(values)
    return row


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# -- the shared state store (PostgreSQL) -------------------------------------------------------

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_reachable() -> str | None:
    """None when the local PostgreSQL answers, else why not."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - psycopg is in the serve extra
        return f"psycopg is not installed ({exc})"
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=2):
            return None
    except psycopg.Error as exc:
        return f"no PostgreSQL at 127.0.0.1:5432 ({str(exc).strip().splitlines()[0]})"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards.

    Skips with the reason when no server is reachable, except under CI (``CI`` set), where the
    PostgreSQL tests must run: there an unreachable server fails the test.
    """
    import os
    import uuid

    why_not = postgres_reachable()
    if why_not is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {why_not}")
        pytest.skip(why_not)
    import psycopg

    name = f"fastprod_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
