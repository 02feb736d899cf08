"""Rows are checked where they enter: unknown columns and unparseable dates are 422s naming them."""

from __future__ import annotations

import pandas as pd
import pytest

from bundle.tabular import TabularInputError, TabularProcessor, UnknownColumnsError, rows_to_frame
from tests.conftest import penguin


@pytest.fixture
def penguins_client(make_repo, make_client):
    return make_client(make_repo(("penguins", 1)))


def test_a_misspelled_column_is_a_422_naming_it(penguins_client) -> None:
    row = dict(penguin(), bill_lenght_mm=40.1)
    response = penguins_client.post("/v1/models/penguins/predict", json={"rows": [row]})
    assert response.status_code == 422
    assert "'bill_lenght_mm'" in response.json()["error"]["message"]
    assert "bill_length_mm" in response.json()["error"]["message"]  # and the columns it does know


def test_a_csv_with_an_unknown_column_is_a_422_naming_it(penguins_client) -> None:
    body = "island,bill_length_mm,wingspan\nBiscoe,40.1,3\n"
    response = penguins_client.post("/v1/models/penguins/predict", content=body, headers={"Content-Type": "text/csv"})
    assert response.status_code == 422 and "'wingspan'" in response.json()["error"]["message"]


def test_a_setting_ignores_unknown_columns_instead(make_repo, make_client) -> None:
    client = make_client(make_repo(("penguins", 1)), ignore_unknown_columns=True)
    response = client.post("/v1/models/penguins/predict", json={"rows": [dict(penguin(), note="x")]})
    assert response.status_code == 200


def test_rows_to_frame_names_every_unknown_key() -> None:
    with pytest.raises(UnknownColumnsError, match="'zz'.*'yy'") as error:
        rows_to_frame([{"a": 1, "zz": 2}, {"yy": 3}], ["a"])
    assert error.value.unknown == ["zz", "yy"]


def dated(fmt: dict[str, str] | None = None) -> TabularProcessor:
    days = pd.to_datetime(["2014-03-05", "2015-11-30", "2016-01-01"])
    sold = days.strftime(fmt["sold"]) if fmt else days.strftime("%Y-%m-%d")
    train = pd.DataFrame({"sold": sold, "size": [1.0, 2.0, 3.0]})
    return TabularProcessor([], ["size"], date_fields=["sold"], date_formats=fmt).fit(train)


def test_an_unparseable_date_is_an_error_naming_the_column_and_row() -> None:
    rows = rows_to_frame([{"sold": "2014-03-05"}, {"sold": "next tuesday"}], ["sold"])
    with pytest.raises(TabularInputError, match="'next tuesday' is not a date") as error:
        dated().transform(rows, strict=True)
    assert (error.value.column, error.value.row) == ("sold", 1)


def test_dates_are_iso_8601_so_a_day_first_date_is_not_read_month_first() -> None:
    with pytest.raises(TabularInputError, match="ISO 8601"):
        dated().transform(pd.DataFrame({"sold": ["05.03.2014"]}), strict=True)


def test_a_recorded_format_reads_dates_that_way_after_a_round_trip_through_the_manifest() -> None:
    processor = TabularProcessor.from_dict(dated({"sold": "%d.%m.%Y"}).to_dict())
    table = processor.transform(pd.DataFrame({"sold": ["05.03.2014"], "size": [1.0]}), strict=True)
    month = processor.cat_names.index("soldMonth")
    assert processor.categorify.vocab["soldMonth"][table.x_cat[0, month]] == "3"


def test_missing_dates_stay_missing_values() -> None:
    table = dated().transform(pd.DataFrame({"sold": [None, ""], "size": [1.0, 2.0]}), strict=True)
    assert len(table) == 2
