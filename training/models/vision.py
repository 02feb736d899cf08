"""Vision models: ``ImageNormalize`` -> body -> fastai's head, as one ``nn.Sequential``.

The model takes uint8 (or float 0..255) RGB pixels in NCHW layout and does
its own scaling and normalisation, so the exported ONNX graph needs nothing
done to the pixels outside it.

Pretrained weights (``pretrained=True``, the default as in fastai) are
torchvision's ImageNet weights, fetched through its weights API: read from
the torch cache (``$TORCH_HOME/hub/checkpoints/``, by default
``~/.cache/torch/hub/checkpoints/``) when the file is there, downloaded into
it once otherwise. ``pretrained="file.pth"`` reads a local state dict instead;
``pretrained=False`` starts from random weights.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn

from training.models.layers import AdaptiveConcatPool2d, SigmoidRange, init_linear, lin_bn_drop

RESNETS: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}
ARCHS = (*RESNETS, "small_resnet", "simple_cnn")
FROM_SCRATCH_ARCHS = ("small_resnet", "simple_cnn")  # no published weights: made to train from scratch
Pretrained = bool | str | Path | None
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
    pretrained: Pretrained = True,
    y_range: tuple[float, float] | None = None,
    hidden: int | None = None,
    ps: float = 0.5,
    channels: Sequence[int] | None = None,
) -> nn.Sequential:
    """``nn.Sequential(ImageNormalize, body, head)`` for ``arch`` (one of :data:`ARCHS`).

    ``pretrained``: True loads torchvision's ImageNet weights (cache first,
    then one download; see :func:`imagenet_state_dict`); a path loads a local
    file holding a torchvision state dict for the whole network (as
    torchvision's own ``resnet34-*.pth``); False or None starts from random
    weights, which is what :data:`FROM_SCRATCH_ARCHS` are made for (for
    them True means False: they have no published weights). Weights
    are loaded before the classifier is cut off. ``hidden`` is the resnet
    head's hidden width (512) and ``ps`` its last dropout; the from-scratch
    archs end in global average pooling and one Linear. ``channels`` sets the
    from-scratch archs' block widths (default 32, 64, 128, 256): narrower
    is cheaper to serve, e.g. (8, 16, 32, 64) for 28 px digits.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose from {', '.join(ARCHS)}")
    if channels is not None and arch not in FROM_SCRATCH_ARCHS:
        raise ValueError(f"channels sets the widths of {' and '.join(FROM_SCRATCH_ARCHS)}, not of {arch}")
    if n_out < 1:
        raise ValueError(f"n_out must be at least 1, got {n_out}")
    pretrained = resolve_pretrained(arch, pretrained)
    if arch in FROM_SCRATCH_ARCHS:
        widths = tuple(channels) if channels else (32, 64, 128, 256)
        body = simple_cnn_body(widths) if arch == "simple_cnn" else small_resnet_body(widths)
        n_features = widths[-1]
        if pretrained:
            load_pretrained(body, pretrained, arch)
    else:
        body, n_features = resnet_body(arch, pretrained)
    if arch in FROM_SCRATCH_ARCHS:
        # fastai's head (BatchNorm, dropout 0.25/0.5, a hidden layer) kept a from-scratch body near chance on
        # the hard shapes set (error 0.51 against 0.12 with this one, docs/training.md)
        head = create_simple_head(n_features, n_out, p=0.2 if arch == "small_resnet" else 0.0, y_range=y_range)
    else:
        head = create_head(n_features, n_out, hidden or 512, ps, y_range)
    return nn.Sequential(ImageNormalize(mean, std), body, head)


def resolve_pretrained(arch: str, pretrained: Pretrained) -> bool | Path:
    """What ``pretrained`` means for ``arch``: True (ImageNet), a file, or False (random weights).

    The from-scratch archs have no published weights, so for them the default
    True means False; a file of their own weights still loads.
    """
    if pretrained is None or pretrained is False:
        return False
    if pretrained is True:
        return arch not in FROM_SCRATCH_ARCHS
    return Path(pretrained)


def resnet_body(arch: str, pretrained: Pretrained = None) -> tuple[nn.Sequential, int]:
    """A torchvision resnet without its avgpool and fc, and the number of channels it outputs."""
    resnet = RESNETS[arch](weights=None)
    if pretrained is True:
        resnet.load_state_dict(imagenet_state_dict(arch))
    elif pretrained:
        load_pretrained(resnet, pretrained, arch)
    n_features = resnet.fc.in_features
    return nn.Sequential(*list(resnet.children())[:-2]), n_features


class WeightsUnavailable(ValueError):
    """ImageNet weights neither in the torch cache nor downloadable; says where the file goes and what else to do.

    ``str()`` names the Python arguments (``pretrained='path/...'``,
    ``pretrained=False``); ``cli_message`` the command line's flags
    (``--pretrained FILE``, ``--no-pretrained``).
    """

    def __init__(self, arch: str, cached: Path, url: str, cause: Exception) -> None:
        self.arch, self.cached, self.url, self.cause = arch, cached, url, cause
        super().__init__(self.advice(f"pretrained='path/to/{cached.name}'", "pretrained=False"))
        self.cli_message = self.advice(f"--pretrained path/to/{cached.name}", "--no-pretrained")

    def advice(self, file_option: str, scratch_option: str) -> str:
        return (
            f"ImageNet weights for {self.arch}: {self.cached} is not in the torch cache and downloading {self.url} "
            f"failed ({self.cause}). On a machine without internet, copy that file into {self.cached.parent} "
            f"(TORCH_HOME moves the cache), or pass {file_option}; {scratch_option} trains from scratch"
        )


def imagenet_weights_path(arch: str) -> Path:
    """Where torchvision's weights API keeps ``arch``'s ImageNet weights: ``<torch.hub.get_dir()>/checkpoints/``."""
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's default ImageNet weights for ``arch``: from the torch cache, else downloaded into it once.

    Offline with nothing cached this raises a ``ValueError`` saying where the
    file belongs and how to get it.
    """
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = imagenet_weights_path(arch)
    try:
        return weights.get_state_dict(progress=sys.stderr.isatty(), check_hash=False)
    except OSError as exc:  # URLError, timeouts, no DNS: offline
        raise WeightsUnavailable(arch, cached, weights.url, exc) from exc
    except (RuntimeError, EOFError, ValueError) as exc:  # a cached file that is not a checkpoint
        raise ValueError(
            f"ImageNet weights for {arch}: cannot read {cached} ({exc}); delete it to download again"
        ) from exc


def simple_cnn_body(channels: Sequence[int] = (32, 64, 128, 256)) -> nn.Sequential:
    """conv-bn-relu-maxpool blocks: each 3x3 conv sees full resolution, then a 2x2 max pool halves it.

    Measured on faint shapes in noise (docs/training.md): stride-2 convs in
    place of the pools memorised the training set (validation error
    0.68-0.69), and half these widths raised the error from 0.008 to 0.12.
    """
    layers: list[nn.Module] = []
    n_in = 3
    for n_out in channels:
        conv = nn.Conv2d(n_in, n_out, 3, padding=1, bias=False)
        layers += [conv, nn.BatchNorm2d(n_out), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
        n_in = n_out
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a shortcut (average pool and 1x1 conv when the shape changes), then ReLU.

    Both BatchNorms start at one. Starting the second at zero (fastai's and
    "Bag of Tricks"' init for deep resnets) makes every block the identity at
    first, so this shallow network began as pools and 1x1 convs that cannot
    see a shape: on faint shapes in noise it ended at error 0.19 after 30
    epochs, against 0.06 without it (docs/training.md).
    """

    def __init__(self, n_in: int, n_out: int, stride: int = 1) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(n_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(n_out, n_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(n_out),
        )
        shortcut: list[nn.Module] = []
        if stride != 1:
            shortcut.append(nn.AvgPool2d(stride, ceil_mode=True))
        if n_in != n_out:
            shortcut += [nn.Conv2d(n_in, n_out, 1, bias=False), nn.BatchNorm2d(n_out)]
        self.shortcut = nn.Sequential(*shortcut)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.shortcut(x))


def small_resnet_body(channels: Sequence[int] = (32, 64, 128, 256), stem: int = 16) -> nn.Sequential:
    """A full-resolution stem, then one residual block per stage with max pooling between: learns from scratch.

    Convolving at full resolution before pooling keeps the small details a
    stride-2 stem would skip; overall stride 16, and the head pools globally,
    so any input size works.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(3, stem, 3, padding=1, bias=False),
        nn.BatchNorm2d(stem),
        nn.ReLU(inplace=True),
    ]
    n_in = stem
    for n_out in channels:
        layers += [nn.MaxPool2d(2, ceil_mode=True), ResBlock(n_in, n_out)]
        n_in = n_out
    body = nn.Sequential(*layers)
    for module in body.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return body


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


def create_simple_head(
    n_features: int, n_out: int, p: float = 0.2, y_range: tuple[float, float] | None = None
) -> nn.Sequential:
    """Global average pool, dropout, one Linear: a from-scratch body on little data needs no deeper head."""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(p), nn.Linear(n_features, n_out)]
    if y_range is not None:
        layers.append(SigmoidRange(*y_range))
    return nn.Sequential(*layers)


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
