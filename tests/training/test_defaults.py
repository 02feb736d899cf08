"""Defaults sized by optimiser steps, the fine-tune defaults others import, and the generated data sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from training import TabularDataLoaders, tabular_learner
from training.cli.examples import SHAPES, carseats_frame, write_hard_shapes_folder
from training.defaults import MAX_EPOCHS, MIN_STEPS, default_epochs
from training.finetune import FINETUNE_DEFAULTS, FinetuneDefaults, finetune_learner


def test_default_epochs_keep_the_courses_when_they_already_make_enough_steps() -> None:
    assert default_epochs(n_batches=1000, epochs=5) == 5


def test_default_epochs_grow_until_small_data_makes_the_minimum_of_steps() -> None:
    epochs = default_epochs(n_batches=5, epochs=5)
    assert epochs * 5 >= MIN_STEPS and (epochs - 1) * 5 < MIN_STEPS


def test_default_epochs_stop_at_the_cap_for_a_handful_of_rows() -> None:
    assert default_epochs(n_batches=1, epochs=5) == MAX_EPOCHS


def test_finetune_defaults_are_one_importable_constant() -> None:
    assert isinstance(FINETUNE_DEFAULTS, FinetuneDefaults)
    assert FINETUNE_DEFAULTS.to_dict()["lr_rule"] == FINETUNE_DEFAULTS.lr_rule


def test_finetune_learner_reports_the_same_rows_before_and_after_and_takes_overrides() -> None:
    old, new = carseats_frame(200, seed=0), carseats_frame(120, seed=1)
    learn = tabular_learner(TabularDataLoaders.from_df(old, y_names="Sales", seed=0), seed=0, device="cpu")
    learn.show_table = False
    learn.fit_one_cycle(2, 1e-2)
    dls = TabularDataLoaders.from_df(new, y_names="Sales", seed=0, processor=learn.dls.processor)
    report = finetune_learner(learn, dls, lr=5e-3, epochs=3)
    assert (report.lr, report.epochs, report.lr_source) == (5e-3, 3, "given")
    assert set(report.before) == set(report.after) == {"valid_loss", "rmse"}
    assert len(learn.recorder.rows) == 3


def test_carseats_like_table_has_islrs_columns_and_a_strong_linear_signal() -> None:
    df = carseats_frame()
    assert list(df.columns) == [
        "Sales",
        "CompPrice",
        "Income",
        "Advertising",
        "Population",
        "Price",
        "ShelveLoc",
        "Age",
        "Education",
        "Urban",
        "US",
    ]
    assert len(df) == 400 and set(df["ShelveLoc"]) == {"Bad", "Medium", "Good"}
    assert np.corrcoef(df["Price"], df["Sales"])[0, 1] < -0.3


def test_hard_shapes_are_one_folder_per_shape_of_noisy_rgb_images(tmp_path: Path) -> None:
    root = write_hard_shapes_folder(tmp_path / "hard", per_class=3, size=32, seed=0)
    assert sorted(p.name for p in root.iterdir()) == sorted(SHAPES)
    pixels = np.asarray(Image.open(next((root / "circle").glob("*.png"))))
    assert pixels.shape == (32, 32, 3)
    assert np.abs(np.diff(pixels.astype(int), axis=1)).mean() > 10  # pixel noise everywhere


def test_hard_shapes_are_the_same_for_the_same_seed(tmp_path: Path) -> None:
    first = write_hard_shapes_folder(tmp_path / "a", per_class=2, size=16, seed=3)
    second = write_hard_shapes_folder(tmp_path / "b", per_class=2, size=16, seed=3)
    for path in first.rglob("*.png"):
        assert path.read_bytes() == (second / path.relative_to(first)).read_bytes()
