"""What the processors take and give: a DataFrame, or a dict of column arrays as :func:`rows_to_columns` gives.

Training hands the processors frames; the service hands them column arrays
(pandas' per-call overhead would dominate its one-row requests). Either way
an absent column reads as all missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

import numpy as np
import pandas as pd

from bundle.tabular.errors import TabularInputError
from bundle.tabular.values import column_values

Table: TypeAlias = pd.DataFrame | Mapping[str, np.ndarray]


def n_rows(table: Table) -> int:
    if isinstance(table, pd.DataFrame):
        return len(table)
    return len(next(iter(table.values()))) if table else 0


def table_columns(table: Table, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named columns as arrays (:func:`column_values`); an absent column is all missing."""
    if isinstance(table, pd.DataFrame):
        absent = np.full(len(table), np.nan)
        return {name: column_values(table[name]) if name in table.columns else absent for name in names}
    if not isinstance(table, Mapping):
        raise TabularInputError(f"expected a DataFrame of rows, got {type(table).__name__}")
    absent = np.full(n_rows(table), np.nan)
    return {name: column_values(table[name]) if name in table else absent for name in names}


def with_columns(table: Table, new: dict[str, np.ndarray]) -> Table:
    """The table with ``new`` columns added or replaced (a frame gets a fresh positional index)."""
    if isinstance(table, pd.DataFrame):
        return table.reset_index(drop=True).assign(**new)
    return {**table, **new}
