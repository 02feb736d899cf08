"""Bundles are readable by any user; a service refuses (logs, counts) one it cannot read and serves the others."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import service.app  # noqa: F401  (imported as root: the interpreter's own files may be private to root)
from tests.conftest import install_bundle, metric_value, penguin

NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def as_another_user() -> Iterator[None]:
    """Run the block as a user who owns none of the files (root reads everything, so drop to nobody)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_repo(bundle_library: Path) -> Iterator[Path]:
    """A repository any user may traverse (pytest's own tmp folders are private to their owner)."""
    root = Path(tempfile.mkdtemp(prefix="fastprod-repo-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_exported_bundles_are_folders_0755_and_files_0644_under_umask_022(bundle_library: Path) -> None:
    old = os.umask(0o022)
    os.umask(old)
    if old != 0o022:
        pytest.skip(f"this process runs under umask {old:03o}")
    bundle = bundle_library / "penguins" / "1"
    assert mode(bundle) == 0o755
    assert {p.name: mode(p) for p in bundle.iterdir()} == {
        name: 0o644 for name in ("learner.pkl", "manifest.json", "model.onnx", "reference.json")
    }


def test_make_readable_honours_the_umask(tmp_path: Path) -> None:
    from training.export import make_readable

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / "a.txt").write_text("x")
    os.chmod(folder / "a.txt", 0o600)
    old = os.umask(0o027)
    try:
        make_readable(folder)
    finally:
        os.umask(old)
    assert (mode(folder), mode(folder / "a.txt")) == (0o750, 0o640)


def test_an_unreadable_bundle_is_refused_at_startup_and_the_others_keep_serving(
    shared_repo: Path, bundle_library: Path, make_client, caplog
) -> None:
    install_bundle(bundle_library, shared_repo, "penguins", 1)
    locked = install_bundle(bundle_library, shared_repo, "digits", 1)
    os.chmod(locked, 0o700)

    with caplog.at_level(logging.ERROR, logger="service.models.registry"), as_another_user():
        client = make_client(shared_repo, watch_interval_s=0)

    assert "refused bundle digits v1 (unreadable)" in caplog.text
    assert client.post("/v1/models/penguins/predict", json={"rows": [penguin()]}).status_code == 200
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "serving_model_load_failures_total", model="digits", reason="unreadable") == 1


def test_an_unreadable_bundle_that_appears_later_is_refused_logged_and_counted(
    shared_repo: Path, bundle_library: Path, make_client, caplog
) -> None:
    install_bundle(bundle_library, shared_repo, "penguins", 1)
    with as_another_user():
        client = make_client(shared_repo, watch_interval_s=0)
    late = shared_repo / "penguins" / "7"
    shutil.copytree(bundle_library / "penguins" / "1", late)
    os.chmod(late / "manifest.json", 0o600)

    registry = client.app.state.components.registry
    with caplog.at_level(logging.ERROR, logger="service.models.registry"), as_another_user():
        client.portal.call(lambda: registry.refresh(settled_only=False))

    assert "refused bundle penguins v7 (unreadable)" in caplog.text
    assert client.post("/v1/models/penguins/predict", json={"rows": [penguin()]}).status_code == 200
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "serving_model_load_failures_total", model="penguins", reason="unreadable") == 1
