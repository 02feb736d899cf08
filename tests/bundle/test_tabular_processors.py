"""Tabular preprocessing (bundle.tabular): what training fits is exactly what serving replays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bundle.tabular import (
    INDICATOR_VOCAB,
    NA_LEVEL,
    Categorify,
    FillMissing,
    Normalize,
    ProcessedTable,
    TabularInputError,
    TabularProcessor,
    add_datepart,
    cont_cat_split,
    rows_to_frame,
)


@pytest.fixture
def train_df() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "colour": ["red", "blue", "red", None, "green", "blue"],
            "rooms": [1, 2, 3, 2, 10, 1],
            "size": [50.0, np.nan, 70.0, 80.0, 120.0, 60.0],
            "age": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "sold": ["2020-01-31", "2020-06-15", "not a date", "2021-12-31", "2022-03-01", "2022-07-04"],
        }
    )


def fitted(train_df: pd.DataFrame) -> TabularProcessor:
    return TabularProcessor(["colour", "rooms"], ["size", "age"], date_fields=["sold"]).fit(train_df)


def json_round_trip(processor: TabularProcessor) -> TabularProcessor:
    return TabularProcessor.from_dict(json.loads(json.dumps(processor.to_dict(), allow_nan=False)))


# --- cont_cat_split -----------------------------------------------------------


def test_cont_cat_split_puts_floats_and_high_cardinality_ints_in_continuous() -> None:
    df = pd.DataFrame(
        {"price": np.arange(30.0), "many": np.arange(30), "few": np.arange(30) % 3, "town": ["a", "b", "c"] * 10}
    )
    cont, cat = cont_cat_split(df, max_card=20)
    assert cont == ["price", "many"]
    assert cat == ["few", "town"]


def test_cont_cat_split_leaves_out_the_dependent_variable() -> None:
    df = pd.DataFrame({"x": [1.0, 2.0], "y": [0.5, 0.7], "z": ["a", "b"]})
    assert cont_cat_split(df, dep_var="y") == (["x"], ["z"])
    assert cont_cat_split(df, dep_var=["y", "z"]) == (["x"], [])


# --- add_datepart ---------------------------------------------------------------


def test_add_datepart_adds_fastai_columns_with_prefix_from_field_name() -> None:
    df = pd.DataFrame({"saledate": ["2021-12-31"], "other": [1]})
    out = add_datepart(df, "saledate")
    expected = [
        "saleYear",
        "saleMonth",
        "saleWeek",
        "saleDay",
        "saleDayofweek",
        "saleDayofyear",
        "saleIs_month_end",
        "saleIs_month_start",
        "saleIs_quarter_end",
        "saleIs_quarter_start",
        "saleIs_year_end",
        "saleIs_year_start",
        "saleElapsed",
    ]
    assert list(out.columns) == ["other", *expected]
    row = out.iloc[0]
    assert (row.saleYear, row.saleMonth, row.saleWeek, row.saleDay) == (2021, 12, 52, 31)
    assert (row.saleDayofweek, row.saleDayofyear) == (4, 365)  # a Friday; Monday is 0
    assert bool(row.saleIs_month_end) and bool(row.saleIs_year_end) and not bool(row.saleIs_month_start)
    assert row.saleElapsed == pd.Timestamp("2021-12-31").timestamp()


def test_add_datepart_turns_unparseable_dates_into_missing_values() -> None:
    out = add_datepart(pd.DataFrame({"when": ["2020-02-29", "garbage", None]}), "when", prefix="w_")
    assert out["w_Year"].isna().tolist() == [False, True, True]
    assert out["w_Is_month_end"].isna().tolist() == [False, True, True]
    assert np.isnan(out["w_Elapsed"].iloc[1])


def test_add_datepart_keeps_the_field_when_asked_and_does_not_modify_its_input() -> None:
    df = pd.DataFrame({"Date": ["2020-01-01 13:45:10"]})
    out = add_datepart(df, "Date", drop=False, time=True)
    assert list(df.columns) == ["Date"]
    assert "Date" in out.columns
    assert (out["Hour"].iloc[0], out["Minute"].iloc[0], out["Second"].iloc[0]) == (13, 45, 10)


def test_date_parts_agree_with_pandas_calendar_over_many_years() -> None:
    # ISO weeks, leap years, year ends and dates before 1970 are where hand-written calendars go wrong.
    dates = pd.Series(pd.date_range("1968-12-25", "2033-01-10", freq="37h"))
    out = add_datepart(pd.DataFrame({"d": dates}), "d", prefix="", time=True)
    dt = dates.dt
    expected = {
        "Year": dt.year,
        "Month": dt.month,
        "Week": dt.isocalendar().week,
        "Day": dt.day,
        "Dayofweek": dt.day_of_week,
        "Dayofyear": dt.day_of_year,
        "Hour": dt.hour,
        "Minute": dt.minute,
        "Second": dt.second,
        "Is_month_end": dt.is_month_end,
        "Is_month_start": dt.is_month_start,
        "Is_quarter_end": dt.is_quarter_end,
        "Is_quarter_start": dt.is_quarter_start,
        "Is_year_end": dt.is_year_end,
        "Is_year_start": dt.is_year_start,
    }
    for part, values in expected.items():
        assert out[part].tolist() == values.astype(out[part].dtype).tolist(), part
    assert out["Elapsed"].tolist() == ((dates - pd.Timestamp(0)) / pd.Timedelta(seconds=1)).tolist()


def test_date_fields_with_time_zones_are_read_in_utc() -> None:
    out = add_datepart(pd.DataFrame({"d": ["2021-01-01T01:30:00+02:00", "2020-12-31T23:30:00Z"]}), "d")
    assert out["dYear"].tolist() == [2020, 2020]
    assert out["dElapsed"].iloc[0] == pd.Timestamp("2020-12-31T23:30:00Z").timestamp()


# --- Categorify -------------------------------------------------------------------


def test_categorify_vocab_has_na_first_then_sorted_levels() -> None:
    proc = Categorify(["town", "rooms"]).fit(
        pd.DataFrame({"town": ["paris", "berlin", None, "paris"], "rooms": [10, 2, 2, 1]})
    )
    assert proc.vocab["town"] == [NA_LEVEL, "berlin", "paris"]
    assert proc.vocab["rooms"] == [NA_LEVEL, "1", "2", "10"]  # numbers sorted by value


def test_categorify_maps_unseen_levels_and_missing_values_to_zero() -> None:
    proc = Categorify(["town"]).fit(pd.DataFrame({"town": ["paris", "berlin"]}))
    codes = proc.transform(pd.DataFrame({"town": ["berlin", "rome", None, np.nan, "paris"]}))
    assert codes[:, 0].tolist() == [1, 0, 0, 0, 2]
    assert codes.dtype == np.int64


def test_categorify_treats_int_float_and_numeric_text_of_an_integer_column_as_one_level() -> None:
    proc = Categorify(["rooms"]).fit(pd.DataFrame({"rooms": [1, 3, 3]}))
    served = pd.DataFrame({"rooms": pd.Series([3, 3.0, "3", "3.0", " 3", 3.5, "three"], dtype=object)})
    assert proc.transform(served)[:, 0].tolist() == [2, 2, 2, 2, 2, 0, 0]


def test_categorify_integer_column_with_gaps_in_training_matches_served_integers() -> None:
    # pandas stores an integer column with NaN as float (3.0), yet 3 must be the same level.
    proc = Categorify(["rooms"]).fit(pd.DataFrame({"rooms": [1, None, 3]}))
    assert proc.vocab["rooms"] == [NA_LEVEL, "1", "3"]
    assert proc.transform(rows_to_frame([{"rooms": 3}, {"rooms": "1"}], ["rooms"]))[:, 0].tolist() == [2, 1]


def test_categorify_compares_values_of_a_text_column_as_strings() -> None:
    proc = Categorify(["code"]).fit(pd.DataFrame({"code": ["1", "A7", "True"]}))
    served = pd.DataFrame({"code": pd.Series([1, 1.0, "A7", True], dtype=object)})
    assert proc.transform(served)[:, 0].tolist() == [1, 1, 2, 3]


def test_categorify_state_round_trips_through_json() -> None:
    df = pd.DataFrame({"town": ["a", "b", None], "n": [1.5, 2.0, 2.0]})
    proc = Categorify(["town", "n"]).fit(df)
    again = Categorify.from_dict(json.loads(json.dumps(proc.to_dict())))
    np.testing.assert_array_equal(again.transform(df), proc.transform(df))


# --- FillMissing ------------------------------------------------------------------


def test_fill_missing_fills_with_the_training_median_and_flags_columns_that_had_gaps() -> None:
    proc = FillMissing(["a", "b"]).fit(pd.DataFrame({"a": [1.0, np.nan, 3.0, 10.0], "b": [5.0, 6.0, 7.0, 8.0]}))
    assert proc.fill_values == {"a": 3.0, "b": 6.5}
    assert proc.na_columns == ["a"]
    out = proc.transform(pd.DataFrame({"a": [np.nan, 2.0], "b": [1.0, 2.0]}))
    assert out["a"].tolist() == [3.0, 2.0]
    assert out["a_na"].tolist() == [True, False]
    assert "b_na" not in out.columns


def test_fill_missing_fills_a_column_that_was_complete_in_training_but_is_missing_later() -> None:
    proc = FillMissing(["b"]).fit(pd.DataFrame({"b": [5.0, 6.0, 7.0]}))
    out = proc.transform(pd.DataFrame({"b": [None, 7.0]}, dtype=object))
    assert out["b"].tolist() == [6.0, 7.0]


def test_processor_na_flag_column_is_categorical_with_fixed_vocab(train_df: pd.DataFrame) -> None:
    proc = TabularProcessor(["colour"], ["size", "age"]).fit(train_df)
    assert proc.cat_names == ["colour", "size_na"]
    assert proc.categorify.vocab["size_na"] == list(INDICATOR_VOCAB)
    table = proc.transform(pd.DataFrame({"colour": ["red", "red"], "size": [None, 1.0], "age": [None, None]}))
    assert table.x_cat[:, 1].tolist() == [2, 1]  # True, False
    # "age" had no gaps in training: filled with its median (3.5), which normalises to 0.
    np.testing.assert_allclose(table.x_cont[:, 1], [0.0, 0.0], atol=1e-6)


# --- Normalize --------------------------------------------------------------------


def test_normalize_uses_population_std() -> None:
    proc = Normalize(["x"]).fit(pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]}))
    assert proc.means["x"] == 2.5
    assert proc.stds["x"] == pytest.approx(np.std([1, 2, 3, 4], ddof=0))
    out = proc.transform(pd.DataFrame({"x": [2.5, 4.0]}))
    assert out["x"].tolist() == pytest.approx([0.0, 1.5 / np.std([1, 2, 3, 4])])


def test_normalize_leaves_a_constant_column_centred_with_std_one() -> None:
    proc = Normalize(["x"]).fit(pd.DataFrame({"x": [7.0, 7.0, 7.0]}))
    assert proc.stds["x"] == 1.0
    assert proc.transform(pd.DataFrame({"x": [8.0]}))["x"].tolist() == [1.0]


# --- TabularProcessor ---------------------------------------------------------------


def test_processor_outputs_int64_codes_and_float32_values_in_manifest_order(train_df: pd.DataFrame) -> None:
    proc = fitted(train_df)
    table = proc.transform(train_df)
    assert isinstance(table, ProcessedTable)
    assert table.x_cat.dtype == np.int64 and table.x_cont.dtype == np.float32
    assert table.x_cat.shape == (6, len(proc.cat_names))
    assert table.x_cont.shape == (6, len(proc.cont_names))
    assert proc.raw_columns == ["colour", "rooms", "size", "age", "sold"]
    assert proc.cat_names[:4] == ["colour", "rooms", "soldMonth", "soldDayofweek"]
    # then one _na flag per continuous column that had gaps in training (the bad date gaps all its parts)
    assert proc.cat_names[10:] == [
        "size_na",
        "soldYear_na",
        "soldWeek_na",
        "soldDay_na",
        "soldDayofyear_na",
        "soldElapsed_na",
    ]
    assert proc.cont_names == ["size", "age", "soldYear", "soldWeek", "soldDay", "soldDayofyear", "soldElapsed"]


def test_processor_normalised_training_columns_have_zero_mean_and_unit_std(train_df: pd.DataFrame) -> None:
    table = fitted(train_df).transform(train_df)
    np.testing.assert_allclose(table.x_cont.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(table.x_cont.std(axis=0), 1.0, atol=1e-5)


def test_processor_json_round_trip_reproduces_identical_outputs(train_df: pd.DataFrame) -> None:
    proc = fitted(train_df)
    again = json_round_trip(proc)
    new_rows = pd.DataFrame(
        {
            "colour": ["blue", "purple", None],
            "rooms": ["2", 7, None],
            "size": [None, "65.5", 1e6],
            "age": [2, None, True],
            "sold": ["2023-05-05", None, "nope"],
        }
    )
    for frame in (train_df, new_rows):
        a, b = proc.transform(frame), again.transform(frame)
        np.testing.assert_array_equal(a.x_cat, b.x_cat)
        np.testing.assert_array_equal(a.x_cont, b.x_cont)
    assert again.cat_names == proc.cat_names and again.cont_names == proc.cont_names


def test_processor_gives_the_same_inputs_for_csv_text_and_json_rows(train_df: pd.DataFrame, tmp_path: Path) -> None:
    # The service reads CSV cells as text and JSON rows as Python values; both must match training.
    proc = fitted(train_df)
    expected = proc.transform(train_df)
    path = tmp_path / "rows.csv"
    train_df.to_csv(path, index=False)
    as_text = pd.read_csv(path, dtype=str)
    as_json = rows_to_frame(json.loads(train_df.to_json(orient="records")), proc.raw_columns)
    for frame in (as_text, as_json):
        table = proc.transform(frame)
        np.testing.assert_array_equal(table.x_cat, expected.x_cat)
        np.testing.assert_array_equal(table.x_cont, expected.x_cont)


def test_processor_treats_absent_columns_as_missing_and_ignores_extra_ones(train_df: pd.DataFrame) -> None:
    proc = fitted(train_df)
    partial = pd.DataFrame({"colour": ["red"], "unrelated": ["x"]})
    empty_row = pd.DataFrame({"colour": ["red"], "rooms": [None], "size": [None], "age": [None], "sold": [None]})
    a, b = proc.transform(partial), proc.transform(empty_row)
    np.testing.assert_array_equal(a.x_cat, b.x_cat)
    np.testing.assert_array_equal(a.x_cont, b.x_cont)


def test_processor_output_does_not_depend_on_the_frame_index(train_df: pd.DataFrame) -> None:
    proc = fitted(train_df)
    shuffled = train_df.set_axis([10, 3, 99, 3, -1, 7])
    np.testing.assert_array_equal(proc.transform(shuffled).x_cat, proc.transform(train_df).x_cat)


def test_processor_without_normalize_passes_filled_values_through(train_df: pd.DataFrame) -> None:
    proc = TabularProcessor([], ["size"], procs=("categorify", "fill_missing")).fit(train_df)
    table = proc.transform(pd.DataFrame({"size": [None, 99.0]}))
    assert table.x_cont[:, 0].tolist() == [70.0, 99.0]


def test_processor_refuses_to_transform_before_fit() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        TabularProcessor(["a"], []).transform(pd.DataFrame({"a": [1]}))


def test_processor_rejects_unknown_procs_and_duplicate_columns() -> None:
    with pytest.raises(ValueError, match="unknown tabular procs"):
        TabularProcessor(["a"], [], procs=("categorify", "scale"))
    with pytest.raises(ValueError, match="more than once"):
        TabularProcessor(["a"], ["a"])


def test_processor_rejects_date_parts_that_would_overwrite_a_column() -> None:
    with pytest.raises(ValueError, match="saleYear"):
        TabularProcessor(["saleYear"], [], date_fields=["saledate"])


# --- input errors -------------------------------------------------------------------


def test_a_non_number_in_a_continuous_column_names_column_and_row(train_df: pd.DataFrame) -> None:
    proc = fitted(train_df)
    with pytest.raises(TabularInputError) as info:
        proc.transform(pd.DataFrame({"size": [1.0, "2.5", "abc"]}, dtype=object))
    assert (info.value.column, info.value.row) == ("size", 2)
    assert "'size'" in str(info.value) and "row 2" in str(info.value) and "'abc'" in str(info.value)


def test_infinity_in_a_continuous_column_is_an_input_error(train_df: pd.DataFrame) -> None:
    proc = fitted(train_df)
    with pytest.raises(TabularInputError, match="NaN/Infinity not allowed") as info:
        proc.transform(pd.DataFrame({"age": [1.0, np.inf]}))
    assert (info.value.column, info.value.row) == ("age", 1)


def test_booleans_numeric_strings_and_missing_values_are_accepted_as_continuous(train_df: pd.DataFrame) -> None:
    proc = fitted(train_df)
    mixed = proc.transform(pd.DataFrame({"age": pd.Series([True, "3.5", None, np.nan, "", 2], dtype=object)}))
    plain = proc.transform(pd.DataFrame({"age": [1.0, 3.5, np.nan, np.nan, np.nan, 2.0]}))
    np.testing.assert_array_equal(mixed.x_cont, plain.x_cont)


def test_a_list_inside_a_continuous_column_is_an_input_error(train_df: pd.DataFrame) -> None:
    with pytest.raises(TabularInputError) as info:
        fitted(train_df).transform(pd.DataFrame({"age": pd.Series([1.0, [2.0]], dtype=object)}))
    assert (info.value.column, info.value.row) == ("age", 1)


# --- rows_to_frame -------------------------------------------------------------------


def test_rows_to_frame_treats_missing_keys_and_null_as_missing_and_drops_unknown_keys_when_asked() -> None:
    frame = rows_to_frame([{"a": 1, "b": "x", "zzz": 5}, {"a": None}], ["a", "b"], unknown="ignore")
    assert list(frame.columns) == ["a", "b"]
    assert frame["a"].isna().tolist() == [False, True]
    assert frame["b"].isna().tolist() == [False, True]


def test_rows_to_frame_rejects_a_row_that_is_not_an_object() -> None:
    with pytest.raises(TabularInputError, match="row 1") as info:
        rows_to_frame([{"a": 1}, [1, 2]], ["a"])
    assert (info.value.column, info.value.row) == (None, 1)


def test_rows_to_frame_rejects_a_non_scalar_value() -> None:
    with pytest.raises(TabularInputError) as info:
        rows_to_frame([{"a": 1}, {"a": 2}, {"a": {"nested": 1}}], ["a"])
    assert (info.value.column, info.value.row) == ("a", 2)
    assert "'a'" in str(info.value) and "row 2" in str(info.value)


def test_rows_to_frame_with_no_rows_gives_an_empty_frame_that_transforms(train_df: pd.DataFrame) -> None:
    proc = fitted(train_df)
    table = proc.transform(rows_to_frame([], proc.raw_columns))
    assert table.x_cat.shape == (0, len(proc.cat_names)) and table.x_cont.shape == (0, len(proc.cont_names))
