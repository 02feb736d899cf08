"""Column arrays are the processors' request input: ``transform(columns)`` equals ``transform(DataFrame)``.

The service hands the processors :func:`rows_to_columns` (one object array
per column, no DataFrame); training hands them frames whose dtypes pandas
inferred. Both must give exactly the same model inputs, for every kind of
value a JSON row may hold: missing keys, null, numeric strings, booleans,
unseen categories, ints and floats in a numeric categorical column.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bundle.manifest import read_manifest
from bundle.tabular import TabularInputError, TabularProcessor, rows_to_columns, rows_to_frame

EXAMPLES = Path(__file__).resolve().parents[2] / "models"
MISSING = object()  # a key left out of the row

# What a JSON row may hold, by the kind of column (none of them is an input error).
CATEGORICAL = ["a level", "never seen", None, MISSING, 2008, 2008.0, 2009.5, "2008", "2008.0", True, False, ""]
CONTINUOUS = [3, 4.25, -1.5e3, 0, None, MISSING, "3.5", " 7 ", "", True, False, 10**6]
DATES = ["2020-01-31", "2021-12-31T10:00:00Z", "2022-03-01T00:00:00+02:00", None, MISSING, ""]


def example_processor(name: str) -> TabularProcessor:
    bundle = EXAMPLES / name / "1"
    if not (bundle / "manifest.json").is_file():
        pytest.skip(f"the {name} example is not built here (python -m training examples)")
    return TabularProcessor.from_dict(read_manifest(bundle).tabular.processor)


def dated_processor() -> TabularProcessor:
    """Date fields, gaps in training (so _na flags), a numeric and a text categorical."""
    train = pd.DataFrame(
        {
            "colour": ["red", "blue", "red", None, "green", "blue"],
            "rooms": [1, 2, 3, 2, 10, 1],
            "size": [50.0, np.nan, 70.0, 80.0, 120.0, 60.0],
            "age": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "sold": ["2020-01-31", "2020-06-15", None, "2021-12-31", "2022-03-01", "2022-07-04"],
        }
    )
    return TabularProcessor(["colour", "rooms"], ["size", "age"], date_fields=["sold"]).fit(train)


def menu(processor: TabularProcessor, name: str) -> list[Any]:
    if name in processor.raw_cont_names:
        return CONTINUOUS
    if name in processor.date_fields:
        return DATES
    vocab = processor.categorify.vocab[name] if processor.categorify is not None else []
    return [*vocab[1:3], *CATEGORICAL]  # some levels training saw, then everything else


def varied_rows(processor: TabularProcessor, n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        row = {name: rng.choice(menu(processor, name)) for name in processor.raw_columns}
        rows.append({name: value for name, value in row.items() if value is not MISSING})
    return rows


def one_kind_rows(processor: TabularProcessor) -> list[list[dict[str, Any]]]:
    """Batches in which every column holds one kind of value (the cheap paths for plain columns)."""
    batches = []
    for position in range(max(len(menu(processor, name)) for name in processor.raw_columns)):
        row = {}
        for name in processor.raw_columns:
            options = menu(processor, name)
            row[name] = options[position % len(options)]
        row = {name: value for name, value in row.items() if value is not MISSING}
        batches.append([row, dict(row), {k: v for k, v in row.items() if k != processor.raw_columns[0]}])
    return batches


def assert_same_inputs(processor: TabularProcessor, rows: list[dict[str, Any]]) -> None:
    names = processor.raw_columns
    from_columns = processor.transform(rows_to_columns(rows, names), strict=True)
    for frame in (rows_to_frame(rows, names), pd.DataFrame(rows, columns=names)):
        from_frame = processor.transform(frame, strict=True)
        np.testing.assert_array_equal(from_columns.x_cat, from_frame.x_cat)
        np.testing.assert_array_equal(from_columns.x_cont, from_frame.x_cont)


@pytest.mark.parametrize(
    "make",
    [lambda: example_processor("penguins"), lambda: example_processor("diamonds"), dated_processor],
    ids=["penguins", "diamonds", "dates"],
)
def test_columns_and_frames_give_the_same_inputs_for_varied_rows(make) -> None:
    processor = make()
    rows = varied_rows(processor, 300, seed=0)

    assert_same_inputs(processor, rows)
    for row in rows[:60]:  # one row: every column holds a single kind of value
        assert_same_inputs(processor, [row])
    for batch in one_kind_rows(processor):
        assert_same_inputs(processor, batch)


def test_the_served_penguins_bundle_gives_the_same_inputs_from_columns_and_frames(model_repo: Path) -> None:
    processor = TabularProcessor.from_dict(read_manifest(model_repo / "penguins" / "1").tabular.processor)

    assert_same_inputs(processor, varied_rows(processor, 200, seed=1))


def test_rows_to_columns_gives_one_object_array_per_column_with_none_where_missing() -> None:
    columns = rows_to_columns([{"a": 1, "b": "x"}, {"a": None}, {}], ["a", "b"])

    assert list(columns) == ["a", "b"]
    assert all(values.dtype == object for values in columns.values())
    assert columns["a"].tolist() == [1, None, None] and columns["b"].tolist() == ["x", None, None]


def test_a_bad_value_is_located_the_same_in_columns_and_in_a_frame() -> None:
    processor = dated_processor()
    rows = [{"size": 3.0}, {"size": "three"}]

    errors = []
    for table in (rows_to_columns(rows, processor.raw_columns), rows_to_frame(rows, processor.raw_columns)):
        with pytest.raises(TabularInputError) as caught:
            processor.transform(table, strict=True)
        errors.append((str(caught.value), caught.value.column, caught.value.row))

    assert errors[0] == errors[1] == ("column 'size', row 1: 'three' is not a number", "size", 1)
