"""Value coercion shared by the processors (and by bundle.reference): columns as numbers, or as category levels.

Category levels are compared as canonical strings (:func:`category_levels`):
``1``, ``1.0`` and ``"1"`` are the same level, ``True`` is ``"True"``, other
strings are taken as they are. A column that was numeric in training also
reads numeric strings as numbers at serving (``"3.0"`` is level ``"3"``).

Each coercion has a fast path for the columns JSON nearly always gives
(:func:`_plain_numbers`, :func:`_plain_levels`) beside the general version it
must agree with (:func:`numbers_by_pandas`, :func:`levels_by_pandas`), whose
pandas calls cost more than the rest on a one-row request (figures in
docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from bundle.tabular.errors import TabularInputError, show_value

JSON_NUMBER_TYPES = frozenset((int, float, type(None)))  # JSON numbers and null, parsed; bool is no number here
_MAX_EXACT_INT = 2.0**53  # floats above this are not reliably integers


def column_values(values: pd.Series | np.ndarray | Sequence[Any]) -> np.ndarray:
    """A column as a numpy array: numeric dtypes as they are (float64 with NaN for nullable ones), else objects."""
    if isinstance(values, np.ndarray):
        return values if values.dtype.kind in "biufO" else values.astype(object)
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
        return series.to_numpy()
    if _is_number_dtype(dtype):  # nullable Int64/Float64
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    return series.to_numpy(dtype=object)  # missing stays None/NaN/NA: pd.isna reads them all


# -- numbers -------------------------------------------------------------------------------------


def to_numbers(values: pd.Series | np.ndarray, column: str) -> np.ndarray:
    """A column as float64 with NaN for missing; non-numbers and infinities raise :class:`TabularInputError`.

    Booleans and numeric strings (``"3.5"``) are numbers; ``None``, NaN and
    blank strings are missing. A float64 input may be returned as is (not copied).
    """
    raw = column_values(values)
    if raw.dtype.kind in "biuf":
        numbers = raw.astype(np.float64, copy=False)
    elif (plain := _plain_numbers(raw)) is not None:
        numbers = plain
    else:
        numbers = numbers_by_pandas(raw, column)
    infinite = np.isinf(numbers)
    if infinite.any():
        position = int(np.flatnonzero(infinite)[0])
        raise TabularInputError(
            f"column {column!r}, row {position}: {show_value(raw[position])} is not allowed "
            "(NaN/Infinity not allowed; send null for a missing value)",
            column=column,
            row=position,
        )
    return numbers


def numbers_by_pandas(raw: np.ndarray, column: str) -> np.ndarray:
    """Any array as float64 through ``pd.to_numeric``; a value that is not a number raises (the reference path).

    ``None``, NaN, blank strings and ``"NaN"`` text are missing (NaN);
    infinities pass (:func:`to_numbers` refuses them after either path).
    """
    numbers = np.asarray(pd.to_numeric(raw, errors="coerce"), dtype=np.float64)
    suspect = np.isnan(numbers)
    for position in np.flatnonzero(suspect & ~pd.isna(raw)) if suspect.any() else ():
        value = raw[position]
        if isinstance(value, str) and value.strip().lower() in ("", "nan"):
            continue  # blank CSV cells and "NaN" text are missing values
        raise TabularInputError(
            f"column {column!r}, row {position}: {show_value(value)} is not a number", column=column, row=int(position)
        )
    return numbers


def _plain_numbers(raw: np.ndarray) -> np.ndarray | None:
    """An object array of only Python ints, floats and ``None`` (JSON's usual column) as float64, else None.

    A cheap path past ``pd.to_numeric``, whose per-call cost dominates a
    one-row request; it gives the same floats as :func:`numbers_by_pandas`
    (``None`` -> NaN). Anything else (text, booleans, numpy scalars, an int
    beyond float range) is left to the general path.
    """
    if not set(map(type, raw)) <= JSON_NUMBER_TYPES:
        return None
    try:
        return raw.astype(np.float64)
    except OverflowError:
        return None


# -- category levels -----------------------------------------------------------------------------


def category_levels(values: pd.Series | np.ndarray | Sequence[Any], numeric: bool = False) -> np.ndarray:
    """Canonical level strings (object array, ``None`` where missing).

    Strings stay as they are; numbers print canonically, integral ones as
    integers (``3``, ``3.0`` -> ``"3"``), others in shortest round-trip form;
    booleans are ``"True"``/``"False"``. With ``numeric`` (the column was
    numeric in training) numeric strings are read as numbers, so ``"3.0"``
    -> ``"3"`` too.
    """
    raw = column_values(values)
    kind = raw.dtype.kind
    if kind in "iu":
        return raw.astype(str).astype(object)
    if kind == "b":
        return np.where(raw, "True", "False").astype(object)
    if kind == "O" and (plain := _plain_levels(raw, numeric)) is not None:
        return plain
    return levels_by_pandas(raw, numeric)


def levels_by_pandas(raw: np.ndarray, numeric: bool = False) -> np.ndarray:
    """:func:`category_levels` of an array of any dtype and any mix of types (the reference path)."""
    if raw.dtype.kind not in "fO":
        raw = raw.astype(object)
    kind = raw.dtype.kind
    levels = np.full(raw.shape[0], None, dtype=object)
    present = ~np.isnan(raw) if kind == "f" else ~pd.isna(raw)
    if present.any():
        levels[present] = _number_levels(raw[present]) if kind == "f" else _object_levels(raw[present], numeric)
    return levels


def _plain_levels(raw: np.ndarray, numeric: bool) -> np.ndarray | None:
    """Levels of an object column of one Python type (str, int, float or bool) and ``None``, else None.

    The same levels as :func:`levels_by_pandas`, without its ``pd.isna`` and
    ``infer_dtype`` calls, which cost more than the rest on a one-row request.
    Text in a numeric column, and mixed types, take the general path.
    """
    types = set(map(type, raw))
    types.discard(type(None))
    if len(types) != 1 or (kind := next(iter(types))) not in (str, int, float, bool) or (numeric and kind is str):
        return None if types else np.full(raw.shape[0], None, dtype=object)
    levels = raw.copy()
    present = raw != None  # noqa: E711 (elementwise test on an object array)
    if kind is str:
        return levels
    if kind is float:
        floats = raw[present].astype(np.float64)
        present[present] = ~np.isnan(floats)  # a NaN object is missing
        levels[~present] = None
        levels[present] = _number_levels(floats[~np.isnan(floats)])
        return levels
    levels[present] = list(map(str, raw[present]))  # ints print as integers, booleans as True/False
    return levels


def _object_levels(values: np.ndarray, numeric: bool) -> np.ndarray:
    """Levels of non-missing Python objects, vectorised by the mix of types present."""
    inferred = ptypes.infer_dtype(values, skipna=False)
    if inferred == "string" and not numeric:
        return values
    if inferred in ("integer", "boolean"):
        return values.astype(str).astype(object)
    text = values.astype(str).astype(object)
    is_text = values == text  # elementwise: only strings equal their own str()
    is_flag = ~is_text & np.isin(text, ("True", "False"))
    # An integer's level is its digits, as in a column of integers alone; as a float it would lose
    # digits beyond 2**53, and one beyond float range (a JSON integer may have 310 digits) cannot be one.
    is_integer = np.fromiter((isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values), bool)
    numbers = np.full(len(values), np.nan)
    wanted = ~is_flag & ~is_integer & (True if numeric else ~is_text)
    if wanted.any():
        numbers[wanted] = np.asarray(pd.to_numeric(values[wanted], errors="coerce"), dtype=np.float64)
    as_number = ~np.isnan(numbers)
    if as_number.any():
        text[as_number] = _number_levels(numbers[as_number])
    return text


def _is_number_dtype(dtype: Any) -> bool:
    return ptypes.is_numeric_dtype(dtype) and not ptypes.is_bool_dtype(dtype) and not ptypes.is_complex_dtype(dtype)


def _number_levels(floats: np.ndarray) -> np.ndarray:
    floats = floats.astype(np.float64)
    levels = floats.astype(str).astype(object)
    integral = np.isfinite(floats) & (np.floor(floats) == floats) & (np.abs(floats) < _MAX_EXACT_INT)
    levels[integral] = floats[integral].astype(np.int64).astype(str)
    return levels
