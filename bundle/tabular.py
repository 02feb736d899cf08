"""Tabular preprocessing shared by training and serving, written once.

fastai's tabular pipeline (date expansion, ``Categorify``, ``FillMissing``,
``Normalize``) in the shape of scikit-learn estimators: what is learned from
the training rows is computed in ``fit`` and only applied in ``transform``,
and the learned state is plain JSON data (``to_dict``/``from_dict``) so the
manifest carries it to the service, which replays it with this same code.

Category levels are compared as canonical strings (:func:`category_levels`):
``1``, ``1.0`` and ``"1"`` are the same level, ``True`` is ``"True"``, other
strings are taken as they are. A column that was numeric in training also
reads numeric strings as numbers at serving (``"3.0"`` is level ``"3"``).
Numeric vocabularies are sorted by value, text ones alphabetically; index 0 is
always ``#na#`` (missing or unseen).

Transforms are vectorised over columns (numpy), never looping over rows, and
work on a dict of arrays internally: pandas' per-call overhead would dominate
the one-row requests the service transforms.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

NA_LEVEL = "#na#"
NA_SUFFIX = "_na"
INDICATOR_VOCAB = (NA_LEVEL, "False", "True")
PROCS = ("categorify", "fill_missing", "normalize")
STATE_FORMAT = 1

DATE_PARTS = (
    "Year", "Month", "Week", "Day", "Dayofweek", "Dayofyear",
    "Is_month_end", "Is_month_start", "Is_quarter_end", "Is_quarter_start", "Is_year_end", "Is_year_start",
)  # fmt: skip
TIME_PARTS = ("Hour", "Minute", "Second")
# How TabularProcessor feeds each date part to the model. Fixed rather than
# data-driven so every bundle of a model family has the same inputs; Year is
# continuous so that years after the training window still mean something.
DATE_CAT_PARTS = (
    "Month", "Dayofweek",
    "Is_month_end", "Is_month_start", "Is_quarter_end", "Is_quarter_start", "Is_year_end", "Is_year_start",
)  # fmt: skip
DATE_CONT_PARTS = ("Year", "Week", "Day", "Dayofyear", "Elapsed")

_MAX_EXACT_INT = 2.0**53  # floats above this are not reliably integers


class TabularInputError(ValueError):
    """A value the preprocessing cannot use; ``column`` and ``row`` (position) locate it."""

    def __init__(self, message: str, column: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.row = row


@dataclass(frozen=True)
class ProcessedTable:
    """Model inputs for N rows: category codes and normalised continuous values."""

    x_cat: np.ndarray  # int64 [N, n_cat]
    x_cont: np.ndarray  # float32 [N, n_cont]

    def __len__(self) -> int:
        return self.x_cat.shape[0]


# ---------------------------------------------------------------------------
# Helpers on whole frames


def cont_cat_split(
    df: pd.DataFrame, max_card: int = 20, dep_var: str | Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """fastai's rule: float columns and integer columns with more than ``max_card`` levels are continuous."""
    excluded = {dep_var} if isinstance(dep_var, str) else set(dep_var or ())
    cont_names: list[str] = []
    cat_names: list[str] = []
    for name in df.columns:
        if name in excluded:
            continue
        dtype = df[name].dtype
        is_int = ptypes.is_integer_dtype(dtype) and not ptypes.is_bool_dtype(dtype)
        if ptypes.is_float_dtype(dtype) or (is_int and df[name].nunique(dropna=False) > max_card):
            cont_names.append(name)
        else:
            cat_names.append(name)
    return cont_names, cat_names


def date_prefix(field_name: str) -> str:
    """fastai's default prefix: the field name without a trailing ``date``/``Date``."""
    return re.sub("[Dd]ate$", "", field_name)


def date_parts(values: pd.Series, prefix: str, time: bool = False) -> dict[str, pd.Series]:
    """The date-part columns of one field, keyed by output name; unparseable dates give missing values.

    Numeric parts are nullable ``Int64`` (``Elapsed`` is float seconds since
    1970-01-01 UTC), the ``Is_*`` flags nullable ``boolean``. Time-zone-aware
    values are converted to UTC first.
    """
    numbers, flags, missing = date_part_arrays(values, time=time)
    index = values.index
    parts: dict[str, pd.Series] = {}
    for part in DATE_PARTS + (TIME_PARTS if time else ()):
        if part in flags:
            parts[prefix + part] = pd.Series(pd.arrays.BooleanArray(flags[part], missing.copy()), index=index)
        else:
            parts[prefix + part] = pd.Series(numbers[part], index=index).astype("Int64")
    parts[prefix + "Elapsed"] = pd.Series(numbers["Elapsed"], index=index)
    return parts


