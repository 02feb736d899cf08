"""The Learner: training verbs, parameter groups, predictions, determinism and pickling."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from tests._toy_data import DigitsDataLoaders, ToyTableDataLoaders
from training.learner import Learner, activation_for, default_loss, set_seed
from training.metrics import accuracy, accuracy_multi, error_rate, rmse
from training.models.tabular import TabularModel
from training.models.vision import create_vision_model, vision_splitter

MEAN, STD = (0.3, 0.3, 0.3), (0.4, 0.4, 0.4)


def digits_learner(seed: int | None = 0, **kwargs) -> Learner:
    if seed is not None:
        set_seed(seed)
    model = create_vision_model("simple_cnn", 10, MEAN, STD)
    learn = Learner(DigitsDataLoaders(), model, metrics=[error_rate], splitter=vision_splitter, seed=seed, **kwargs)
    learn.show_table = False
    return learn


def table_learner(task: str = "classification", metrics=(), seed: int = 0) -> Learner:
    set_seed(seed)
    dls = ToyTableDataLoaders(task)
    model = TabularModel(dls.emb_szs(), dls.n_cont, dls.n_out, layers=(16, 8))
    learn = Learner(dls, model, metrics=metrics, seed=seed)
    learn.show_table = False
    return learn


def body_conv_weight(learn: Learner) -> torch.Tensor:
    return learn.model[1][0].weight


def test_fit_one_cycle_lowers_the_validation_loss() -> None:
    learn = digits_learner()
    before = learn.validate()["valid_loss"]
    learn.fit_one_cycle(3, 1e-2)
    after = learn.validate()
    assert after["valid_loss"] < before / 2
    assert after["error_rate"] < 0.3


def test_fit_at_a_constant_rate_lowers_the_training_loss() -> None:
    learn = table_learner()
    learn.fit(3, lr=1e-2)
    losses = learn.recorder.losses
    assert sum(losses[-5:]) < sum(losses[:5])
    assert set(learn.recorder.lrs) == {1e-2}


def test_same_seed_gives_identical_weights_after_fit() -> None:
    runs = []
    for _ in range(2):
        learn = digits_learner(seed=7)
        learn.fit_one_cycle(1, 1e-2)
        runs.append(learn.model.state_dict())
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


def test_different_seeds_give_different_weights() -> None:
    first, second = digits_learner(seed=1), digits_learner(seed=2)
    assert not torch.equal(body_conv_weight(first), body_conv_weight(second))


def test_freeze_leaves_the_body_frozen_except_batchnorm() -> None:
    learn = digits_learner()
    learn.freeze()
    body = learn.model[1]
    for module in body.modules():
        for param in module.parameters(recurse=False):
            assert param.requires_grad == isinstance(module, nn.BatchNorm2d)
    assert all(p.requires_grad for p in learn.model[2].parameters())


def test_training_a_frozen_model_changes_only_the_head_and_batchnorm() -> None:
    learn = digits_learner()
    learn.freeze()
    conv, bn = body_conv_weight(learn).clone(), learn.model[1][1].weight.clone()
    head = learn.model[2][-1].weight.clone()
    learn.fit(1, lr=1e-2)
    assert torch.equal(body_conv_weight(learn), conv)
    assert not torch.equal(learn.model[1][1].weight, bn)
    assert not torch.equal(learn.model[2][-1].weight, head)


def test_unfreeze_trains_every_parameter() -> None:
    learn = digits_learner()
    learn.freeze()
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())
    conv = body_conv_weight(learn).clone()
    learn.fit(1, lr=1e-2)
    assert not torch.equal(body_conv_weight(learn), conv)


def test_slice_gives_parameter_groups_geometrically_spread_learning_rates() -> None:
    learn = digits_learner()
    learn.fit(1, lr=slice(1e-4, 1e-2))
    by_group = {group["layer_group"]: group["lr"] for group in learn.opt.param_groups}
    assert by_group == {0: pytest.approx(1e-4), 1: pytest.approx(1e-2)}


def test_slice_with_only_a_stop_gives_earlier_groups_a_tenth() -> None:
    learn = digits_learner()
    learn.fit(1, lr=slice(1e-2))
    by_group = {group["layer_group"]: group["lr"] for group in learn.opt.param_groups}
    assert by_group == {0: pytest.approx(1e-3), 1: pytest.approx(1e-2)}


def test_a_list_of_learning_rates_must_match_the_parameter_groups() -> None:
    learn = digits_learner()
    with pytest.raises(ValueError, match="3 learning rates given for 2 parameter groups"):
        learn.fit(1, lr=[1e-4, 1e-3, 1e-2])


def test_weight_decay_skips_biases_and_norm_layers() -> None:
    learn = digits_learner()
    learn.fit(1, lr=1e-3, wd=0.1)
    for group in learn.opt.param_groups:
        dims = {p.ndim for p in group["params"]}
        assert group["weight_decay"] == (0.1 if min(dims) >= 2 else 0.0)


def test_fine_tune_trains_frozen_then_unfrozen() -> None:
    learn = digits_learner()
    conv = body_conv_weight(learn).clone()
    learn.fine_tune(1, base_lr=1e-2)
    assert all(p.requires_grad for p in learn.model.parameters())
    assert not torch.equal(body_conv_weight(learn), conv)
    # the recorder holds the last fit, the unfrozen one-cycle: the head peaks near base_lr / 2
    assert 0.9 * 1e-2 / 2 < max(learn.recorder.lrs) <= 1e-2 / 2


def test_one_cycle_momentum_drives_adams_beta1() -> None:
    learn = table_learner()
    learn.fit_one_cycle(2, 1e-2, moms=(0.95, 0.85, 0.95))
    moms = learn.recorder.moms
    assert moms[0] == pytest.approx(0.95)
    assert min(moms) == pytest.approx(0.85, abs=1e-3)
    assert moms[-1] == pytest.approx(0.95)


def test_recorder_keeps_one_row_per_epoch_and_one_loss_per_batch() -> None:
    learn = table_learner(metrics=[error_rate, accuracy])
    learn.fit_one_cycle(2, 1e-2)
    assert len(learn.recorder.losses) == 2 * len(learn.dls.train)
    assert [row["epoch"] for row in learn.recorder.rows] == [0, 1]
    assert set(learn.recorder.rows[0]) == {"epoch", "train_loss", "valid_loss", "error_rate", "accuracy", "time"}


def test_fit_prints_fastais_epoch_table(capsys: pytest.CaptureFixture[str]) -> None:
    learn = table_learner(metrics=[error_rate])
    learn.show_table = True
    learn.fit_one_cycle(2, 1e-2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "error_rate", "time"]
    assert lines[1].split()[0] == "0" and lines[2].split()[0] == "1"
    assert len(lines[1].split()) == 5


def test_recorder_plots_the_loss_curve(tmp_path: Path) -> None:
    learn = table_learner()
    learn.fit(1)
    learn.recorder.plot_loss(tmp_path / "loss.png")  # the old call form: a path saves the PNG
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_loss_without_a_path_returns_the_figure_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    learn = table_learner()
    learn.fit(1)
    fig = learn.recorder.plot_loss()
    assert isinstance(fig, Figure) and fig.axes[0].get_ylabel() == "loss"
    assert list(tmp_path.iterdir()) == []


def test_validate_reports_the_loss_and_every_metric() -> None:
    scores = table_learner(metrics=[error_rate, accuracy]).validate()
    assert set(scores) == {"valid_loss", "error_rate", "accuracy"}
    assert scores["error_rate"] == pytest.approx(1 - scores["accuracy"])


def test_get_preds_returns_probabilities_targets_and_per_item_losses() -> None:
    learn = table_learner()
    preds, targets, losses = learn.get_preds(with_loss=True)
    n_valid = len(learn.dls.valid.dataset)
    assert preds.shape == (n_valid, 2) and targets.shape == (n_valid,) and losses.shape == (n_valid,)
    assert torch.allclose(preds.sum(dim=1), torch.ones(n_valid))
    assert losses.mean().item() == pytest.approx(learn.validate()["valid_loss"], rel=1e-5)


def test_get_preds_without_activation_returns_raw_outputs() -> None:
    learn = table_learner()
    raw, _ = learn.get_preds(activation=False)
    probs, _ = learn.get_preds()
    assert torch.allclose(torch.softmax(raw, dim=1), probs)


def test_predict_returns_label_index_and_probabilities_summing_to_one() -> None:
    learn = digits_learner()
    learn.fit_one_cycle(1, 1e-2)
    label, index, probs = learn.predict(learn.dls.raw_images[0])
    assert label == learn.dls.vocab[index]
    assert index == int(probs.argmax())
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)


def test_predict_batch_returns_one_prediction_per_item() -> None:
    learn = digits_learner()
    items = list(learn.dls.raw_images[:5])
    batch = learn.predict_batch(items, bs=2)
    assert len(batch) == 5
    single = learn.predict(items[3])
    assert batch[3][1] == single[1]
    assert torch.allclose(batch[3][2], single[2], atol=1e-6)


def test_regression_predict_returns_the_value() -> None:
    learn = table_learner("regression", metrics=[rmse])
    learn.fit_one_cycle(2, 1e-2)
    value, index, output = learn.predict({"cat": [1, 2], "cont": [0.5, 0.5, 0.5]})
    assert index is None
    assert value == pytest.approx(float(output[0]))


def test_tune_threshold_stores_one_threshold_per_class() -> None:
    learn = table_learner("multilabel", metrics=[accuracy_multi()])
    learn.fit_one_cycle(2, 1e-2)
    thresholds = learn.tune_threshold()
    assert len(thresholds) == 3 and learn.dls.thresholds == thresholds
    assert all(0.0 < t < 1.0 for t in thresholds)
    probs, targets = learn.get_preds()
    tuned = ((probs >= torch.tensor(thresholds)) == targets.bool()).float().mean()
    default = ((probs >= 0.5) == targets.bool()).float().mean()
    assert tuned >= default


def test_tune_threshold_is_only_for_multilabel() -> None:
    with pytest.raises(ValueError, match="multilabel"):
        table_learner().tune_threshold()


def test_learner_round_trips_through_torch_save_without_its_optimiser(tmp_path: Path) -> None:
    learn = digits_learner()
    learn.fit_one_cycle(1, 1e-2)
    learn.dls = learn.dls.new_empty()
    torch.save(learn, tmp_path / "learner.pkl")
    loaded = torch.load(tmp_path / "learner.pkl", weights_only=False)
    assert loaded.opt is None and loaded.scaler is None
    item = DigitsDataLoaders().raw_images[0]
    assert torch.allclose(loaded.predict(item)[2], learn.predict(item)[2])
    assert loaded.recorder.rows == learn.recorder.rows


def test_a_loaded_learner_can_train_again_once_given_data(tmp_path: Path) -> None:
    learn = table_learner()
    learn.fit(1)
    torch.save(learn, tmp_path / "learner.pkl")
    loaded = torch.load(tmp_path / "learner.pkl", weights_only=False)
    loaded.fit(1)
    assert loaded.opt is not None


def test_an_exported_learner_without_data_refuses_to_fit() -> None:
    learn = table_learner()
    learn.dls = learn.dls.new_empty()
    with pytest.raises(ValueError, match="no training data"):
        learn.fit(1)


def test_default_loss_and_activation_follow_the_task() -> None:
    assert isinstance(default_loss("classification"), nn.CrossEntropyLoss)
    assert isinstance(default_loss("multilabel"), nn.BCEWithLogitsLoss)
    assert isinstance(default_loss("regression"), nn.MSELoss)
    assert isinstance(activation_for("classification"), nn.Softmax)
    assert isinstance(activation_for("multilabel"), nn.Sigmoid)
    assert isinstance(activation_for("regression"), nn.Identity)
    with pytest.raises(ValueError, match="unknown task"):
        activation_for("ranking")


def test_metrics_are_named_picklable_callables(tmp_path: Path) -> None:
    metrics = [error_rate, accuracy, rmse, accuracy_multi(thresh=0.3)]
    torch.save(metrics, tmp_path / "metrics.pkl")
    loaded = torch.load(tmp_path / "metrics.pkl", weights_only=False)
    assert [m.name for m in loaded] == ["error_rate", "accuracy", "rmse", "accuracy_multi"]
    logits, targets = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 1, 1])
    assert loaded[0](logits, targets) == pytest.approx(1 / 3)
    assert loaded[3](torch.tensor([[0.0, -2.0]]), torch.tensor([[1.0, 0.0]])) == pytest.approx(1.0)


def test_accuracy_multi_must_be_called_to_make_the_metric() -> None:
    with pytest.raises(TypeError, match=r"accuracy_multi\(\)"):
        accuracy_multi(torch.zeros(2, 2), torch.zeros(2, 2))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        digits_learner(device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_mixed_precision_on_cpu_warns_and_trains_in_float32() -> None:
    with pytest.warns(UserWarning, match="mixed_precision needs CUDA"):
        learn = digits_learner(mixed_precision=True, device="cpu")
    assert learn.amp_dtype is None
    learn.fit(1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_precision_trains_on_cuda() -> None:
    learn = digits_learner(mixed_precision=True, device="cuda")
    before = learn.validate()["valid_loss"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no autocast or GradScaler warnings
        learn.fit_one_cycle(2, 1e-2)
    assert learn.validate()["valid_loss"] < before
    assert next(learn.model.parameters()).device.type == "cuda"
    assert learn.predict(learn.dls.raw_images[0])[2].device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cpu_moves_the_model_and_optimiser_state() -> None:
    learn = digits_learner(device="cuda")
    learn.fit(1)
    learn.to_cpu()
    assert all(p.device.type == "cpu" for p in learn.model.parameters())
    learn.fit(1)
