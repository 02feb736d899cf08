"""dls.show_batch() and learn.show_results(): images as a titled grid, tables as readable rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from training import ImageDataLoaders, TabularDataLoaders, tabular_learner, vision_learner
from training.cli.examples import penguins_frame, write_shapes_folder

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def shapes_dls(tmp_path_factory: pytest.TempPathFactory) -> ImageDataLoaders:
    folder = write_shapes_folder(tmp_path_factory.mktemp("data") / "shapes", per_class=6, size=24)
    return ImageDataLoaders.from_folder(folder, valid_pct=0.25, size=24, method="squish", bs=8, seed=0)


@pytest.fixture(scope="module")
def penguins_dls() -> TabularDataLoaders:
    return TabularDataLoaders.from_df(penguins_frame(), y_names="species", y_block="category", bs=32, seed=0)


def test_show_batch_draws_training_images_titled_with_their_labels(shapes_dls: ImageDataLoaders) -> None:
    fig = shapes_dls.show_batch(max_n=6)
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 6 and set(titles) <= set(shapes_dls.vocab)


def test_show_batch_saves_a_png_when_given_a_path(shapes_dls: ImageDataLoaders, tmp_path: Path) -> None:
    shapes_dls.show_batch(4, tmp_path / "batch.png")
    assert (tmp_path / "batch.png").read_bytes()[:8] == PNG


def test_show_batch_of_a_table_is_its_raw_rows(penguins_dls: TabularDataLoaders) -> None:
    rows = penguins_dls.show_batch(max_n=5)
    assert isinstance(rows, pd.DataFrame) and len(rows) == 5
    assert {"island", "species"} <= set(rows.columns)


def test_show_results_titles_each_image_actual_then_predicted_green_when_right(shapes_dls: ImageDataLoaders) -> None:
    learn = vision_learner(shapes_dls, "simple_cnn", pretrained=False, seed=0, device="cpu")
    fig = learn.show_results(max_n=4)
    for ax, index in zip(fig.axes, range(4)):
        actual, predicted = ax.get_title().split("\n")
        assert actual == shapes_dls.valid_labels[index]
        assert ax.title.get_color() == ("green" if actual == predicted else "red")


def test_show_results_of_a_table_adds_the_prediction_beside_the_target(penguins_dls: TabularDataLoaders) -> None:
    learn = tabular_learner(penguins_dls, layers=(8,), seed=0, device="cpu")
    rows = learn.show_results(max_n=4)
    assert list(rows.index) == list(penguins_dls.valid_df_raw.index[:4])
    assert set(rows["species_pred"]) <= set(penguins_dls.vocab)
