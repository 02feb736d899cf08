"""Vision and tabular models: shapes, normalisation, pretrained weights from a local file, splitters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from training.models.layers import AdaptiveConcatPool2d, SigmoidRange
from training.models.tabular import TabularModel, emb_sz_rule, get_emb_szs
from training.models.vision import ARCHS, ImageNormalize, create_vision_model, splitter_for, vision_splitter

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def test_image_normalize_scales_uint8_pixels_then_normalises() -> None:
    norm = ImageNormalize(MEAN, STD)
    pixels = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = norm(pixels)
    expected = (1.0 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], expected)


def test_image_normalize_reads_back_mean_and_std_as_python_lists() -> None:
    norm = ImageNormalize(MEAN, STD)
    assert norm.mean == pytest.approx(list(MEAN))
    assert norm.std == pytest.approx(list(STD))
    assert all(type(v) is float for v in norm.mean + norm.std)


def test_image_normalize_keeps_its_statistics_in_the_state_dict() -> None:
    restored = ImageNormalize((0, 0, 0), (1, 1, 1))
    restored.load_state_dict(ImageNormalize(MEAN, STD).state_dict())
    assert restored.mean == pytest.approx(list(MEAN))


def test_simple_cnn_maps_uint8_images_to_one_output_per_class() -> None:
    model = create_vision_model("simple_cnn", 10, MEAN, STD).eval()
    out = model(torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8))
    assert out.shape == (4, 10)


def test_vision_model_is_normalize_then_body_then_fastai_head() -> None:
    model = create_vision_model("resnet18", 3, MEAN, STD, pretrained=False)
    normalize, body, head = model
    assert isinstance(normalize, ImageNormalize)
    assert isinstance(head[0], AdaptiveConcatPool2d)
    kinds = [type(layer) for layer in head]
    assert kinds == [
        AdaptiveConcatPool2d,
        nn.Flatten,
        nn.BatchNorm1d,
        nn.Dropout,
        nn.Linear,
        nn.ReLU,
        nn.BatchNorm1d,
        nn.Dropout,
        nn.Linear,
    ]
    assert [layer.p for layer in head if isinstance(layer, nn.Dropout)] == [0.25, 0.5]


@pytest.mark.parametrize("arch", ["simple_cnn", "small_resnet"])
def test_from_scratch_archs_end_in_global_average_pooling_and_one_linear(arch: str) -> None:
    head = create_vision_model(arch, 3, MEAN, STD)[2]
    kinds = [type(layer) for layer in head]
    assert kinds == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Linear]


def test_simple_cnn_convolves_at_full_resolution_and_max_pools_between_blocks() -> None:
    body = create_vision_model("simple_cnn", 3, MEAN, STD)[1]
    kinds = [type(layer) for layer in body[:4]]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert all(conv.stride == (1, 1) for conv in body.modules() if isinstance(conv, nn.Conv2d))
    assert [conv.out_channels for conv in body.modules() if isinstance(conv, nn.Conv2d)] == [32, 64, 128, 256]


def test_small_resnet_blocks_start_with_every_batchnorm_at_one() -> None:
    body = create_vision_model("small_resnet", 3, MEAN, STD)[1]
    assert all(torch.all(bn.weight == 1) for bn in body.modules() if isinstance(bn, nn.BatchNorm2d))


def test_resnet_body_keeps_everything_but_the_pool_and_classifier() -> None:
    model = create_vision_model("resnet18", 5, MEAN, STD, pretrained=False).eval()
    body = model[1]
    assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.Linear)) for m in body.modules())
    assert model[2][4].in_features == 2 * 512
    assert model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 5)


def test_y_range_bounds_the_outputs_with_a_sigmoid_range() -> None:
    model = create_vision_model("simple_cnn", 1, MEAN, STD, y_range=(-1.0, 2.0)).eval()
    assert isinstance(model[2][-1], SigmoidRange)
    out = model(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8))
    assert out.min() >= -1.0 and out.max() <= 2.0


def test_pretrained_state_dict_from_a_local_file_is_loaded(tmp_path: Path) -> None:
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = create_vision_model("resnet18", 2, MEAN, STD, pretrained=path)
    assert torch.equal(model[1][0].weight, source.conv1.weight)
    assert torch.equal(model[1][4][0].bn1.running_mean, source.layer1[0].bn1.running_mean)


def test_mismatching_pretrained_weights_raise_naming_the_file_and_key(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"wrong\.pth.*resnet18.*conv1\.weight has shape \(64, 1, 7, 7\)"):
        create_vision_model("resnet18", 2, MEAN, STD, pretrained=path)


def test_weights_of_another_arch_raise_listing_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "small.pth"
    torch.save(create_vision_model("simple_cnn", 2, MEAN, STD)[1].state_dict(), path)
    with pytest.raises(ValueError, match="missing key conv1.weight"):
        create_vision_model("resnet18", 2, MEAN, STD, pretrained=path)


def test_missing_pretrained_file_raises_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        create_vision_model("resnet18", 2, MEAN, STD, pretrained=tmp_path / "absent.pth")


def test_unknown_arch_raises_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match="resnet18, resnet34, resnet50, small_resnet, simple_cnn"):
        create_vision_model("vgg16", 2, MEAN, STD)
    with pytest.raises(ValueError, match="unknown arch"):
        splitter_for("vgg16")


def test_vision_splitter_gives_body_and_head_groups_covering_every_parameter() -> None:
    model = create_vision_model("simple_cnn", 4, MEAN, STD)
    body, head = vision_splitter(model)
    assert {id(p) for p in body} == {id(p) for p in model[1].parameters()}
    assert {id(p) for p in head} == {id(p) for p in model[2].parameters()}
    assert len(body) + len(head) == len(list(model.parameters()))
    assert all(splitter_for(arch) is vision_splitter for arch in ARCHS)


def test_tabular_model_combines_embeddings_and_continuous_columns() -> None:
    model = TabularModel([(5, 3), (4, 2)], n_cont=3, out_sz=2, layers=(8, 4)).eval()
    out = model(torch.tensor([[1, 2], [4, 0]]), torch.randn(2, 3))
    assert out.shape == (2, 2)
    assert model.layers[0].in_features == 3 + 2 + 3


def test_tabular_model_blocks_are_linear_relu_batchnorm_dropout() -> None:
    model = TabularModel([(5, 3)], n_cont=2, out_sz=1, layers=(8,), ps=0.1)
    assert [type(layer) for layer in model.layers] == [nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear]


def test_tabular_model_works_without_categorical_columns() -> None:
    model = TabularModel([], n_cont=3, out_sz=1, layers=(8,)).eval()
    assert model(torch.zeros(4, 0, dtype=torch.int64), torch.randn(4, 3)).shape == (4, 1)


def test_tabular_model_works_without_continuous_columns() -> None:
    model = TabularModel([(5, 3), (3, 2)], n_cont=0, out_sz=3, layers=(8,)).eval()
    out = model(torch.tensor([[1, 2], [3, 0], [0, 1]]), torch.zeros(3, 0))
    assert out.shape == (3, 3)


def test_tabular_model_needs_at_least_one_column() -> None:
    with pytest.raises(ValueError, match="at least one categorical or continuous column"):
        TabularModel([], n_cont=0, out_sz=1)


def test_tabular_model_y_range_bounds_regression_outputs() -> None:
    model = TabularModel([], n_cont=2, out_sz=1, layers=(8,), y_range=(0.0, 5.0)).eval()
    out = model(torch.zeros(16, 0, dtype=torch.int64), 100 * torch.randn(16, 2))
    assert out.min() >= 0.0 and out.max() <= 5.0


def test_tabular_model_rejects_a_dropout_list_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="2 dropout values for 1 layers"):
        TabularModel([], n_cont=2, out_sz=1, layers=(8,), ps=[0.1, 0.2])


def test_embedding_sizes_follow_fastais_rule_of_thumb() -> None:
    assert emb_sz_rule(2) == 2
    assert emb_sz_rule(10) == 6
    assert emb_sz_rule(10**6) == 600
    assert get_emb_szs([2, 10]) == [(2, 2), (10, 6)]


def test_channels_set_the_from_scratch_block_widths() -> None:
    model = create_vision_model("simple_cnn", 10, MEAN, STD, channels=(8, 16, 32, 64)).eval()
    widths = [conv.out_channels for conv in model[1].modules() if isinstance(conv, nn.Conv2d)]
    assert widths == [8, 16, 32, 64] and model[2][-1].in_features == 64
    assert model(torch.zeros(2, 3, 28, 28, dtype=torch.uint8)).shape == (2, 10)


def test_channels_are_refused_for_a_torchvision_arch() -> None:
    with pytest.raises(ValueError, match="channels"):
        create_vision_model("resnet18", 3, MEAN, STD, pretrained=False, channels=(8, 16))
