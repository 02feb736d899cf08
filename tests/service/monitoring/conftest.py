"""Bundles the monitoring tests share: a calibrated digits CNN and a tabular classifier (shapes); and for the
signal tests, models trained on part of their data, with held-out items they never saw."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bundle.manifest import read_manifest, sha256_file, write_manifest
from loadtests.signal_data import Split, digits_split
from tests.conftest import install_bundle


@pytest.fixture(scope="session")
def monitoring_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits v1 (false-alarm rate 0.01) and v2 (0.1): one CNN on 1,200 digits, calibrated on the energy of its
    logits; v3: the same CNN as bundles were before the logits output (1 - max probability, at 0.1), served only
    where a test installs it; shapes v1: a tabular model."""
    import torch

    from tests.bundle_factory import build_calibrated_digits, build_shapes_bundle

    torch.set_num_threads(1)
    lib = tmp_path_factory.mktemp("monitoring-library")
    build_calibrated_digits(lib, "digits", [0.01, 0.1], pre_logits_rate=0.1)
    build_shapes_bundle(lib, "shapes", 1)
    return lib


@pytest.fixture(scope="session")
def monitoring_repo(monitoring_library: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("monitoring-models")
    for name, version in (("digits", 1), ("digits", 2), ("shapes", 1)):
        install_bundle(monitoring_library, repo, name, version)
    return repo


@pytest.fixture(scope="session")
def shapes_repo(monitoring_library: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the tabular shapes classifier: the quickest service to start with a prediction log."""
    repo = tmp_path_factory.mktemp("shapes-models")
    install_bundle(monitoring_library, repo, "shapes", 1)
    return repo


@pytest.fixture(scope="session")
def digit_arms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny digits bundles for rollouts: v2 answers exactly like v1; v3 is v1 with its class list reversed (every
    label differs from v1's)."""
    import torch

    from tests.bundle_factory import _handmade_image_bundle

    torch.set_num_threads(1)
    lib = tmp_path_factory.mktemp("digit-arms")
    _handmade_image_bundle(lib, "digits", 1, seed=1)
    _handmade_image_bundle(lib, "digits", 2, seed=1)
    _handmade_image_bundle(lib, "digits", 3, seed=1, classes=[str(9 - i) for i in range(10)])
    return lib


DIGITS_SIZE = 28  # the digits example's size: at 16 px the same CNN's features tell noise apart far less


@pytest.fixture(scope="session")
def digits_held_out() -> Split:
    """The 30 % of scikit-learn's digits the ``signals_library`` digits model never saw (random, in-domain)."""
    return digits_split(seed=0)[1]


@pytest.fixture(scope="session")
def signals_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``digits`` v1 (the default: the Mahalanobis score) and v2 (``ood_score="energy"``): one CNN, two epochs on
    a random 70 % of the digits at 28 px; v3: v2 rewritten as the export before feature scores wrote it;
    ``shapes`` v1 and v2: one tabular classifier (``tests.bundle_factory.build_shapes_bundle``) twice."""
    import torch

    from loadtests.signal_data import export_to, train_images
    from tests.bundle_factory import build_shapes_bundle

    torch.set_num_threads(1)
    lib = tmp_path_factory.mktemp("signals-library")
    model_split, _ = digits_split(seed=0)
    learn = train_images(model_split, DIGITS_SIZE, "simple_cnn", epochs=2, lr=1e-2, seed=0, bs=32)
    export_to(learn, lib, "digits", 1)
    export_to(learn, lib, "digits", 2, ood_score="energy")
    as_previous_export(copy_version(lib / "digits" / "2", 3))
    build_shapes_bundle(lib, "shapes", 1)
    copy_version(lib / "shapes" / "1", 2)
    return lib


def copy_version(folder: Path, version: int) -> Path:
    """The bundle at ``folder`` copied beside it as ``version``."""
    target = folder.parent / str(version)
    shutil.copytree(folder, target)
    manifest = read_manifest(target)
    manifest.version = version
    write_manifest(target, manifest)
    return target


def as_previous_export(folder: Path) -> Path:
    """Rewrite an energy bundle as export wrote it before feature-space scores, noise-aware drift and calibration
    errors existed: no ``ood_thresholds``, ``feature_output`` or ``calibration_errors`` in the manifest, no
    ``feature_space`` or ``predictions_from`` in reference.json."""
    reference = json.loads((folder / "reference.json").read_text())
    reference.pop("feature_space", None)
    reference.pop("predictions_from", None)
    (folder / "reference.json").write_text(json.dumps(reference))
    raw = json.loads((folder / "manifest.json").read_text())
    for key in ("ood_thresholds", "feature_output", "calibration_errors"):
        raw["monitoring"].pop(key, None)
    raw["files"]["reference.json"] = sha256_file(folder / "reference.json")
    (folder / "manifest.json").write_text(json.dumps(raw, indent=2))
    return folder


def install(library: Path, repo: Path, name: str, *versions: int) -> Path:
    for version in versions:
        shutil.copytree(library / name / str(version), repo / name / str(version))
    return repo


def inverted(images: list[np.ndarray]) -> list[np.ndarray]:
    return [255 - image for image in images]