def date_part_arrays(
    values: pd.Series | np.ndarray,
    time: bool = False,
    format: str | None = None,
    strict: bool = False,
    column: str | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Date parts in numpy: (numeric parts as float64 with NaN, ``Is_*`` flags as bool, missing mask).

    Text is parsed with ``format`` (a ``strftime`` pattern, or ``"ISO8601"``);
    without one any format pandas recognises is accepted. An unparseable
    value is missing, or with ``strict`` a :class:`TabularInputError` naming
    ``column`` and the row. Computed from datetime64 arithmetic rather than
    pandas' ``.dt`` accessors, which cost milliseconds per call on the
    one-row requests of the service.
    """
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    dates = _to_datetime(series, format, strict, column).to_numpy()
    missing = np.isnat(dates)
    safe = np.where(missing, np.datetime64(0, "s"), dates)
    day = safe.astype("datetime64[D]")
    month_start = safe.astype("datetime64[M]")
    year = safe.astype("datetime64[Y]").astype(np.int64) + 1970
    month = month_start.astype(np.int64) % 12 + 1
    day_of_month = (day - month_start.astype("datetime64[D]")).astype(np.int64) + 1
    day_of_year = (day - safe.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64) + 1
    day_of_week = (day.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    month_length = ((month_start + 1).astype("datetime64[D]") - month_start.astype("datetime64[D]")).astype(np.int64)
    is_month_end = day_of_month == month_length
    numbers = {
        "Year": year,
        "Month": month,
        "Week": _iso_week(year, day_of_year, day_of_week),
        "Day": day_of_month,
        "Dayofweek": day_of_week,
        "Dayofyear": day_of_year,
    }
    if time:
        seconds = (safe - day).astype("timedelta64[s]").astype(np.int64)
        numbers.update(Hour=seconds // 3600, Minute=seconds // 60 % 60, Second=seconds % 60)
    numbers = {part: np.where(missing, np.nan, v.astype(np.float64)) for part, v in numbers.items()}
    numbers["Elapsed"] = (dates - np.datetime64(0, "s")) / np.timedelta64(1, "s")
    quarter_month = month % 3
    flags = {
        "Is_month_end": is_month_end,
        "Is_month_start": day_of_month == 1,
        "Is_quarter_end": is_month_end & (quarter_month == 0),
        "Is_quarter_start": (day_of_month == 1) & (quarter_month == 1),
        "Is_year_end": (month == 12) & (day_of_month == 31),
        "Is_year_start": day_of_year == 1,
    }
    return numbers, {part: v & ~missing for part, v in flags.items()}, missing


def _iso_week(year: np.ndarray, day_of_year: np.ndarray, day_of_week: np.ndarray) -> np.ndarray:
    """ISO-8601 week number (weeks start on Monday; week 1 holds the year's first Thursday)."""
    week = (day_of_year - (day_of_week + 1) + 10) // 7
    late = np.where(week > _iso_weeks_in_year(year), 1, week)  # the first days of next year's week 1
    return np.where(week < 1, _iso_weeks_in_year(year - 1), late)  # the last week of the year before


def _iso_weeks_in_year(year: np.ndarray) -> np.ndarray:
    def dec31_weekday(y: np.ndarray) -> np.ndarray:  # 4 = the year ends on a Thursday
        return (y + y // 4 - y // 100 + y // 400) % 7

    return np.where((dec31_weekday(year) == 4) | (dec31_weekday(year - 1) == 3), 53, 52)


def add_datepart(
    df: pd.DataFrame, field_name: str, prefix: str | None = None, drop: bool = True, time: bool = False
) -> pd.DataFrame:
    """A copy of ``df`` with fastai's date-part columns for ``field_name`` appended (and the field dropped)."""
    if field_name not in df.columns:
        raise KeyError(f"add_datepart: no column {field_name!r}; columns are {list(df.columns)}")
    out = df.copy()
    new = date_parts(df[field_name], date_prefix(field_name) if prefix is None else prefix, time=time)
    for name, values in new.items():
        out[name] = values
    return out.drop(columns=[field_name]) if drop else out


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
    # Anything else (an error to report, a Mapping that is not a dict, numpy values) is checked cell by cell.
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


_JSON_SCALARS = frozenset((str, int, float, bool))


def _plain_json_columns(rows: Sequence[Any], columns: Sequence[str], check_keys: bool) -> dict[str, np.ndarray] | None:
    """The columns of rows that are dicts of JSON scalars with known keys, column by column; else None.

    What parsed JSON nearly always is, gathered with C-level iteration; any
    row or value that needs a check (and perhaps an error) gives None, and the
    caller's cell-by-cell loop finds it in the same order as ever.
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


_JSON_VALUE_TYPES = _JSON_SCALARS | {type(None)}


def rows_to_frame(rows: Sequence[Any], columns: Sequence[str], unknown: str = "error") -> pd.DataFrame:
    """:func:`rows_to_columns` as a frame with exactly ``columns`` (object dtype)."""
    return pd.DataFrame(rows_to_columns(rows, columns, unknown), columns=list(columns), copy=False)


# ---------------------------------------------------------------------------
# Value coercion shared by the processors (and by bundle.reference)


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
        numbers = np.asarray(pd.to_numeric(raw, errors="coerce"), dtype=np.float64)
        suspect = np.isnan(numbers)
        for position in np.flatnonzero(suspect & ~pd.isna(raw)) if suspect.any() else ():
            value = raw[position]
            if isinstance(value, str) and value.strip().lower() in ("", "nan"):
                continue  # blank CSV cells and "NaN" text are missing values
            raise TabularInputError(
                f"column {column!r}, row {position}: {_show(value)} is not a number", column=column, row=int(position)
            )
    infinite = np.isinf(numbers)
    if infinite.any():
        position = int(np.flatnonzero(infinite)[0])
        raise TabularInputError(
            f"column {column!r}, row {position}: {_show(raw[position])} is not allowed "
            "(NaN/Infinity not allowed; send null for a missing value)",
            column=column,
            row=position,
        )
    return numbers


def _plain_numbers(raw: np.ndarray) -> np.ndarray | None:
    """An object array of only Python ints, floats and ``None`` (JSON's usual column) as float64, else None.

    A cheap path past ``pd.to_numeric``, whose per-call cost dominates a
    one-row request; it gives the same floats (``None`` -> NaN). Anything
    else (text, booleans, numpy scalars, an int beyond float range) is left to
    the general path.
    """
    if not set(map(type, raw)) <= JSON_NUMBER_TYPES:
        return None
    try:
        return raw.astype(np.float64)
    except OverflowError:
        return None


JSON_NUMBER_TYPES = frozenset((int, float, type(None)))  # JSON numbers and null, parsed; bool is no number here


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
    levels = np.full(raw.shape[0], None, dtype=object)
    present = ~np.isnan(raw) if kind == "f" else ~pd.isna(raw)
    if present.any():
        levels[present] = _number_levels(raw[present]) if kind == "f" else _object_levels(raw[present], numeric)
    return levels


def _plain_levels(raw: np.ndarray, numeric: bool) -> np.ndarray | None:
    """Levels of an object column of one Python type (str, int, float or bool) and ``None``, else None.

    The same levels as the general path below, without its ``pd.isna`` and
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
    numbers = np.asarray(pd.to_numeric(values, errors="coerce"), dtype=np.float64)
    as_number = ~np.isnan(numbers) & ~is_flag & (True if numeric else ~is_text)
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


def _columns_of(df: pd.DataFrame, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named columns as arrays; an absent column is all missing."""
    if not isinstance(df, pd.DataFrame):
        raise TabularInputError(f"expected a DataFrame of rows, got {type(df).__name__}")
    absent = np.full(len(df), np.nan)
    return {name: column_values(df[name]) if name in df.columns else absent for name in names}


def _to_datetime(
    values: pd.Series, format: str | None = None, strict: bool = False, column: str | None = None
) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").dt.tz_localize(None)
    if ptypes.is_datetime64_dtype(values.dtype):
        return values
    if values.isna().all():
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    # utc=True accepts mixed offsets; naive values are taken as UTC.
    parsed = pd.to_datetime(values, errors="coerce", format=format or "mixed", utc=True)
    if strict:
        blank = values.isna().to_numpy() | values.astype(str).str.strip().isin(["", "nan", "NaN", "NaT"]).to_numpy()
        bad = np.flatnonzero(parsed.isna().to_numpy() & ~blank)
        if bad.size:
            position = int(bad[0])
            expected = "ISO 8601, e.g. 2014-03-05 or 2014-03-05T17:30:00Z" if format in (None, "ISO8601") else format
            raise TabularInputError(
                f"column {column!r}, row {position}: {_show(values.iloc[position])} is not a date ({expected})",
                column=column,
                row=position,
            )
    return parsed.dt.tz_localize(None)


def _warn_unparseable_dates(values: pd.Series, field: str, format: str) -> None:
    try:
        _to_datetime(values, format, strict=True, column=field)
    except TabularInputError as exc:
        parsed = pd.to_datetime(values, errors="coerce", format=format, utc=True) if values.dtype == object else None
        count = int((parsed.isna() & values.notna()).sum()) if parsed is not None else 1
        warnings.warn(
            f"{count} value(s) of date field {field!r} are not dates in {format} and are read as missing "
            f"(first: {exc}); give the field's format (date_formats / --date-format) if they are dates",
            stacklevel=3,
        )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _state(d: Mapping[str, Any], key: str, owner: str) -> Any:
    try:
        return d[key]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{owner} state has no {key!r} entry") from exc


# ---------------------------------------------------------------------------
# The processors
#
# Each takes a DataFrame or a dict of column arrays and returns the same kind,
# with a fresh positional index; learned state is plain data in to_dict().

Table = pd.DataFrame | Mapping[str, np.ndarray]


def _n_rows(table: Table) -> int:
    if isinstance(table, pd.DataFrame):
        return len(table)
    return len(next(iter(table.values()))) if table else 0


def _table_columns(table: Table, names: Sequence[str]) -> dict[str, np.ndarray]:
    if isinstance(table, pd.DataFrame):
        return _columns_of(table, names)
    if not isinstance(table, Mapping):
        raise TabularInputError(f"expected a DataFrame of rows, got {type(table).__name__}")
    absent = np.full(_n_rows(table), np.nan)
    return {name: column_values(table[name]) if name in table else absent for name in names}


def _with_columns(table: Table, new: dict[str, np.ndarray]) -> Table:
    if isinstance(table, pd.DataFrame):
        return table.reset_index(drop=True).assign(**new)
    return {**table, **new}


class Categorify:
    """Category columns -> int64 codes; vocabulary per column with ``#na#`` (missing/unseen) at 0."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.vocab: dict[str, list[str]] = {}
        self.numeric: list[str] = []  # columns that were numeric in training
        self._lookups: dict[str, dict[str, int]] = {}  # level -> code, per column

    def fit(self, table: Table) -> Categorify:
        self.vocab, self.numeric, self._lookups = {}, [], {}
        for name, values in _table_columns(table, self.columns).items():
            numeric = values.dtype.kind in "iuf"
            levels = category_levels(values, numeric=numeric)
            unique = pd.unique(levels[levels != None])  # noqa: E711 (elementwise test on an object array)
            unique = unique[unique != NA_LEVEL]
            if numeric:
                unique = unique[np.argsort(unique.astype(np.float64), kind="stable")]
                self.numeric.append(name)
            else:
                unique = np.sort(unique.astype(str))
            self.vocab[name] = [NA_LEVEL, *(str(level) for level in unique)]
        return self

    def set_vocab(self, name: str, levels: Sequence[str]) -> None:
        """Fix a column's vocabulary (used for ``_na`` indicators, whose levels are known in advance)."""
        self.vocab[name] = list(levels)
        self._lookups.pop(name, None)

    def transform(self, table: Table) -> np.ndarray:
        """Codes ``int64 [N, len(columns)]``."""
        codes = np.zeros((_n_rows(table), len(self.columns)), dtype=np.int64)
        for j, (name, values) in enumerate(_table_columns(table, self.columns).items()):
            lookup = self._lookup(name)
            if values.dtype.kind == "b":  # the _na flags: two levels, never missing
                codes[:, j] = np.where(values, lookup.get("True", 0), lookup.get("False", 0))
            else:
                levels = category_levels(values, numeric=name in self.numeric)
                codes[:, j] = np.fromiter(map(lookup.get, levels, repeat(0)), dtype=np.int64, count=len(levels))
        return codes

    def _lookup(self, name: str) -> dict[str, int]:
        # A dict of the vocabulary, applied with map (C, no Python loop): missing (None) and unseen levels
        # get 0; far cheaper per call than a pandas Index or a binary search over numpy strings.
        if name not in self.vocab:
            raise ValueError(f"Categorify is not fitted for column {name!r}")
        if name not in self._lookups:
            lookup: dict[str, int] = {}
            for code, level in enumerate(self.vocab[name]):
                lookup.setdefault(level, code)  # the first of any repeated level, as a search would find
            self._lookups[name] = lookup
        return self._lookups[name]

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "vocab": {k: list(v) for k, v in self.vocab.items()},
                "numeric": list(self.numeric)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Categorify:
        proc = cls(_state(d, "columns", "Categorify"))
        proc.vocab = {str(k): [str(level) for level in v] for k, v in _state(d, "vocab", "Categorify").items()}
        proc.numeric = list(_state(d, "numeric", "Categorify"))
        return proc


class FillMissing:
    """Fill continuous columns with the training median; add ``<col>_na`` flags where training had gaps.

    Every column gets a fill value, so a column that was complete in training
    but arrives empty at serving is still filled (it gets no flag column).
    """

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.fill_values: dict[str, float] = {}
        self.na_columns: list[str] = []

    @property
    def indicator_names(self) -> list[str]:
        return [name + NA_SUFFIX for name in self.na_columns]

    def fit(self, table: Table) -> FillMissing:
        self.fill_values, self.na_columns = {}, []
        for name, values in _table_columns(table, self.columns).items():
            numbers = to_numbers(values, name)
            missing = np.isnan(numbers)
            self.fill_values[name] = 0.0 if missing.all() else float(np.median(numbers[~missing]))
            if missing.any():
                self.na_columns.append(name)
        return self

    def transform(self, table: Table) -> Table:
        """The columns filled (float64) plus a boolean ``<col>_na`` column per flagged column."""
        if len(self.fill_values) != len(self.columns):
            raise ValueError("FillMissing is not fitted")
        new: dict[str, np.ndarray] = {}
        for name, values in _table_columns(table, self.columns).items():
            numbers = to_numbers(values, name)
            missing = np.isnan(numbers)
            new[name] = np.where(missing, self.fill_values[name], numbers)
            if name in self.na_columns:
                new[name + NA_SUFFIX] = missing
        return _with_columns(table, new)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "fill_values": dict(self.fill_values),
                "na_columns": list(self.na_columns)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FillMissing:
        proc = cls(_state(d, "columns", "FillMissing"))
        proc.fill_values = {str(k): float(v) for k, v in _state(d, "fill_values", "FillMissing").items()}
        proc.na_columns = list(_state(d, "na_columns", "FillMissing"))
        return proc


class Normalize:
    """Standardise continuous columns with the training mean and population std (ddof=0; std 0 -> 1)."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.means: dict[str, float] = {}
        self.stds: dict[str, float] = {}

    def fit(self, table: Table) -> Normalize:
        self.means, self.stds = {}, {}
        for name, values in _table_columns(table, self.columns).items():
            numbers = to_numbers(values, name)
            present = numbers[~np.isnan(numbers)]
            std = float(present.std(ddof=0)) if present.size else 0.0
            self.means[name] = float(present.mean()) if present.size else 0.0
            self.stds[name] = std if std > 0 else 1.0
        return self

    def transform(self, table: Table) -> Table:
        """The columns standardised as float64."""
        if len(self.means) != len(self.columns):
            raise ValueError("Normalize is not fitted")
        new = {
            name: (to_numbers(values, name) - self.means[name]) / self.stds[name]
            for name, values in _table_columns(table, self.columns).items()
        }
        return _with_columns(table, new)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "means": dict(self.means), "stds": dict(self.stds)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalize:
        proc = cls(_state(d, "columns", "Normalize"))
        proc.means = {str(k): float(v) for k, v in _state(d, "means", "Normalize").items()}
        proc.stds = {str(k): float(v) for k, v in _state(d, "stds", "Normalize").items()}
        return proc


# ---------------------------------------------------------------------------
# The composition training and serving both use


class TabularProcessor:
    """Date expansion + Categorify + FillMissing + Normalize, fitted once and replayed everywhere.

    ``cat_names``/``cont_names``/``date_fields`` given here are raw input
    columns. After ``fit``, the :attr:`cat_names` and :attr:`cont_names`
    properties are the processed columns in model-input order: categorical =
    raw categoricals, date categoricals, then ``_na`` flags; continuous = raw
    continuous then date continuous (see ``DATE_CAT_PARTS``/``DATE_CONT_PARTS``).
    """

    def __init__(
        self,
        cat_names: Sequence[str],
        cont_names: Sequence[str],
        date_fields: Sequence[str] = (),
        procs: Sequence[str] = PROCS,
        date_formats: Mapping[str, str] | None = None,
    ) -> None:
        self.raw_cat_names = list(cat_names)
        self.raw_cont_names = list(cont_names)
        self.date_fields = list(date_fields)
        # how each date field's text is read: a strftime pattern; ISO 8601 when not given
        self.date_formats = {str(k): str(v) for k, v in (date_formats or {}).items()}
        unknown_fields = sorted(set(self.date_formats) - set(self.date_fields))
        if unknown_fields:
            raise ValueError(f"date formats given for {unknown_fields}, which are not date fields")
        self.procs = list(procs)
        unknown = [p for p in self.procs if p not in PROCS]
        if unknown:
            raise ValueError(f"unknown tabular procs {unknown}: use some of {list(PROCS)}")
        seen: set[str] = set()
        for name in self.raw_columns:
            if name in seen:
                raise ValueError(f"column {name!r} is listed more than once among cat/cont/date columns")
            seen.add(name)
        derived = [date_prefix(f) + part for f in self.date_fields for part in DATE_CAT_PARTS + DATE_CONT_PARTS]
        clashes = sorted(seen.intersection(derived) | {n for n in derived if derived.count(n) > 1})
        if clashes:
            raise ValueError(f"date parts would overwrite columns {clashes}: rename them or the date field")
        if "categorify" not in self.procs and self._base_cat_names():
            raise ValueError("categorical columns need the 'categorify' proc to become model inputs")
        self.categorify: Categorify | None = None
        self.fill_missing: FillMissing | None = None
        self.normalize: Normalize | None = None
        self.fitted = False

    def __repr__(self) -> str:
        return (
            f"TabularProcessor(cat_names={self.raw_cat_names}, cont_names={self.raw_cont_names}, "
            f"date_fields={self.date_fields}, procs={self.procs}, fitted={self.fitted})"
        )

    @property
    def input_cat_names(self) -> list[str]:
        """Alias of ``raw_cat_names``."""
        return self.raw_cat_names

    @property
    def input_cont_names(self) -> list[str]:
        """Alias of ``raw_cont_names``."""
        return self.raw_cont_names

    @property
    def raw_columns(self) -> list[str]:
        """The columns a caller sends: categorical, continuous, then date fields."""
        return self.raw_cat_names + self.raw_cont_names + self.date_fields

    @property
    def cat_names(self) -> list[str]:
        # Without categorify the flags have nowhere to go, so they are not model inputs.
        with_flags = self.fill_missing is not None and "categorify" in self.procs
        return self._base_cat_names() + (self.fill_missing.indicator_names if with_flags else [])

    @property
    def cont_names(self) -> list[str]:
        return self.raw_cont_names + [
            date_prefix(field) + part for field in self.date_fields for part in DATE_CONT_PARTS
        ]

    def fit(self, df: pd.DataFrame) -> TabularProcessor:
        """Learn from training rows (an unparseable date is a missing value here, as in fastai, with a warning)."""
        for field in self.date_fields:
            if field in df.columns:
                _warn_unparseable_dates(df[field], field, self.date_formats.get(field, "ISO8601"))
        work = self._expand(df)
        conts = self.cont_names
        self.categorify = self.fill_missing = self.normalize = None
        if "fill_missing" in self.procs:
            self.fill_missing = FillMissing(conts).fit(work)
            work = self.fill_missing.transform(work)
        if "normalize" in self.procs:
            self.normalize = Normalize(conts).fit(work)
        if "categorify" in self.procs:
            self.categorify = Categorify(self.cat_names).fit(work)
            for flag in self.fill_missing.indicator_names if self.fill_missing is not None else []:
                self.categorify.set_vocab(flag, INDICATOR_VOCAB)
        self.fitted = True
        return self

    def transform(self, df: Table, strict: bool = False) -> ProcessedTable:
        """Raw rows (a DataFrame, or column arrays as :func:`rows_to_columns` gives) -> model inputs.

        Absent columns are all missing, extra columns are ignored. With
        ``strict`` (rows arriving to be predicted) an unparseable date raises
        :class:`TabularInputError` rather than reading as missing.
        """
        if not self.fitted:
            raise ValueError("TabularProcessor is not fitted: call fit(train_df) first")
        columns = self._expand(df, strict)
        if self.fill_missing is not None:
            columns = self.fill_missing.transform(columns)
        if self.normalize is not None:
            columns = self.normalize.transform(columns)
        n = _n_rows(df)
        x_cat = self.categorify.transform(columns) if self.categorify is not None else np.zeros((n, 0), np.int64)
        conts = self.cont_names
        x_cont = np.zeros((n, len(conts)), dtype=np.float32)
        for j, name in enumerate(conts):
            x_cont[:, j] = columns[name]
        return ProcessedTable(x_cat=x_cat, x_cont=x_cont)

    def fit_transform(self, df: pd.DataFrame) -> ProcessedTable:
        return self.fit(df).transform(df)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "raw_cat_names": list(self.raw_cat_names),
            "raw_cont_names": list(self.raw_cont_names),
            "date_fields": list(self.date_fields),
            "date_formats": dict(self.date_formats),
            "procs": list(self.procs),
            "fitted": self.fitted,
            "categorify": self.categorify.to_dict() if self.categorify is not None else None,
            "fill_missing": self.fill_missing.to_dict() if self.fill_missing is not None else None,
            "normalize": self.normalize.to_dict() if self.normalize is not None else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TabularProcessor:
        fmt = _state(d, "format", "TabularProcessor")
        if fmt != STATE_FORMAT:
            raise ValueError(f"TabularProcessor state format {fmt!r}, this code reads {STATE_FORMAT}")
        proc = cls(
            _state(d, "raw_cat_names", "TabularProcessor"),
            _state(d, "raw_cont_names", "TabularProcessor"),
            _state(d, "date_fields", "TabularProcessor"),
            _state(d, "procs", "TabularProcessor"),
            d.get("date_formats") or None,  # bundles written before formats were recorded read ISO 8601
        )
        if d.get("categorify") is not None:
            proc.categorify = Categorify.from_dict(d["categorify"])
        if d.get("fill_missing") is not None:
            proc.fill_missing = FillMissing.from_dict(d["fill_missing"])
        if d.get("normalize") is not None:
            proc.normalize = Normalize.from_dict(d["normalize"])
        proc.fitted = bool(d.get("fitted", True))
        return proc

    def _base_cat_names(self) -> list[str]:
        return self.raw_cat_names + [
            date_prefix(field) + part for field in self.date_fields for part in DATE_CAT_PARTS
        ]

    def _expand(self, df: Table, strict: bool = False) -> dict[str, np.ndarray]:
        """Only the columns the processors read: categoricals raw, continuous as float64, date parts."""
        columns = _table_columns(df, self.raw_cat_names + self.raw_cont_names)
        for name in self.raw_cont_names:
            columns[name] = to_numbers(columns[name], name)
        for field in self.date_fields:
            prefix = date_prefix(field)
            # a frame's own column keeps its dtype (datetime64, time zone); arrays are parsed as they are
            present = field in (df.columns if isinstance(df, pd.DataFrame) else df)
            dates = df[field] if present else np.full(_n_rows(df), None, dtype=object)
            fmt = self.date_formats.get(field, "ISO8601")
            numbers, flags, missing = date_part_arrays(dates, format=fmt, strict=strict, column=field)
            for part in DATE_CAT_PARTS:
                if part in flags:  # text levels "False"/"True", None where the date is missing
                    columns[prefix + part] = np.where(missing, None, np.where(flags[part], "True", "False"))
                else:
                    columns[prefix + part] = numbers[part]
            columns.update({prefix + part: numbers[part] for part in DATE_CONT_PARTS})
        return columns
