"""JSON lets integers of up to 310 digits through (``service.codecs.strict_json``): as category levels they are
their digits, whatever else the column holds; none of them is a float, and none fails the request."""

from __future__ import annotations

import numpy as np

from bundle.tabular import category_levels
from tests.conftest import penguin

HUGE = int("9" * 310)


def test_an_integer_beyond_float_range_beside_text_is_a_level_of_its_digits() -> None:
    levels = category_levels(np.array(["Dream", HUGE, None], dtype=object))
    assert levels.tolist() == ["Dream", "9" * 310, None]


def test_an_integer_has_the_same_level_beside_text_as_alone() -> None:
    for number in (3, 2**53 + 1, 2**70, HUGE):
        alone = category_levels(np.array([number], dtype=object)).tolist()
        mixed = category_levels(np.array(["Dream", number], dtype=object), numeric=True).tolist()
        assert mixed == ["Dream", *alone]


def test_rows_mixing_text_with_a_310_digit_integer_are_answered(client) -> None:
    rows = f'{{"rows": [{{"island": "Dream"}}, {{"island": {HUGE}}}]}}'.encode()
    response = client.post("/v1/models/penguins/predict", content=rows, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 2


def test_a_311_digit_integer_is_refused_naming_it(client) -> None:
    row = penguin()
    body = f'{{"rows": [{{"island": {"9" * 311}, "sex": "{row["sex"]}"}}]}}'.encode()
    response = client.post("/v1/models/penguins/predict", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "311 digits" in response.json()["error"]["message"]
