"""Bundles the monitoring tests share: a calibrated digits CNN and a tabular classifier (shapes)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
