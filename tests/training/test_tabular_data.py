"""TabularDataLoaders: a table becomes (x_cat, x_cont, y) batches with preprocessing fitted on training rows."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bundle.tabular import TabularProcessor
from training.data.core import DataError
from training.data.tabular import TabularDataLoaders

N_ROWS = 60


def houses(n: int = N_ROWS) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    size = rng.uniform(40, 200, n).round(1)
    size[::7] = np.nan
    return pd.DataFrame(
        {
            "town": rng.choice(["north", "south", "east"], n),
            "rooms": rng.integers(1, 5, n),
            "size": size,
            "age": rng.uniform(0, 80, n).round(0).astype(float),
            "sold": pd.date_range("2020-01-01", periods=n, freq="7D").strftime("%Y-%m-%d"),
            "kind": rng.choice(["flat", "house"], n),
            "price": rng.uniform(1e5, 5e5, n).round(0),
            "is_valid": np.arange(n) % 5 == 0,
        }
    )


@pytest.fixture
def csv_path(tmp_path: Path) -> Path:
    path = tmp_path / "houses.csv"
    houses().to_csv(path, index=False)
    return path


def classifier(csv_path: Path, **kwargs: object) -> TabularDataLoaders:
    args = dict(cat_names=["town", "rooms"], cont_names=["size", "age"], bs=8)
    args.update(kwargs)
    return TabularDataLoaders.from_csv(csv_path, y_names="kind", **args)


# --- batches and metadata ---------------------------------------------------------


def test_classification_batches_are_int64_codes_float32_values_and_int64_targets(csv_path: Path) -> None:
    dls = classifier(csv_path)
    x_cat, x_cont, y = dls.one_batch()
    assert x_cat.dtype == torch.int64 and x_cat.shape == (8, len(dls.cat_names))
    assert x_cont.dtype == torch.float32 and x_cont.shape == (8, 2)
    assert y.dtype == torch.int64 and y.shape == (8,)
    assert (dls.task, dls.vocab, dls.n_out, dls.c) == ("classification", ["flat", "house"], 2, 2)
    assert dls.input_kind == "tabular" and dls.target_names == ["kind"]
    assert dls.cat_names == ["town", "rooms", "size_na"]
    assert dls.y_range is None


def test_float_target_is_regression_by_default_with_float32_column_targets(csv_path: Path) -> None:
    dls = TabularDataLoaders.from_csv(csv_path, "price", cat_names=["town"], cont_names=["size"], bs=8)
    y = dls.one_batch()[-1]
    assert dls.task == "regression" and dls.vocab is None and dls.n_out == 1
    assert y.dtype == torch.float32 and y.shape == (8, 1)


def test_log_target_stores_the_log_of_the_target(csv_path: Path) -> None:
    dls = TabularDataLoaders.from_csv(csv_path, "price", cat_names=["town"], cont_names=[], log_target=True)
    ys = torch.cat([b[-1] for b in dls.valid]).squeeze(1).double()
    np.testing.assert_allclose(ys.numpy(), np.log(dls.valid_df_raw["price"].to_numpy()), rtol=1e-6)
    assert dls.log_target


def test_integer_class_labels_become_strings_sorted_by_value() -> None:
    df = pd.DataFrame({"x": np.arange(30.0), "label": [2, 10, 1] * 10})
    dls = TabularDataLoaders.from_df(df, "label", cont_names=["x"], cat_names=[])
    assert dls.vocab == ["1", "2", "10"]
    codes = torch.cat([b[-1] for b in dls.valid]).tolist()
    assert [dls.vocab[c] for c in codes] == dls.valid_df_raw["label"].astype(str).tolist()


def test_cat_and_cont_names_default_to_cont_cat_split_of_the_other_columns(csv_path: Path) -> None:
    dls = TabularDataLoaders.from_csv(csv_path, "kind", valid_col="is_valid", date_fields=["sold"])
    assert dls.processor.raw_cat_names == ["town", "rooms"]
    assert dls.processor.raw_cont_names == ["size", "age", "price"]
    assert dls.processor.date_fields == ["sold"]


def test_preprocessing_is_fitted_on_training_rows_only(csv_path: Path) -> None:
    dls = classifier(csv_path)
    normalize = dls.processor.normalize
    assert normalize.means["age"] == pytest.approx(dls.train_df_raw["age"].mean())
    assert normalize.means["age"] != pytest.approx(houses()["age"].mean())


def test_emb_szs_follow_fastai_rule(csv_path: Path) -> None:
    dls = classifier(csv_path)
    # town: #na# + 3 levels; rooms: #na# + 4; size_na: #na#, False, True
    assert dls.emb_szs() == [(4, 3), (5, 4), (3, 3)]


# --- splits -------------------------------------------------------------------------


def test_random_split_is_seeded_and_takes_valid_pct(csv_path: Path) -> None:
    a, b = classifier(csv_path, seed=3), classifier(csv_path, seed=3)
    c = classifier(csv_path, seed=4)
    assert len(a.valid_df_raw) == int(0.2 * N_ROWS) and len(a.train_df_raw) == N_ROWS - int(0.2 * N_ROWS)
    assert a.valid_df_raw.index.tolist() == b.valid_df_raw.index.tolist()
    assert a.valid_df_raw.index.tolist() != c.valid_df_raw.index.tolist()


def test_valid_col_marks_the_validation_rows(csv_path: Path) -> None:
    dls = classifier(csv_path, valid_col="is_valid")
    assert dls.valid_df_raw["is_valid"].all() and not dls.train_df_raw["is_valid"].any()
    assert len(dls.valid_df_raw) == N_ROWS // 5


def test_split_by_validates_on_the_latest_rows(csv_path: Path) -> None:
    shuffled = houses().sample(frac=1.0, random_state=0)
    dls = TabularDataLoaders.from_df(shuffled, "kind", cat_names=["town"], cont_names=["age"], split_by="sold")
    assert pd.to_datetime(dls.train_df_raw["sold"]).max() < pd.to_datetime(dls.valid_df_raw["sold"]).min()
    assert len(dls.valid_df_raw) == int(0.2 * N_ROWS)


# --- loaders -------------------------------------------------------------------------


def test_train_loader_shuffles_reproducibly_and_valid_loader_keeps_order(csv_path: Path) -> None:
    a, b = classifier(csv_path), classifier(csv_path)
    assert torch.equal(a.one_batch()[1], b.one_batch()[1])
    valid_batches = list(a.valid)
    assert len(valid_batches[0][-1]) == min(16, len(a.valid_df_raw))  # bs * 2
    labels = [a.vocab[i] for i in torch.cat([batch[-1] for batch in valid_batches]).tolist()]
    assert labels == a.valid_df_raw["kind"].tolist()


def test_train_loader_differs_from_row_order(csv_path: Path) -> None:
    dls = classifier(csv_path, bs=64)
    first = torch.cat([batch[1] for batch in dls.train])
    in_order = dls.encode_items(dls.train_df_raw)[1]
    assert not torch.equal(first, in_order)
    assert torch.equal(first.sort(dim=0).values, in_order.sort(dim=0).values)


def test_last_training_batch_is_dropped_only_when_it_has_one_row() -> None:
    df = pd.DataFrame({"x": np.arange(20.0), "y": ["a", "b"] * 10})
    one_left = TabularDataLoaders.from_df(df, "y", cat_names=[], cont_names=["x"], valid_pct=0.15, bs=8)  # 17 rows
    two_left = TabularDataLoaders.from_df(df, "y", cat_names=[], cont_names=["x"], valid_pct=0.1, bs=8)  # 18 rows
    assert [len(b[-1]) for b in one_left.train] == [8, 8]
    assert [len(b[-1]) for b in two_left.train] == [8, 8, 2]


# --- encoding new rows ------------------------------------------------------------------


def test_encode_items_matches_the_loader_batch_for_the_same_rows(csv_path: Path) -> None:
    dls = classifier(csv_path, date_fields=["sold"])
    x_cat, x_cont, _ = next(iter(dls.valid))
    rows = dls.valid_df_raw
    for items in (rows, rows.to_dict("records")):
        got_cat, got_cont = dls.encode_items(items)
        assert torch.equal(got_cat, x_cat[: len(rows)]) and torch.equal(got_cont, x_cont[: len(rows)])
    one_cat, one_cont = dls.encode_items(rows.iloc[0])
    assert torch.equal(one_cat, x_cat[:1]) and torch.equal(one_cont, x_cont[:1])


def test_encode_items_takes_a_list_of_series_as_learner_predict_passes_it(csv_path: Path) -> None:
    dls = classifier(csv_path)
    rows = dls.valid_df_raw.iloc[:2]
    expected = dls.encode_items(rows)
    got = dls.encode_items([rows.iloc[0], rows.iloc[1]])
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_encode_items_takes_json_style_rows_with_missing_keys(csv_path: Path) -> None:
    dls = classifier(csv_path)
    x_cat, x_cont = dls.encode_items([{"town": "north", "rooms": "2"}, {"size": 100}])
    assert x_cat.shape == (2, 3) and x_cont.shape == (2, 2)
    assert x_cat[0, 2].item() == 2  # size missing -> size_na is True


def test_new_empty_drops_data_still_pickles_and_still_encodes(csv_path: Path) -> None:
    dls = classifier(csv_path)
    rows = dls.valid_df_raw.iloc[:3]
    expected = dls.encode_items(rows)
    empty = dls.new_empty()
    assert empty.train is None and empty.valid is None
    assert empty.train_df_raw is None and empty.valid_df_raw is None
    buffer = io.BytesIO()
    torch.save(empty, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert [torch.equal(a, b) for a, b in zip(loaded.encode_items(rows), expected)] == [True, True]
    assert loaded.vocab == dls.vocab and loaded.emb_szs() == dls.emb_szs()


def test_loaders_with_data_pickle_too(csv_path: Path) -> None:
    dls = classifier(csv_path)
    buffer = io.BytesIO()
    torch.save(dls, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert len(loaded.train) == len(dls.train) and torch.equal(loaded.one_batch()[0], dls.one_batch()[0])


def test_processor_state_survives_json_like_the_manifest_carries_it(csv_path: Path) -> None:
    dls = classifier(csv_path, date_fields=["sold"])
    served = TabularProcessor.from_dict(json.loads(json.dumps(dls.processor.to_dict())))
    table = served.transform(dls.valid_df_raw)
    x_cat, x_cont = dls.encode_items(dls.valid_df_raw)
    assert np.array_equal(table.x_cat, x_cat.numpy()) and np.array_equal(table.x_cont, x_cont.numpy())


# --- multilabel and reuse ------------------------------------------------------------------


def test_multilabel_from_several_flag_columns() -> None:
    df = pd.DataFrame({"x": np.arange(10.0), "cat": [True, False] * 5, "dog": [0, 1, 1, 0, 0] * 2})
    dls = TabularDataLoaders.from_df(df, ["cat", "dog"], cat_names=[], cont_names=["x"], y_block="multilabel")
    y = torch.cat([b[-1] for b in dls.valid])
    assert dls.task == "multilabel" and dls.vocab == ["cat", "dog"]
    expected = dls.valid_df_raw[["cat", "dog"]].astype(float).to_numpy(dtype=np.float32)
    assert y.dtype == torch.float32 and np.array_equal(y.numpy(), expected)


def test_multilabel_from_one_delimited_column() -> None:
    df = pd.DataFrame({"x": np.arange(6.0), "tags": ["a b", "b", "c a", "a", "", "b c"]})
    dls = TabularDataLoaders.from_df(
        df, "tags", cat_names=[], cont_names=["x"], y_block="multilabel", valid_pct=0.5, seed=0
    )
    assert dls.vocab == ["a", "b", "c"]
    y = torch.cat([b[-1] for b in dls.valid])
    for row, tags in zip(y.tolist(), dls.valid_df_raw["tags"]):
        assert [dls.vocab[i] for i, v in enumerate(row) if v == 1.0] == sorted(t for t in tags.split() if t)


def test_a_fitted_processor_and_vocab_are_reused_unchanged(csv_path: Path) -> None:
    old = classifier(csv_path)
    newer = houses().iloc[:30].assign(age=lambda d: d["age"] + 100)
    dls = TabularDataLoaders.from_df(newer, "kind", processor=old.processor, vocab=old.vocab, y_block="category")
    assert dls.processor.to_dict() == old.processor.to_dict()
    assert dls.vocab == old.vocab


def test_reused_vocab_rejects_unknown_labels(csv_path: Path) -> None:
    old = classifier(csv_path)
    newer = houses().assign(kind="castle")
    with pytest.raises(DataError, match="castle"):
        TabularDataLoaders.from_df(newer, "kind", processor=old.processor, vocab=old.vocab, y_block="category")


# --- bad input ------------------------------------------------------------------------------


def test_missing_target_column_is_named_with_the_available_columns(csv_path: Path) -> None:
    with pytest.raises(DataError, match=r"'colour'.*town, rooms, size"):
        TabularDataLoaders.from_csv(csv_path, "colour")


def test_non_numeric_regression_target_is_an_error(csv_path: Path) -> None:
    with pytest.raises(DataError, match=r"'kind' must be numeric.*'(flat|house)'"):
        TabularDataLoaders.from_csv(csv_path, "kind", y_block="regression", cat_names=["town"], cont_names=[])


def test_log_target_with_non_positive_values_is_an_error() -> None:
    df = pd.DataFrame({"x": np.arange(10.0), "y": np.arange(10.0)})
    with pytest.raises(DataError, match="log_target.*1 value"):
        TabularDataLoaders.from_df(df, "y", cat_names=[], cont_names=["x"], log_target=True)


def test_a_single_class_is_an_error() -> None:
    df = pd.DataFrame({"x": np.arange(10.0), "y": ["same"] * 10})
    with pytest.raises(DataError, match="at least 2 classes.*'same'"):
        TabularDataLoaders.from_df(df, "y", cat_names=[], cont_names=["x"])


def test_an_empty_frame_is_an_error() -> None:
    with pytest.raises(DataError, match="empty"):
        TabularDataLoaders.from_df(pd.DataFrame({"x": [], "y": []}), "y")


def test_rows_with_a_missing_target_are_dropped_with_a_warning() -> None:
    df = pd.DataFrame({"x": np.arange(12.0), "y": ["a", "b", None] * 4})
    with pytest.warns(UserWarning, match="dropped 4 of 12 rows"):
        dls = TabularDataLoaders.from_df(df, "y", cat_names=[], cont_names=["x"])
    assert len(dls.train_df_raw) + len(dls.valid_df_raw) == 8


def test_all_targets_missing_is_an_error() -> None:
    df = pd.DataFrame({"x": np.arange(4.0), "y": [None] * 4})
    with pytest.raises(DataError, match="every row has a missing target"):
        TabularDataLoaders.from_df(df, "y", cat_names=[], cont_names=["x"])


def test_a_missing_or_unreadable_csv_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothere.csv"):
        TabularDataLoaders.from_csv(tmp_path / "nothere.csv", "y")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.csv"):
        TabularDataLoaders.from_csv(empty, "y")


def test_a_target_listed_as_a_feature_is_an_error(csv_path: Path) -> None:
    with pytest.raises(DataError, match="'kind'.*also listed as features"):
        classifier(csv_path, cat_names=["town", "kind"])


def test_unknown_feature_columns_are_named(csv_path: Path) -> None:
    with pytest.raises(DataError, match="'colour'"):
        classifier(csv_path, cat_names=["colour"])


def test_a_non_number_in_a_continuous_feature_is_a_data_error(csv_path: Path) -> None:
    df = houses().astype({"age": object})
    df.loc[4, "age"] = "old"
    with pytest.raises(DataError, match=r"'age'.*'old'"):
        TabularDataLoaders.from_df(df, "kind", cat_names=["town"], cont_names=["age"], valid_pct=0.0)


def test_penguins_train_quickly_with_automatic_columns() -> None:
    from palmerpenguins import load_penguins

    dls = TabularDataLoaders.from_df(load_penguins(), "species", bs=32)
    assert dls.vocab == ["Adelie", "Chinstrap", "Gentoo"]
    assert dls.processor.raw_cat_names == ["island", "sex", "year"]
    assert len(dls.train_df_raw) + len(dls.valid_df_raw) == 344
