"""Classification interpretation: confusion matrix, most confused pairs, top losses and their plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, TensorDataset

from bundle.tabular import TabularProcessor
from tests._toy_data import DigitsDataLoaders, ToyTableDataLoaders
from training.interpret import ClassificationInterpretation, describe_row
from training.learner import Learner, set_seed
from training.models.tabular import TabularModel
from training.models.vision import create_vision_model, vision_splitter

PNG = b"\x89PNG\r\n\x1a\n"


def hand_made() -> ClassificationInterpretation:
    """cat, dog, bird: two dogs called cats, one cat called a dog, one bird called a cat, two right answers."""
    vocab = ["cat", "dog", "bird"]
    actual = [1, 1, 0, 2, 0, 1]
    predicted = [0, 0, 1, 0, 0, 1]
    preds = torch.full((6, 3), 0.1)
    preds[range(6), predicted] = 0.8
    losses = -torch.log(preds[range(6), actual])
    return ClassificationInterpretation(vocab, preds, torch.tensor(actual), losses)


def test_confusion_matrix_counts_actual_rows_against_predicted_columns() -> None:
    expected = np.array([[1, 1, 0], [2, 1, 0], [1, 0, 0]])
    assert np.array_equal(hand_made().confusion_matrix(), expected)


def test_most_confused_lists_off_diagonal_pairs_most_frequent_first() -> None:
    assert hand_made().most_confused() == [("dog", "cat", 2), ("cat", "dog", 1), ("bird", "cat", 1)]


def test_most_confused_drops_pairs_below_min_val() -> None:
    assert hand_made().most_confused(min_val=2) == [("dog", "cat", 2)]


def test_top_losses_are_the_largest_losses_with_their_rows() -> None:
    interp = hand_made()
    losses, indices = interp.top_losses(4)
    assert losses.tolist() == sorted(losses.tolist(), reverse=True)
    assert set(indices.tolist()) == {0, 1, 2, 3}  # the four wrong answers
    assert torch.equal(losses, interp.losses[indices])


def test_plot_confusion_matrix_writes_a_png(tmp_path: Path) -> None:
    hand_made().plot_confusion_matrix(tmp_path / "reports" / "cm.png")
    assert (tmp_path / "reports" / "cm.png").read_bytes()[:8] == PNG


def test_plot_confusion_matrix_without_a_path_returns_the_figure() -> None:
    fig = hand_made().plot_confusion_matrix()
    assert isinstance(fig, Figure) and fig.axes[0].get_title() == "confusion matrix"


def digits_interpretation() -> ClassificationInterpretation:
    set_seed(0)
    dls = DigitsDataLoaders(n_train=128, n_valid=40)
    model = create_vision_model("simple_cnn", 10, (0.3,) * 3, (0.4,) * 3)
    learn = Learner(dls, model, splitter=vision_splitter, seed=0)
    learn.show_table = False
    learn.fit_one_cycle(1, 1e-2)
    return ClassificationInterpretation.from_learner(learn)


def test_from_learner_covers_the_whole_validation_set() -> None:
    interp = digits_interpretation()
    assert interp.confusion_matrix().sum() == 40
    assert interp.preds.shape == (40, 10) and interp.losses.shape == (40,)


def test_plot_top_losses_draws_images_to_a_png(tmp_path: Path) -> None:
    fig = digits_interpretation().plot_top_losses(4, tmp_path / "top.png")
    assert (tmp_path / "top.png").read_bytes()[:8] == PNG
    assert sum(1 for ax in fig.axes if ax.images) == 4


def test_plot_top_losses_writes_table_rows_as_text(tmp_path: Path) -> None:
    set_seed(0)
    dls = ToyTableDataLoaders("classification", n_rows=64)
    learn = Learner(dls, TabularModel(dls.emb_szs(), dls.n_cont, dls.n_out, layers=(8,)), seed=0)
    fig = ClassificationInterpretation.from_learner(learn).plot_top_losses(3, tmp_path / "top.png")
    assert (tmp_path / "top.png").read_bytes()[:8] == PNG
    assert len(fig.axes) == 3 and not any(ax.images for ax in fig.axes)


def test_from_learner_accepts_another_loader() -> None:
    set_seed(0)
    dls = ToyTableDataLoaders("classification", n_rows=64)
    learn = Learner(dls, TabularModel(dls.emb_szs(), dls.n_cont, dls.n_out, layers=(8,)), seed=0)
    rows = TensorDataset(torch.tensor([[1, 1], [2, 2]]), torch.zeros(2, 3), torch.tensor([0, 1]))
    new = DataLoader(rows, batch_size=1)
    assert ClassificationInterpretation.from_learner(learn, new).confusion_matrix().sum() == 2


def test_interpretation_is_for_single_label_classification() -> None:
    dls = ToyTableDataLoaders("regression", n_rows=64)
    learn = Learner(dls, TabularModel(dls.emb_szs(), dls.n_cont, dls.n_out, layers=(8,)))
    with pytest.raises(ValueError, match="single-label classification"):
        ClassificationInterpretation.from_learner(learn)


def test_describe_row_names_columns_by_position_without_a_processor() -> None:
    assert describe_row((torch.tensor([2]), torch.tensor([0.5]))) == "cat_0: 2\ncont_0: 0.5"


def test_describe_row_decodes_categories_and_units_with_the_fitted_processor() -> None:
    frame = pd.DataFrame({"colour": ["red", "blue", "red", "blue"], "size": [8.0, 12.0, 8.0, 12.0]})
    processor = TabularProcessor(cat_names=["colour"], cont_names=["size"]).fit(frame)
    table = processor.transform(frame.iloc[[1]])
    row = (torch.as_tensor(table.x_cat[0]), torch.as_tensor(table.x_cont[0]))
    assert describe_row(row, processor) == "colour: blue\nsize: 12"
