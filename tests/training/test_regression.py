"""Regression defaults that fit: standardised targets baked into the graph, unit-named metrics, relative parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from bundle.manifest import read_manifest
from training.builders import tabular_learner
from training.data.tabular import TabularDataLoaders
from training.export import load_learner


def salaries(n: int = 400, scale: float = 8000.0, seed: int = 0) -> pd.DataFrame:
    """A target around ``scale`` that depends on one number and one category."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"years": rng.uniform(0, 30, n), "grade": rng.choice(["a", "b", "c"], n)})
    bonus = df["grade"].map({"a": 0.0, "b": 0.15, "c": 0.3})
    df["pay"] = scale * (1 + 0.02 * df["years"] + bonus) + rng.normal(0, scale * 0.02, n)
    return df


def fitted(df: pd.DataFrame, epochs: int = 4, **kwargs) -> object:
    dls = TabularDataLoaders.from_df(df, y_names="pay", y_block="regression", valid_pct=0.25, bs=32, seed=0, **kwargs)
    learn = tabular_learner(dls, layers=(32, 16), seed=0, device="cpu")
    learn.show_table = False
    learn.fit_one_cycle(epochs, 1e-2)
    return learn


@pytest.fixture(scope="module")
def large_target_learner():
    return fitted(salaries(), epochs=8)


def test_large_untransformed_targets_train_better_than_predicting_the_mean(large_target_learner) -> None:
    valid = large_target_learner.dls.valid
    targets = np.concatenate([b[-1].numpy().ravel() for b in valid])
    mean_rmse = float(np.sqrt(np.mean((targets - targets.mean()) ** 2)))
    assert large_target_learner.validate()["rmse"] < 0.5 * mean_rmse


def test_large_targets_export_with_relative_parity_and_standardisation_inside_the_graph(
    large_target_learner, tmp_path: Path
) -> None:
    bundle = large_target_learner.export(tmp_path, "pay")
    m = read_manifest(bundle)
    assert m.parity.rtol > 0 and m.parity.atol > 0 and m.parity.max_rel_diff is not None
    assert m.outputs.target_mean[0] == pytest.approx(11600, rel=0.1) and m.outputs.target_std[0] > 100
    assert m.metric_units["rmse"] == "target units"
    rows = salaries(5, seed=1)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    table = load_learner(bundle).dls.processor.transform(rows)
    served = session.run(None, {"x_cat": table.x_cat, "x_cont": table.x_cont})[0][:, 0]
    np.testing.assert_allclose(served, rows["pay"], rtol=0.15)  # raw units straight out of ONNX Runtime


def test_log_target_models_report_rmse_log_in_log_units_and_rmse_in_target_units() -> None:
    learn = fitted(salaries(200), epochs=2, log_target=True)
    scores = learn.validate()
    assert {"rmse_log", "rmse"} <= set(scores)
    assert scores["rmse_log"] < 1.0 < scores["rmse"]  # log units are small, pay units are not
