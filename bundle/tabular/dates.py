"""Date parts: fastai's ``add_datepart`` columns, computed in numpy for the service's one-row requests.

:func:`date_part_arrays` reads a field's text (or datetimes) and gives the
parts as arrays; :func:`date_parts` and :func:`add_datepart` are the same as
fastai's frame helpers. The parts are computed with datetime64 arithmetic
(:func:`parts_of_dates`); :func:`parts_of_dates_by_pandas` is the reference
it must agree with, written with pandas' ``.dt`` accessors as fastai reads
them, which cost far more per call (figures in docs/performance.md).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from bundle.tabular.errors import TabularInputError, show_value

DATE_PARTS = (
    "Year",
    "Month",
    "Week",
    "Day",
    "Dayofweek",
    "Dayofyear",
    "Is_month_end",
    "Is_month_start",
    "Is_quarter_end",
    "Is_quarter_start",
    "Is_year_end",
    "Is_year_start",
)
TIME_PARTS = ("Hour", "Minute", "Second")
# How TabularProcessor feeds each date part to the model. Fixed rather than
# data-driven so every bundle of a model family has the same inputs; Year is
# continuous so that years after the training window still mean something.
DATE_CAT_PARTS = (
    "Month",
    "Dayofweek",
    "Is_month_end",
    "Is_month_start",
    "Is_quarter_end",
    "Is_quarter_start",
    "Is_year_end",
    "Is_year_start",
)
DATE_CONT_PARTS = ("Year", "Week", "Day", "Dayofyear", "Elapsed")

DateParts = tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]


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


def date_part_arrays(
    values: pd.Series | np.ndarray,
    time: bool = False,
    format: str | None = None,
    strict: bool = False,
    column: str | None = None,
) -> DateParts:
    """Date parts in numpy: (numeric parts as float64 with NaN, ``Is_*`` flags as bool, missing mask).

    Text is parsed with ``format`` (a ``strftime`` pattern, or ``"ISO8601"``);
    without one any format pandas recognises is accepted. An unparseable
    value is missing, or with ``strict`` a :class:`TabularInputError` naming
    ``column`` and the row.
    """
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    return parts_of_dates(_to_datetime(series, format, strict, column).to_numpy(), time)


def parts_of_dates(dates: np.ndarray, time: bool = False) -> DateParts:
    """The parts of datetime64 values (NaT is missing), from datetime64 arithmetic.

    Not pandas' ``.dt`` accessors: their per-call cost dominates the one-row
    requests of the service. :func:`parts_of_dates_by_pandas` is the reference.
    """
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


def parts_of_dates_by_pandas(dates: np.ndarray, time: bool = False) -> DateParts:
    """The reference for :func:`parts_of_dates`: pandas' ``.dt`` accessors, as fastai's ``add_datepart`` reads them."""
    series = pd.Series(dates)
    missing = series.isna().to_numpy()
    accessor = series.dt
    parts = {
        "Year": accessor.year,
        "Month": accessor.month,
        "Week": accessor.isocalendar().week,
        "Day": accessor.day,
        "Dayofweek": accessor.day_of_week,
        "Dayofyear": accessor.day_of_year,
    }
    if time:
        parts.update(Hour=accessor.hour, Minute=accessor.minute, Second=accessor.second)
    numbers = {part: v.to_numpy(dtype=np.float64, na_value=np.nan) for part, v in parts.items()}
    # No accessor gives it: the definition, divided in the values' own unit as the fast path does (pandas would
    # first convert to nanoseconds, and round differently in the last bit).
    numbers["Elapsed"] = (dates - np.datetime64(0, "s")) / np.timedelta64(1, "s")
    flags = {
        part: getattr(accessor, part.lower()).to_numpy(dtype=bool) for part in DATE_PARTS if part.startswith("Is_")
    }
    return numbers, flags, missing


def _iso_week(year: np.ndarray, day_of_year: np.ndarray, day_of_week: np.ndarray) -> np.ndarray:
    """ISO-8601 week number (weeks start on Monday; week 1 holds the year's first Thursday)."""
    week = (day_of_year - (day_of_week + 1) + 10) // 7
    late = np.where(week > _iso_weeks_in_year(year), 1, week)  # the first days of next year's week 1
    return np.where(week < 1, _iso_weeks_in_year(year - 1), late)  # the last week of the year before


def _iso_weeks_in_year(year: np.ndarray) -> np.ndarray:
    def dec31_weekday(y: np.ndarray) -> np.ndarray:  # 4 = the year ends on a Thursday
        return (y + y // 4 - y // 100 + y // 400) % 7

    return np.where((dec31_weekday(year) == 4) | (dec31_weekday(year - 1) == 3), 53, 52)


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
                f"column {column!r}, row {position}: {show_value(values.iloc[position])} is not a date ({expected})",
                column=column,
                row=position,
            )
    return parsed.dt.tz_localize(None)


def warn_unparseable_dates(values: pd.Series, field: str, format: str) -> None:
    """Warn (training reads them as missing, as fastai does) when some values of a date field are not dates."""
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
