"""Labels of image items: parsed from folders, lists or delimited strings; their class list, targets and splits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from training.data.core import DataError

Label = str | list[str]  # one class, or the classes of a multi-label item


def random_split(n: int, valid_pct: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random split; at least one item in each part."""
    if not 0.0 < valid_pct < 1.0:
        raise DataError(f"valid_pct must be between 0 and 1 (exclusive), got {valid_pct}")
    if n < 2:
        raise DataError(f"need at least 2 images to make a training and a validation split, found {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_valid = min(n - 1, max(1, round(n * valid_pct)))
    return sorted(order[n_valid:].tolist()), sorted(order[:n_valid].tolist())


def column_name(df: pd.DataFrame, col: int | str) -> str:
    if isinstance(col, int):
        if not -len(df.columns) <= col < len(df.columns):
            raise DataError(f"column index {col} is out of range: the table has {len(df.columns)} columns")
        return df.columns[col]
    if col not in df.columns:
        raise DataError(f"no column {col!r}; the table has {', '.join(map(str, df.columns))}")
    return col


def bool_column(df: pd.DataFrame, name: str) -> list[bool]:
    values = df[name]
    if values.dtype == bool or set(values.dropna().unique()) <= {0, 1}:
        if values.isna().any():
            raise DataError(f"validation column {name!r} has missing values")
        return [bool(v) for v in values]
    raise DataError(f"validation column {name!r} must be boolean (True/False or 1/0), got {values.dtype}")


def parse_labels(values: list[Any], label_delim: str | None, where: str) -> list[Label]:
    """Labels as strings; lists of names (given as lists, or split on ``label_delim``) for multi-label data."""
    listed = [isinstance(v, (list, tuple, set, frozenset)) for v in values]
    if any(listed):
        if not all(listed):
            raise DataError(f"{where!r} mixes label lists with single labels: give every item a list")
        return [unique_names(str(name) for name in v) for v in values]
    if label_delim is not None:
        return [[] if is_missing(v) else unique_names(str(v).split(label_delim)) for v in values]
    missing = [i for i, v in enumerate(values) if is_missing(v) or str(v).strip() == ""]
    if missing:
        raise DataError(f"{len(missing)} rows of {where!r} have no label (first rows: {missing[:5]})")
    return [str(v).strip() for v in values]


def unique_names(names: Any) -> list[str]:
    """Stripped, non-empty names, each once, in the order given."""
    return list(dict.fromkeys(name.strip() for name in names if name.strip()))


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def infer_vocab(labels: list[Label], multilabel: bool) -> list[str]:
    names = {name for label in labels for name in label} if multilabel else set(labels)
    if multilabel and not names:
        raise DataError("no labels found: every item has an empty label list")
    if not multilabel and len(names) < 2:
        found = f"only one class {next(iter(names))!r}" if names else "no classes"
        raise DataError(f"found {found}: single-label classification needs at least two classes")
    # numbers sort as numbers ("2" before "10"), so the digits' class index equals the digit
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def fixed_vocab(vocab: Sequence[str], labels: list[Label], multilabel: bool) -> list[str]:
    """A given class list: every label must be in it."""
    vocab = [str(name) for name in vocab]
    if len(set(vocab)) != len(vocab):
        raise DataError("the given vocab repeats a class")
    if not multilabel and len(vocab) < 2:
        raise DataError(f"single-label classification needs at least two classes, the vocab has {len(vocab)}")
    names = {name for label in labels for name in label} if multilabel else set(labels)
    unknown = sorted(names - set(vocab))
    if unknown:
        raise DataError(f"labels not in the given vocab: {', '.join(unknown[:10])}")
    return vocab


def label_targets(labels: Sequence[Label], index: dict[str, int], multilabel: bool) -> np.ndarray:
    if not multilabel:
        return np.array([index[label] for label in labels], dtype=np.int64)
    hot = np.zeros((len(labels), len(index)), dtype=np.float32)
    for row, names in enumerate(labels):
        hot[row, [index[name] for name in names]] = 1.0
    return hot
