"""The composition training and serving both use: date expansion + Categorify + FillMissing + Normalize.

Fitted once on the training rows, saved as plain JSON in the manifest
(``to_dict``), and replayed by the service with this same code
(``from_dict``): preprocessing written once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from bundle.tabular.dates import DATE_CAT_PARTS, DATE_CONT_PARTS, date_part_arrays, date_prefix, warn_unparseable_dates
from bundle.tabular.procs import INDICATOR_VOCAB, Categorify, FillMissing, Normalize, state_entry
from bundle.tabular.table import Table, n_rows, table_columns
from bundle.tabular.values import to_numbers

PROCS = ("categorify", "fill_missing", "normalize")
STATE_FORMAT = 1


@dataclass(frozen=True)
class ProcessedTable:
    """Model inputs for N rows: category codes and normalised continuous values."""

    x_cat: np.ndarray  # int64 [N, n_cat]
    x_cont: np.ndarray  # float32 [N, n_cont]

    def __len__(self) -> int:
        return self.x_cat.shape[0]


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
        flags = self.fill_missing.indicator_names if self.fill_missing is not None else []
        return self._base_cat_names() + (flags if "categorify" in self.procs else [])

    @property
    def cont_names(self) -> list[str]:
        return self.raw_cont_names + [
            date_prefix(field) + part for field in self.date_fields for part in DATE_CONT_PARTS
        ]

    def fit(self, df: pd.DataFrame) -> TabularProcessor:
        """Learn from training rows (an unparseable date is a missing value here, as in fastai, with a warning)."""
        for field in self.date_fields:
            if field in df.columns:
                warn_unparseable_dates(df[field], field, self.date_formats.get(field, "ISO8601"))
        work: Table = self._expand(df)
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
        columns: Table = self._expand(df, strict)
        if self.fill_missing is not None:
            columns = self.fill_missing.transform(columns)
        if self.normalize is not None:
            columns = self.normalize.transform(columns)
        n = n_rows(df)
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
        fmt = state_entry(d, "format", "TabularProcessor")
        if fmt != STATE_FORMAT:
            raise ValueError(f"TabularProcessor state format {fmt!r}, this code reads {STATE_FORMAT}")
        proc = cls(
            state_entry(d, "raw_cat_names", "TabularProcessor"),
            state_entry(d, "raw_cont_names", "TabularProcessor"),
            state_entry(d, "date_fields", "TabularProcessor"),
            state_entry(d, "procs", "TabularProcessor"),
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
        return self.raw_cat_names + [date_prefix(field) + part for field in self.date_fields for part in DATE_CAT_PARTS]

    def _expand(self, df: Table, strict: bool = False) -> dict[str, np.ndarray]:
        """Only the columns the processors read: categoricals raw, continuous as float64, date parts."""
        columns = table_columns(df, self.raw_cat_names + self.raw_cont_names)
        for name in self.raw_cont_names:
            columns[name] = to_numbers(columns[name], name)
        for field in self.date_fields:
            prefix = date_prefix(field)
            # a frame's own column keeps its dtype (datetime64, time zone); arrays are parsed as they are
            present = field in (df.columns if isinstance(df, pd.DataFrame) else df)
            dates = df[field] if present else np.full(n_rows(df), None, dtype=object)
            fmt = self.date_formats.get(field, "ISO8601")
            numbers, flags, missing = date_part_arrays(dates, format=fmt, strict=strict, column=field)
            for part in DATE_CAT_PARTS:
                if part in flags:  # text levels "False"/"True", None where the date is missing
                    columns[prefix + part] = np.where(missing, None, np.where(flags[part], "True", "False"))  # type: ignore[call-overload]
                else:
                    columns[prefix + part] = numbers[part]
            columns.update({prefix + part: numbers[part] for part in DATE_CONT_PARTS})
        return columns
