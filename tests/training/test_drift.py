"""Drift verdicts that know their sample size: a small sample of the training data itself is not 'shifted'."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bundle.reference import categorical_reference, continuous_reference, drift_verdict, psi, psi_noise
from training.cli import main


def test_small_samples_of_the_reference_itself_score_high_psi_but_stay_within_the_noise() -> None:
    rng = np.random.default_rng(0)
    training = rng.normal(50, 10, 5000)
    reference = continuous_reference(training)
    noise = psi_noise(reference, 30)
    scores = [psi(reference, rng.choice(training, 30)) for _ in range(50)]
    assert np.median(scores) > 0.1  # the plain thresholds would call many of these drifted
    assert sum(drift_verdict(s, noise) == "shifted" for s in scores) <= 2


def test_a_real_shift_is_shifted_even_in_a_small_sample() -> None:
    rng = np.random.default_rng(1)
    reference = continuous_reference(rng.normal(50, 10, 5000))
    assert drift_verdict(psi(reference, rng.normal(90, 10, 30)), psi_noise(reference, 30)) == "shifted"


def test_the_noise_level_falls_as_the_sample_grows() -> None:
    reference = categorical_reference(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    assert psi_noise(reference, 30) > psi_noise(reference, 300) > psi_noise(reference, 3000)


@pytest.fixture
def bundle(bundle_library):
    return bundle_library / "penguins" / "1"


def test_drift_on_a_csv_sharing_no_columns_is_an_error(bundle, tmp_path, capsys) -> None:
    pd.DataFrame({"x": [1, 2], "y": [3, 4]}).to_csv(tmp_path / "other.csv", index=False)
    assert main(["drift", str(bundle), str(tmp_path / "other.csv"), "--out", str(tmp_path / "r")]) == 2
    assert "shares no columns" in capsys.readouterr().err


def test_drift_warns_under_the_minimum_sample(bundle, tmp_path, capsys) -> None:
    from training.cli.examples import penguins_frame

    penguins_frame().sample(30, random_state=0).to_csv(tmp_path / "few.csv", index=False)
    assert main(["drift", str(bundle), str(tmp_path / "few.csv"), "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert "warning: only 30 rows" in captured.err
    assert "shifted" in captured.out


# -- the classifier drift report: what its AUC means --------------------------------------------------


def _rows(n: int, seed: int) -> list[dict]:
    from tests.bundle_factory import shapes_rows

    return shapes_rows(n, seed).drop(columns=["label"]).to_dict(orient="records")


def test_the_report_gives_each_folds_auc_and_their_spread() -> None:
    from training.cli.drift_report import N_FOLDS, classifier_drift, verdict

    result = classifier_drift(_rows(400, 0), _rows(150, 1), trees=40)
    assert len(result.fold_aucs) == N_FOLDS and min(result.fold_aucs) <= result.auc + 0.1
    assert 0 < result.spread < 0.1 and result.copies == 0
    assert verdict(result.auc, result.spread, result.copies, result.logged_rows).startswith("indistinguishable")


def test_an_auc_far_below_one_half_is_explained_as_live_rows_repeating_training_rows() -> None:
    """The issue's AUC 0.22 ("indistinguishable"): traffic that replays training rows. A forest that memorised one
    copy calls its held-out twin a training row, which is consistently wrong."""
    from training.cli.drift_report import classifier_drift, verdict

    reference = _rows(400, 0)
    result = classifier_drift(reference, reference[:150], trees=40)
    assert result.auc < 0.35 and result.copies == 150
    text = verdict(result.auc, result.spread, result.copies, result.logged_rows)
    assert text.startswith("below chance") and "150 of the 150 logged rows are copies" in text
