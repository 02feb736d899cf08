"""fastai's tabular procs as scikit-learn estimators: ``Categorify``, ``FillMissing``, ``Normalize``.

What is learned from the training rows is computed in ``fit`` and only
applied in ``transform``, and the learned state is plain JSON data
(``to_dict``/``from_dict``). Each takes a DataFrame or a dict of column arrays
(:mod:`bundle.tabular.table`) and returns the same kind, with a fresh
positional index. Transforms are vectorised over columns (numpy), never
looping over rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from bundle.tabular.table import Table, n_rows, table_columns, with_columns
from bundle.tabular.values import category_levels, to_numbers

NA_LEVEL = "#na#"
NA_SUFFIX = "_na"
INDICATOR_VOCAB = (NA_LEVEL, "False", "True")


def state_entry(d: Mapping[str, Any], key: str, owner: str) -> Any:
    """``d[key]`` of a saved state, or a ValueError naming what is missing."""
    try:
        return d[key]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{owner} state has no {key!r} entry") from exc


class Categorify:
    """Category columns -> int64 codes; vocabulary per column with ``#na#`` (missing/unseen) at 0."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.vocab: dict[str, list[str]] = {}
        self.numeric: list[str] = []  # columns that were numeric in training
        self._lookups: dict[str, dict[str, int]] = {}  # level -> code, per column

    def fit(self, table: Table) -> Categorify:
        self.vocab, self.numeric, self._lookups = {}, [], {}
        for name, values in table_columns(table, self.columns).items():
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
        codes = np.zeros((n_rows(table), len(self.columns)), dtype=np.int64)
        for j, (name, values) in enumerate(table_columns(table, self.columns).items()):
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
        return {
            "columns": list(self.columns),
            "vocab": {k: list(v) for k, v in self.vocab.items()},
            "numeric": list(self.numeric),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Categorify:
        proc = cls(state_entry(d, "columns", "Categorify"))
        proc.vocab = {str(k): [str(level) for level in v] for k, v in state_entry(d, "vocab", "Categorify").items()}
        proc.numeric = list(state_entry(d, "numeric", "Categorify"))
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
        for name, values in table_columns(table, self.columns).items():
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
        for name, values in table_columns(table, self.columns).items():
            numbers = to_numbers(values, name)
            missing = np.isnan(numbers)
            new[name] = np.where(missing, self.fill_values[name], numbers)
            if name in self.na_columns:
                new[name + NA_SUFFIX] = missing
        return with_columns(table, new)

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "fill_values": dict(self.fill_values),
            "na_columns": list(self.na_columns),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FillMissing:
        proc = cls(state_entry(d, "columns", "FillMissing"))
        proc.fill_values = {str(k): float(v) for k, v in state_entry(d, "fill_values", "FillMissing").items()}
        proc.na_columns = list(state_entry(d, "na_columns", "FillMissing"))
        return proc


class Normalize:
    """Standardise continuous columns with the training mean and population std (ddof=0; std 0 -> 1)."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.means: dict[str, float] = {}
        self.stds: dict[str, float] = {}

    def fit(self, table: Table) -> Normalize:
        self.means, self.stds = {}, {}
        for name, values in table_columns(table, self.columns).items():
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
            for name, values in table_columns(table, self.columns).items()
        }
        return with_columns(table, new)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "means": dict(self.means), "stds": dict(self.stds)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalize:
        proc = cls(state_entry(d, "columns", "Normalize"))
        proc.means = {str(k): float(v) for k, v in state_entry(d, "means", "Normalize").items()}
        proc.stds = {str(k): float(v) for k, v in state_entry(d, "stds", "Normalize").items()}
        return proc
