"""Random training augmentation for one image: fastai's ``aug_transforms`` in plain torch.

An :class:`Augment` takes a uint8 tensor ``[3, H, W]`` and returns one of the
same shape and dtype. It runs per item inside the Dataset (CPU). Every random
draw comes from the ``generator`` passed to the call, or torch's global RNG,
so ``torch.manual_seed`` or a seeded ``torch.Generator`` makes it reproducible.

Like fastai, rotation, zoom and perspective warp are composed into one
projective map and applied in a single resample (``grid_sample``) with
reflection padding: one interpolation instead of three, and mirrored content
rather than black corners. Lighting uses torchvision's brightness and contrast
kernels (what ``ColorJitter`` runs).

``min_scale`` is not applied here: it asks the image Dataset to replace its
random crop with a random-resized crop of the decoded image, which needs the
full image before resizing (see ``training.data.images``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from torchvision.transforms.v2 import functional as F

# the corners of the image in grid_sample's normalised coordinates, as (x, y)
_CORNERS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))


class Augment:
    """Flips, rotate/zoom/warp (with probability ``p_affine``) and lighting (``p_lighting``)."""

    def __init__(
        self,
        do_flip: bool = True,
        flip_vert: bool = False,
        max_rotate: float = 10.0,
        min_zoom: float = 1.0,
        max_zoom: float = 1.1,
        max_lighting: float = 0.2,
        max_warp: float = 0.2,
        p_affine: float = 0.75,
        p_lighting: float = 0.75,
        min_scale: float = 1.0,
    ) -> None:
        _check_range("max_rotate", max_rotate, 0.0, 180.0)
        _check_range("max_zoom", max_zoom, 1e-3, 100.0)
        _check_range("min_zoom", min_zoom, 1e-3, max_zoom)
        _check_range("max_lighting", max_lighting, 0.0, 1.0)
        _check_range("max_warp", max_warp, 0.0, 0.9)
        _check_range("p_affine", p_affine, 0.0, 1.0)
        _check_range("p_lighting", p_lighting, 0.0, 1.0)
        _check_range("min_scale", min_scale, 1e-3, 1.0)
        self.do_flip = do_flip
        self.flip_vert = flip_vert
        self.max_rotate = float(max_rotate)
        self.min_zoom = float(min_zoom)
        self.max_zoom = float(max_zoom)
        self.max_lighting = float(max_lighting)
        self.max_warp = float(max_warp)
        self.p_affine = float(p_affine)
        self.p_lighting = float(p_lighting)
        self.min_scale = float(min_scale)

    @property
    def random_resized_crop(self) -> bool:
        """Whether the Dataset should use a random-resized crop (resize method "crop" only)."""
        return self.min_scale < 1.0

    @property
    def has_geometry(self) -> bool:
        return self.max_rotate > 0 or self.min_zoom != 1.0 or self.max_zoom != 1.0 or self.max_warp > 0

    def __call__(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment one uint8 ``[3, H, W]`` image; same shape and dtype out."""
        if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.dtype != torch.uint8:
            raise ValueError(f"Augment expects one uint8 image [3, H, W], got {pixels.dtype} {tuple(pixels.shape)}")
        if self.do_flip and _coin(0.5, generator):
            pixels = F.horizontal_flip(pixels)
        if self.flip_vert and _coin(0.5, generator):
            pixels = F.vertical_flip(pixels)
        geometry = self.has_geometry and _coin(self.p_affine, generator)
        lighting = self.max_lighting > 0 and _coin(self.p_lighting, generator)
        if not (geometry or lighting):
            return pixels
        image = pixels.float() / 255.0
        if geometry:
            image = self._transform(image, generator)
        if lighting:
            low, high = 1.0 - self.max_lighting, 1.0 + self.max_lighting
            image = F.adjust_brightness(image, _uniform(low, high, generator))
            image = F.adjust_contrast(image, _uniform(low, high, generator))
        return (image * 255.0).round_().clamp_(0, 255).to(torch.uint8)

    def _transform(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Resample through one random map; the grid gives each output pixel its source point."""
        height, width = image.shape[-2:]
        matrix = self._affine(height, width, generator) @ self._warp(generator)
        ys = torch.linspace(-1 + 1 / height, 1 - 1 / height, height, dtype=torch.float64)
        xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width, dtype=torch.float64)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1) @ matrix.T
        grid = (points[..., :2] / points[..., 2:]).to(torch.float32).unsqueeze(0)
        out = nnf.grid_sample(image.unsqueeze(0), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return out.squeeze(0)

    def _affine(self, height: int, width: int, generator: torch.Generator | None) -> torch.Tensor:
        """Rotation and zoom, turned in pixel units so non-square images are not sheared."""
        angle = math.radians(_uniform(-self.max_rotate, self.max_rotate, generator))
        zoom = _uniform(self.min_zoom, self.max_zoom, generator)  # > 1 shows less of the image: zoom in
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        aspect = height / width  # normalised x and y differ in pixel length by this factor
        return torch.tensor([[cos, -sin * aspect, 0.0], [sin / aspect, cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)

    def _warp(self, generator: torch.Generator | None) -> torch.Tensor:
        """fastai's warp: corners pushed in or out by up to ``max_warp``, as one perspective map."""
        if self.max_warp == 0:
            return torch.eye(3, dtype=torch.float64)
        mx = _uniform(-self.max_warp, self.max_warp, generator)
        my = _uniform(-self.max_warp, self.max_warp, generator)
        # each edge tilts into a trapezoid: the top and bottom edges change width by mx, the sides by my
        moved = tuple((x * (1 - mx * y), y * (1 - my * x)) for x, y in _CORNERS)
        return _homography(_CORNERS, moved)

    def __repr__(self) -> str:
        return (
            f"Augment(do_flip={self.do_flip}, flip_vert={self.flip_vert}, max_rotate={self.max_rotate}, "
            f"min_zoom={self.min_zoom}, max_zoom={self.max_zoom}, max_lighting={self.max_lighting}, "
            f"max_warp={self.max_warp}, p_affine={self.p_affine}, p_lighting={self.p_lighting}, "
            f"min_scale={self.min_scale})"
        )


def aug_transforms(
    mult: float = 1.0,
    do_flip: bool = True,
    flip_vert: bool = False,
    max_rotate: float = 10.0,
    min_zoom: float = 1.0,
    max_zoom: float = 1.1,
    max_lighting: float = 0.2,
    max_warp: float = 0.2,
    p_affine: float = 0.75,
    p_lighting: float = 0.75,
    min_scale: float = 1.0,
) -> Augment:
    """fastai's default augmentation set; ``mult`` scales rotation, lighting and warp together."""
    if mult < 0:
        raise ValueError(f"mult must be >= 0, got {mult}")
    return Augment(
        do_flip=do_flip,
        flip_vert=flip_vert,
        max_rotate=max_rotate * mult,
        min_zoom=min_zoom,
        max_zoom=max_zoom,
        max_lighting=max_lighting * mult,
        max_warp=max_warp * mult,
        p_affine=p_affine,
        p_lighting=p_lighting,
        min_scale=min_scale,
    )


def _homography(src: tuple[tuple[float, float], ...], dst: tuple[tuple[float, float], ...]) -> torch.Tensor:
    """The 3x3 projective map sending each of four ``src`` points to its ``dst`` point."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y])
        rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y])
        rhs += [u, v]
    solution = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return torch.cat([solution, torch.ones(1, dtype=torch.float64)]).reshape(3, 3)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _coin(p: float, generator: torch.Generator | None) -> bool:
    return float(torch.rand((), generator=generator, dtype=torch.float64)) < p


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
