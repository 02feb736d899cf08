"""pretrained=True loads torchvision's ImageNet weights through its weights API, offline from the torch cache."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from training.builders import vision_learner
from training.cli.examples import write_shapes_folder
from training.data.images import ImageDataLoaders
from training.models.vision import imagenet_weights_path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_folder(tmp_path_factory.mktemp("data") / "shapes", per_class=8, size=32)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch cache, and no network: a download attempt fails as it does offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url: str, *args, **kwargs) -> None:
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch"


def dls_of(folder: Path) -> ImageDataLoaders:
    return ImageDataLoaders.from_folder(folder, valid_pct=0.25, size=32, method="squish", bs=8, seed=0)


def test_the_default_reads_imagenet_weights_from_the_torch_cache_offline(torch_home: Path, shapes: Path) -> None:
    cached = imagenet_weights_path("resnet18")
    assert cached == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    weights = torchvision.models.resnet18(weights=None).state_dict()  # random, saved where torchvision looks
    torch.save(weights, cached)

    learn = vision_learner(dls_of(shapes), "resnet18", device="cpu")

    body = learn.model[1]
    torch.testing.assert_close(body[0].weight, weights["conv1.weight"])
    assert not body[0].weight.requires_grad  # frozen for fine_tune, as fastai
    assert learn.model[0].mean == pytest.approx([0.485, 0.456, 0.406])  # ImageNet statistics


def test_offline_without_a_cached_file_is_a_clear_error_saying_where_to_put_one(torch_home: Path, shapes: Path) -> None:
    with pytest.raises(ValueError) as error:
        vision_learner(dls_of(shapes), "resnet18", device="cpu")
    message = str(error.value)
    assert str(imagenet_weights_path("resnet18")) in message and "download.pytorch.org" in message
    assert "pretrained=False" in message


def test_a_local_weights_file_is_used_as_given(tmp_path: Path, shapes: Path) -> None:
    path = tmp_path / "mine.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    learn = vision_learner(dls_of(shapes), "resnet18", pretrained=path, device="cpu")
    assert learn.model[0].mean == pytest.approx([0.485, 0.456, 0.406])


def test_from_scratch_archs_take_the_default_as_no_weights(torch_home: Path, shapes: Path) -> None:
    learn = vision_learner(dls_of(shapes), "small_resnet", device="cpu")
    assert all(p.requires_grad for p in learn.model.parameters())  # nothing frozen, nothing downloaded


def test_small_resnet_learns_a_generated_shapes_set_from_scratch(tmp_path: Path) -> None:
    # A short run, to keep the suite fast: the loss must fall well below chance (ln 3 = 1.10).
    # docs/training.md gives the longer comparison against a plain PyTorch CNN.
    folder = write_shapes_folder(tmp_path / "shapes", per_class=30, size=24, seed=1)
    dls = ImageDataLoaders.from_folder(folder, valid_pct=0.25, size=24, method="squish", bs=16, seed=0)
    learn = vision_learner(dls, "small_resnet", pretrained=False, seed=0, device="cpu")
    learn.show_table = False
    learn.fit_one_cycle(8, 1e-2)
    assert learn.recorder.rows[-1]["train_loss"] < 0.95
