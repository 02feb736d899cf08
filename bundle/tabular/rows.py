"""JSON rows -> one array per column: what a request's ``{"rows": [...]}`` becomes before preprocessing.

:func:`rows_to_columns` takes the rows parsed JSON nearly always is (dicts of
plain scalars with known keys) column by column (:func:`_plain_json_columns`);
anything else, including every row that is an error to report, goes through
:func:`json_columns_cell_by_cell`, the reference the fast path must agree with.
The fast path pays off on many rows, not on one (figures in docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from bundle.tabular.errors import TabularInputError

_JSON_SCALARS = frozenset((str, int, float, bool))
_JSON_VALUE_TYPES = _JSON_SCALARS | {type(None)}


class UnknownColumnsError(TabularInputError):
    """Rows name columns the model does not know (a misspelling would otherwise read as a missing value)."""

    def __init__(self, unknown: Sequence[str], known: Sequence[str], where: str = "rows have") -> None:
        super().__init__(unknown_columns_message(unknown, known, where))
        self.unknown = list(unknown)


def unknown_columns_message(unknown: Sequence[str], known: Sequence[str], where: str = "rows have") -> str:
    shown = ", ".join(map(repr, list(unknown)[:10])) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
    return f"{where} unknown column(s) {shown}; the model's columns are: {', '.join(known)}"


def rows_to_columns(rows: Sequence[Any], columns: Sequence[str], unknown: str = "error") -> dict[str, np.ndarray]:
    """JSON rows (dicts) -> one object array per name in ``columns``; missing keys and ``None`` are ``None``.

    Keys not in ``columns`` raise :class:`UnknownColumnsError` naming them, or
    are dropped with ``unknown="ignore"``. A row that is not a dict, or a
    value that is not a scalar (list, dict, ...), raises :class:`TabularInputError`.
    The processors take the result as it is: the service builds no DataFrame per request.
    """
    if unknown not in ("error", "ignore"):
        raise ValueError(f"unknown must be 'error' or 'ignore', got {unknown!r}")
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Sequence):
        raise TabularInputError(f"rows must be a list of objects, got {type(rows).__name__}")
    plain = _plain_json_columns(rows, columns, check_keys=unknown == "error")
    if plain is not None:
        return plain
    return json_columns_cell_by_cell(rows, columns, unknown)


def rows_to_frame(rows: Sequence[Any], columns: Sequence[str], unknown: str = "error") -> pd.DataFrame:
    """:func:`rows_to_columns` as a frame with exactly ``columns`` (object dtype)."""
    return pd.DataFrame(rows_to_columns(rows, columns, unknown), columns=list(columns), copy=False)


def json_columns_cell_by_cell(
    rows: Sequence[Any], columns: Sequence[str], unknown: str = "error"
) -> dict[str, np.ndarray]:
    """:func:`rows_to_columns` for any sequence of rows, checked cell by cell: the reference of the fast path.

    Takes what the fast path leaves (an error to report, a Mapping that is not
    a dict, numpy values) and reports the first problem in row order.
    """
    data = {name: np.full(len(rows), None, dtype=object) for name in columns}
    extra: dict[str, None] = {}  # ordered set
    for position, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TabularInputError(
                f"row {position}: expected an object of column values, got {type(row).__name__}", row=position
            )
        if unknown == "error" and len(row) and any(key not in data for key in row):
            extra.update(dict.fromkeys(str(key) for key in row if key not in data))
        for name, column in data.items():
            value = row.get(name)
            if value is not None and type(value) not in _JSON_SCALARS and not ptypes.is_scalar(value):
                raise TabularInputError(
                    f"column {name!r}, row {position}: expected a single value, got {type(value).__name__}",
                    column=name,
                    row=position,
                )
            column[position] = value
    if extra:
        raise UnknownColumnsError(list(extra), list(columns))
    return data


def _plain_json_columns(rows: Sequence[Any], columns: Sequence[str], check_keys: bool) -> dict[str, np.ndarray] | None:
    """The columns of rows that are dicts of JSON scalars with known keys, column by column; else None.

    What parsed JSON nearly always is, gathered with C-level iteration; any
    row or value that needs a check (and perhaps an error) gives None, and
    :func:`json_columns_cell_by_cell` finds it in the same order as ever.
    """
    if not all(type(row) is dict for row in rows):
        return None
    if check_keys:
        known = set(columns)
        if not all(row.keys() <= known for row in rows):
            return None
    data: dict[str, np.ndarray] = {}
    for name in columns:
        values = [row.get(name) for row in rows]
        if not set(map(type, values)) <= _JSON_VALUE_TYPES:
            return None
        column = np.empty(len(values), dtype=object)
        column[:] = values
        data[name] = column
    return data
