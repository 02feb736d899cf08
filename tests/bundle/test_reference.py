"""Drift reference statistics and PSI (bundle.reference)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bundle.reference import (
    OTHER_LEVEL,
    PSI_SHIFT,
    PSI_STABLE,
    categorical_reference,
    continuous_reference,
    drift_scores,
    psi,
    tabular_reference,
)


def strict_json(value: object) -> object:
    """Serialise as strict JSON (no NaN/Infinity) and read back."""
    return json.loads(json.dumps(value, allow_nan=False))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_continuous_reference_bins_cover_all_values(rng: np.random.Generator) -> None:
    ref = continuous_reference(rng.normal(size=2000), n_bins=10)
    assert ref["kind"] == "continuous"
    assert len(ref["fractions"]) == len(ref["edges"]) + 1
    assert sum(ref["fractions"]) == pytest.approx(1.0)
    assert ref["edges"] == sorted(ref["edges"])
    assert ref["fractions"][0] == 0.0 and ref["fractions"][-1] == 0.0  # outside the training range
    assert ref["count"] == 2000 and ref["missing"] == 0.0


def test_continuous_reference_is_plain_json(rng: np.random.Generator) -> None:
    ref = continuous_reference(np.append(rng.normal(size=100), [np.nan, None]))
    assert strict_json(ref) == ref
    assert all(type(v) is float for v in ref["edges"] + ref["fractions"])
    assert ref["missing"] == pytest.approx(2 / 102)


def test_continuous_reference_of_a_constant_column_still_detects_a_shift() -> None:
    ref = continuous_reference([5.0] * 50)
    assert ref["std"] == 0.0
    assert psi(ref, [5.0] * 20) == pytest.approx(0.0)
    assert psi(ref, [6.0] * 20) > PSI_SHIFT


def test_continuous_reference_of_an_all_missing_column_has_no_statistics() -> None:
    ref = continuous_reference([np.nan, None, np.nan])
    assert strict_json(ref) == ref
    assert ref["missing"] == 1.0 and ref["min"] is None and ref["mean"] is None
    assert psi(ref, [None, None]) == pytest.approx(0.0)
    assert psi(ref, [1.0, 2.0]) > PSI_SHIFT


def test_psi_is_near_zero_for_the_same_distribution(rng: np.random.Generator) -> None:
    ref = continuous_reference(rng.normal(size=5000))
    assert psi(ref, rng.normal(size=2000)) < PSI_STABLE


def test_psi_is_large_for_a_shifted_distribution(rng: np.random.Generator) -> None:
    ref = continuous_reference(rng.normal(size=5000))
    assert psi(ref, rng.normal(loc=1.0, size=2000)) > PSI_SHIFT


def test_psi_counts_a_surge_of_missing_values_as_drift(rng: np.random.Generator) -> None:
    ref = continuous_reference(rng.normal(size=1000))
    values = np.where(rng.random(1000) < 0.5, np.nan, rng.normal(size=1000))
    assert psi(ref, values) > PSI_SHIFT


def test_psi_of_no_values_is_zero(rng: np.random.Generator) -> None:
    assert psi(continuous_reference(rng.normal(size=100)), []) == 0.0
    assert psi(categorical_reference(["a", "b"]), []) == 0.0


def test_psi_reads_numeric_text_like_numbers(rng: np.random.Generator) -> None:
    training = rng.normal(size=1000)
    ref = continuous_reference(training)
    assert psi(ref, [str(v) for v in training]) == pytest.approx(0.0)


def test_categorical_reference_keeps_top_levels_and_groups_the_rest() -> None:
    values = ["a"] * 50 + ["b"] * 30 + ["c"] * 15 + ["d"] * 5 + [None] * 10
    ref = categorical_reference(values, max_levels=2)
    assert ref["kind"] == "categorical"
    assert ref["frequencies"] == {"a": 0.5, "b": 0.3, OTHER_LEVEL: pytest.approx(0.2)}
    assert ref["missing"] == pytest.approx(10 / 110)
    assert ref["count"] == 110
    assert strict_json(ref) == ref


def test_categorical_psi_is_near_zero_for_same_mix_and_large_for_new_levels(rng: np.random.Generator) -> None:
    levels, weights = list("abcde"), [0.5, 0.2, 0.1, 0.1, 0.1]
    ref = categorical_reference(rng.choice(levels, size=2000, p=weights))
    assert psi(ref, rng.choice(levels, size=1000, p=weights)) < PSI_STABLE
    assert psi(ref, ["never-seen"] * 100) > PSI_SHIFT


def test_categorical_levels_compare_as_strings() -> None:
    ref = categorical_reference(pd.Series([1, 2, 2, 3]))
    assert set(ref["frequencies"]) == {"1", "2", "3"}
    assert psi(ref, ["1", "2", 2.0, 3]) == pytest.approx(0.0)


def test_psi_rejects_an_unknown_reference_kind() -> None:
    with pytest.raises(ValueError, match="unknown reference kind"):
        psi({"kind": "histogram"}, [1.0])


def test_tabular_reference_has_one_entry_per_raw_feature(rng: np.random.Generator) -> None:
    df = pd.DataFrame({"town": rng.choice(["x", "y"], size=200), "size": rng.normal(size=200), "unused": 1})
    refs = tabular_reference(df, ["town"], ["size"])
    assert {name: ref["kind"] for name, ref in refs.items()} == {"town": "categorical", "size": "continuous"}
    assert strict_json(refs) == refs


def test_tabular_reference_names_columns_missing_from_the_frame() -> None:
    with pytest.raises(ValueError, match="'size'"):
        tabular_reference(pd.DataFrame({"town": ["x"]}), ["town"], ["size"])


def test_drift_scores_give_a_psi_per_feature_and_flag_the_shifted_one(rng: np.random.Generator) -> None:
    train = pd.DataFrame({"town": rng.choice(["x", "y"], size=1000), "size": rng.normal(size=1000)})
    refs = tabular_reference(train, ["town"], ["size"])
    recent = pd.DataFrame({"town": rng.choice(["x", "y"], size=500), "size": rng.normal(loc=2.0, size=500)})
    scores = drift_scores(refs, recent)
    assert scores["town"] < PSI_STABLE and scores["size"] > PSI_SHIFT
