"""Vision models: ``ImageNormalize`` -> body -> fastai's head, as one ``nn.Sequential``.

The model takes uint8 (or float 0..255) RGB pixels in NCHW layout and does
its own scaling and normalisation, so the exported ONNX graph needs nothing
done to the pixels outside it. Pretrained weights come only from a local
file: nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torchvision
from torch import nn

from training.models.layers import AdaptiveConcatPool2d, SigmoidRange, init_linear, lin_bn_drop

RESNETS: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}
ARCHS = (*RESNETS, "simple_cnn")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNormalize(nn.Module):
    """uint8 or 0..255 float pixels -> ``(x / 255 - mean) / std``, with mean/std in 0..1 units."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"ImageNormalize needs 3 channel means and stds, got mean={mean} std={std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"ImageNormalize needs positive stds, got {list(std)}")
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def mean(self) -> list[float]:
        """The channel means in 0..1 units, as plain floats (what export records)."""
        return [float(v) for v in self.pixel_mean.flatten()]

    @property
    def std(self) -> list[float]:
        return [float(v) for v in self.pixel_std.flatten()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.pixel_mean) / self.pixel_std

    def extra_repr(self) -> str:
        return f"mean={[round(m, 4) for m in self.mean]}, std={[round(s, 4) for s in self.std]}"


def create_vision_model(
    arch: str,
    n_out: int,
    mean: Sequence[float],
    std: Sequence[float],
    pretrained: str | Path | None = None,
    y_range: tuple[float, float] | None = None,
    hidden: int | None = None,
    ps: float = 0.5,
) -> nn.Sequential:
    """``nn.Sequential(ImageNormalize, body, head)`` for ``arch`` (one of :data:`ARCHS`).

    ``pretrained`` is a local file holding a torchvision state dict for the
    whole network (as torchvision's own ``resnet34-*.pth``); it is loaded
    before the classifier is cut off. ``hidden`` is the head's hidden width
    (512 for resnets, 128 for ``simple_cnn``); ``ps`` the head's last dropout.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose from {', '.join(ARCHS)}")
    if n_out < 1:
        raise ValueError(f"n_out must be at least 1, got {n_out}")
    if arch == "simple_cnn":
        body, n_features = simple_cnn_body(), 128
        if pretrained is not None:
            load_pretrained(body, pretrained, arch)
    else:
        body, n_features = resnet_body(arch, pretrained)
    head = create_head(n_features, n_out, hidden or (128 if arch == "simple_cnn" else 512), ps, y_range)
    return nn.Sequential(ImageNormalize(mean, std), body, head)


def resnet_body(arch: str, pretrained: str | Path | None = None) -> tuple[nn.Sequential, int]:
    """A torchvision resnet without its avgpool and fc, and the number of channels it outputs."""
    resnet = RESNETS[arch](weights=None)
    if pretrained is not None:
        load_pretrained(resnet, pretrained, arch)
    n_features = resnet.fc.in_features
    return nn.Sequential(*list(resnet.children())[:-2]), n_features


def simple_cnn_body(channels: Sequence[int] = (16, 32, 64, 128)) -> nn.Sequential:
    """conv-bn-relu blocks with stride 2: a 28-32 px image ends as a 2x2 map of ``channels[-1]`` features."""
    layers: list[nn.Module] = []
    n_in = 3
    for n_out in channels:
        conv = nn.Conv2d(n_in, n_out, 3, stride=2, padding=1, bias=False)
        layers += [conv, nn.BatchNorm2d(n_out), nn.ReLU(inplace=True)]
        n_in = n_out
    return nn.Sequential(*layers)


def create_head(
    n_features: int, n_out: int, hidden: int = 512, ps: float = 0.5, y_range: tuple[float, float] | None = None
) -> nn.Sequential:
    """fastai's head: concat pool, flatten, [BN, Dropout(ps/2), Linear, ReLU], [BN, Dropout(ps), Linear]."""
    layers: list[nn.Module] = [AdaptiveConcatPool2d(), nn.Flatten()]
    layers += lin_bn_drop(2 * n_features, hidden, p=ps / 2, act=True)
    layers += lin_bn_drop(hidden, n_out, p=ps, act=False)
    if y_range is not None:
        layers.append(SigmoidRange(*y_range))
    head = nn.Sequential(*layers)
    init_linear(head)
    return head


def load_pretrained(module: nn.Module, path: str | Path, arch: str) -> None:
    """Load a state dict from a local file into ``module``; a ``ValueError`` names the file and what does not fit."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pretrained weights for {arch}: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise ValueError(f"pretrained weights for {arch}: cannot read {path} as a torch state dict ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint rather than a bare state dict
    if not isinstance(state, dict):
        raise ValueError(f"pretrained weights for {arch}: {path} holds a {type(state).__name__}, not a state dict")
    problems = state_dict_mismatches(module.state_dict(), state)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"pretrained weights in {path} do not fit {arch}: {shown}")
    module.load_state_dict(state)


def state_dict_mismatches(expected: dict[str, torch.Tensor], found: dict[str, object]) -> list[str]:
    """Human-readable differences between a model's state dict and a loaded one."""
    problems = []
    for key, tensor in expected.items():
        # Old torchvision files predate num_batches_tracked; PyTorch fills it in.
        if key not in found and not key.endswith("num_batches_tracked"):
            problems.append(f"missing key {key}")
        elif key in found:
            value = found[key]
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            if shape != tuple(tensor.shape):
                problems.append(f"{key} has shape {shape} in the file, the model needs {tuple(tensor.shape)}")
    problems += [f"unexpected key {key}" for key in found if key not in expected]
    return problems


def vision_splitter(model: nn.Sequential) -> list[list[nn.Parameter]]:
    """Parameter groups [body, head] for freezing and discriminative learning rates."""
    normalize, body, head = model
    return [list(normalize.parameters()) + list(body.parameters()), list(head.parameters())]


def splitter_for(arch: str) -> Callable[[nn.Sequential], list[list[nn.Parameter]]]:
    """The splitter for a model made by :func:`create_vision_model` (the same for every arch)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose from {', '.join(ARCHS)}")
    return vision_splitter
