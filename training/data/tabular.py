"""Tabular data: a DataFrame or CSV -> batches ``(x_cat int64, x_cont float32, y)``.

The preprocessing is :class:`bundle.tabular.TabularProcessor`, fitted on the
training rows only; the same fitted object encodes new rows here and, through
its ``to_dict()`` in the manifest, in the service.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pandas.api import types as ptypes
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from bundle.tabular import (
    PROCS,
    Categorify,
    TabularInputError,
    TabularProcessor,
    category_levels,
    cont_cat_split,
    rows_to_frame,
)
from training.data.core import DataError, DataLoaders, read_csv

Y_BLOCKS = {
    "category": "classification",
    "classification": "classification",
    "regression": "regression",
    "multilabel": "multilabel",
}


class TabularDataLoaders(DataLoaders):
    """Train/valid loaders over a table plus the fitted :class:`TabularProcessor`.

    ``train_df_raw``/``valid_df_raw`` are the raw rows of each split (for
    reference statistics); :meth:`new_empty` drops them with the loaders.
    """

    input_kind = "tabular"

    def __init__(
        self,
        train: DataLoader | None,
        valid: DataLoader | None,
        task: str,
        processor: TabularProcessor,
        vocab: list[str] | None = None,
        n_out: int | None = None,
        target_names: Sequence[str] = (),
        log_target: bool = False,
        bs: int = 64,
        train_df_raw: pd.DataFrame | None = None,
        valid_df_raw: pd.DataFrame | None = None,
    ) -> None:
        super().__init__(train, valid, task, vocab=vocab, n_out=n_out, target_names=target_names)
        self.processor = processor
        self.log_target = log_target
        self.bs = bs  # the loaders index whole batches, so DataLoader.batch_size is None
        self.train_df_raw = train_df_raw
        self.valid_df_raw = valid_df_raw

    @property
    def cat_names(self) -> list[str]:
        return self.processor.cat_names

    @property
    def cont_names(self) -> list[str]:
        return self.processor.cont_names

    @classmethod
    def from_csv(cls, path: str | Path, y_names: str | Sequence[str], **kwargs: Any) -> TabularDataLoaders:
        """Read a CSV and call :meth:`from_df` with the same arguments."""
        return cls.from_df(read_csv(path), y_names, **kwargs)

    @classmethod
    def from_df(
        cls,
        df: pd.DataFrame,
        y_names: str | Sequence[str],
        cat_names: Sequence[str] | None = None,
        cont_names: Sequence[str] | None = None,
        date_fields: Sequence[str] = (),
        date_formats: Mapping[str, str] | None = None,
        y_block: str | None = None,
        log_target: bool = False,
        valid_pct: float = 0.2,
        valid_col: str | None = None,
        split_by: str | None = None,
        seed: int = 42,
        bs: int = 64,
        max_card: int = 20,
        procs: Sequence[str] = PROCS,
        label_delim: str = " ",
        processor: TabularProcessor | None = None,
        vocab: Sequence[str] | None = None,
    ) -> TabularDataLoaders:
        """fastai's ``TabularDataLoaders.from_df``.

        ``y_block``: ``"category"``, ``"regression"``, ``"multilabel"`` or None
        (float targets -> regression, anything else -> classification).
        Multilabel targets are several 0/1 columns (the classes are their
        names) or one column of ``label_delim``-separated labels. When
        ``cat_names``/``cont_names`` are None they come from ``cont_cat_split``
        over the columns that are not targets, ``valid_col``, ``split_by`` or
        date fields. ``split_by`` sorts by that column (dates parsed) and
        validates on the last ``valid_pct``; ``valid_col`` marks validation
        rows; otherwise a seeded random split. A fitted ``processor`` (and
        class ``vocab``) is reused as is, e.g. to fine-tune on new data.
        """
        if not isinstance(df, pd.DataFrame) or len(df) == 0 or len(df.columns) == 0:
            raise DataError("the data frame is empty: no rows to train on")
        target_names = [y_names] if isinstance(y_names, str) else list(y_names)
        if not target_names:
            raise DataError("no target column given (y_names is empty)")
        _require_columns(df, target_names, "target")
        _require_columns(df, [c for c in (valid_col, split_by) if c is not None], "split")
        if not 0.0 <= valid_pct < 1.0:
            raise DataError(f"valid_pct must be in [0, 1), got {valid_pct}")
        if bs < 1:
            raise DataError(f"bs must be at least 1, got {bs}")
        features = [*(cat_names or ()), *(cont_names or ()), *date_fields]
        if processor is not None:
            features = processor.raw_columns
        leaked = [name for name in target_names if name in features]
        if leaked:
            raise DataError(f"target column(s) {leaked} are also listed as features")
        task = _task(df, target_names, y_block)
        df = _drop_missing_targets(df, target_names)

        if processor is None:
            excluded = [*target_names, *date_fields, *(c for c in (valid_col, split_by) if c is not None)]
            cats, conts = _feature_names(df, cat_names, cont_names, excluded, max_card)
            _require_columns(df, [*cats, *conts, *date_fields], "feature")
            processor = TabularProcessor(cats, conts, date_fields=date_fields, procs=procs, date_formats=date_formats)
            refit = True
        else:
            _require_columns(df, processor.raw_columns, "feature")
            refit = False

        y, classes = _targets(df, target_names, task, log_target, label_delim, vocab)
        train_idx, valid_idx = _split(df, valid_pct, valid_col, split_by, seed)
        if len(train_idx) < 2:
            raise DataError(f"only {len(train_idx)} training row(s) after the split: need at least 2")
        train_df = df.iloc[train_idx]
        valid_df = df.iloc[valid_idx]
        if refit:
            _process(processor.fit, train_df)
        train_table = _process(processor.transform, train_df)
        valid_table = _process(processor.transform, valid_df)

        train = _loader(train_table.x_cat, train_table.x_cont, y[train_idx], bs, shuffle=True, seed=seed)
        valid = _loader(valid_table.x_cat, valid_table.x_cont, y[valid_idx], bs * 2, shuffle=False, seed=seed)
        dls = cls(
            train,
            valid,
            task,
            processor,
            vocab=classes,
            n_out=len(classes) if classes is not None else len(target_names),
            target_names=target_names,
            log_target=log_target if task == "regression" else False,
            bs=bs,
            train_df_raw=train_df,
            valid_df_raw=valid_df,
        )
        if task == "regression":
            dls.target_stats = target_stats(y[train_idx])
        return dls

    def new_empty(self) -> TabularDataLoaders:
        empty = super().new_empty()
        empty.train_df_raw = None
        empty.valid_df_raw = None
        return empty

    def encode_items(self, items: Any) -> tuple[torch.Tensor, ...]:
        """Rows -> ``(x_cat, x_cont)``, through the same processor the service replays.

        ``items``: a DataFrame, one row (a Series or a dict), or a list of rows
        (dicts or Series, as ``Learner.predict`` passes ``[df.iloc[0]]``) or of
        DataFrames.
        """
        if isinstance(items, pd.DataFrame):
            frame = items
        elif isinstance(items, (pd.Series, Mapping)):
            frame = self._rows_frame([items])
        else:
            rows = list(items)
            if rows and all(isinstance(row, pd.DataFrame) for row in rows):
                frame = pd.concat(rows, ignore_index=True)
            else:
                frame = self._rows_frame(rows)
        try:
            table = self.processor.transform(frame, strict=True)
        except TabularInputError as exc:
            raise DataError(f"cannot encode the rows: {exc}") from exc
        return torch.from_numpy(table.x_cat), torch.from_numpy(table.x_cont)

    def _rows_frame(self, rows: list[Any]) -> pd.DataFrame:
        rows = [row.to_dict() if isinstance(row, pd.Series) else row for row in rows]
        # a training row (a Series of the whole table) carries the target and other columns: skip them
        return rows_to_frame(rows, self.processor.raw_columns, unknown="ignore")

    def emb_szs(self) -> list[tuple[int, int]]:
        """(cardinality, embedding size) per categorical column, fastai's rule min(600, round(1.6 n^0.56))."""
        categorify = self.processor.categorify
        if categorify is None:
            return []
        return [(n, min(600, round(1.6 * n**0.56))) for n in (len(categorify.vocab[c]) for c in self.cat_names)]


# ---------------------------------------------------------------------------
# The steps of from_df


def _require_columns(df: pd.DataFrame, names: Sequence[str], role: str) -> None:
    absent = [name for name in names if name not in df.columns]
    if absent:
        available = ", ".join(map(str, df.columns))
        raise DataError(f"{role} column(s) {', '.join(map(repr, absent))} not in the data; columns are: {available}")


def _task(df: pd.DataFrame, target_names: list[str], y_block: str | None) -> str:
    if y_block is not None:
        if y_block not in Y_BLOCKS:
            raise DataError(f"unknown y_block {y_block!r}: use one of {', '.join(Y_BLOCKS)} or None")
        return Y_BLOCKS[y_block]
    if all(ptypes.is_float_dtype(df[name].dtype) for name in target_names):
        return "regression"
    if len(target_names) > 1:
        return "multilabel"
    return "classification"


def _drop_missing_targets(df: pd.DataFrame, target_names: list[str]) -> pd.DataFrame:
    missing = df[target_names].isna().any(axis=1).to_numpy()
    if missing.all():
        raise DataError(f"every row has a missing target ({', '.join(target_names)}): nothing to train on")
    if missing.any():
        warnings.warn(f"dropped {int(missing.sum())} of {len(df)} rows with a missing target", stacklevel=3)
        return df[~missing]
    return df


def _feature_names(
    df: pd.DataFrame,
    cat_names: Sequence[str] | None,
    cont_names: Sequence[str] | None,
    excluded: Sequence[str],
    max_card: int,
) -> tuple[list[str], list[str]]:
    """The given names, with any left as None filled by ``cont_cat_split`` over the unused columns."""
    if cat_names is not None and cont_names is not None:
        return list(cat_names), list(cont_names)
    taken = {*excluded, *(cat_names or ()), *(cont_names or ())}
    rest = [name for name in df.columns if name not in taken]
    auto_cont, auto_cat = cont_cat_split(df[rest], max_card=max_card)
    cats = list(cat_names) if cat_names is not None else auto_cat
    conts = list(cont_names) if cont_names is not None else auto_cont
    return cats, conts


def _targets(
    df: pd.DataFrame,
    target_names: list[str],
    task: str,
    log_target: bool,
    label_delim: str,
    vocab: Sequence[str] | None,
) -> tuple[torch.Tensor, list[str] | None]:
    if task == "regression":
        return _regression_targets(df, target_names, log_target), None
    if task == "multilabel":
        return _multilabel_targets(df, target_names, label_delim, vocab)
    if len(target_names) != 1:
        raise DataError(f"classification takes one target column, got {target_names}")
    return class_targets(df[target_names[0]], target_names[0], vocab)


def _regression_targets(df: pd.DataFrame, target_names: list[str], log_target: bool) -> torch.Tensor:
    columns = []
    for name in target_names:
        raw = df[name]
        numbers = pd.to_numeric(raw.astype(object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(numbers))
        if bad.size:
            problem = (
                f"regression target {name!r} must be numeric: {raw.iloc[bad[0]]!r} at row "
                f"{raw.index[bad[0]]!r} ({bad.size} bad value(s))"
            )
            raise DataError(
                f"{problem}; use y_block='category' for class labels",
                f"{problem}; use --task classification for class labels",
            )
        if log_target:
            nonpositive = int((numbers <= 0).sum())
            if nonpositive:
                problem = f"needs positive targets: {name!r} has {nonpositive} value(s) <= 0"
                raise DataError(f"log_target {problem}", f"--log-target {problem}")
            numbers = np.log(numbers)
        columns.append(numbers)
    return torch.from_numpy(np.stack(columns, axis=1).astype(np.float32))


def target_stats(y: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-column mean and population std of regression targets (std 0 -> 1), as plain floats."""
    values = y.double()
    std = values.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return [float(v) for v in values.mean(dim=0)], [float(v) for v in std]


def class_targets(values: pd.Series, name: str, vocab: Sequence[str] | None) -> tuple[torch.Tensor, list[str]]:
    numeric = ptypes.is_numeric_dtype(values.dtype) and not ptypes.is_bool_dtype(values.dtype)
    if vocab is None:
        # Categorify's vocabulary rule (numbers by value, text alphabetically), without its #na# slot.
        classes = Categorify([name]).fit(values.to_frame()).vocab[name][1:]
        if len(classes) < 2:
            raise DataError(f"classification needs at least 2 classes; target {name!r} has only {classes}")
    else:
        classes = [str(c) for c in vocab]
    codes = pd.Index(classes, dtype=object).get_indexer(category_levels(values, numeric=numeric))
    if (codes < 0).any():
        unknown = sorted(set(category_levels(values[codes < 0])))
        raise DataError(f"target {name!r} has labels outside the vocabulary: {unknown[:10]}")
    return torch.from_numpy(codes.astype(np.int64)), classes


def _multilabel_targets(
    df: pd.DataFrame, target_names: list[str], label_delim: str, vocab: Sequence[str] | None
) -> tuple[torch.Tensor, list[str]]:
    if len(target_names) == 1:
        name = target_names[0]
        hot = df[name].astype(str).str.get_dummies(sep=label_delim)
        hot = hot.drop(columns=[c for c in hot.columns if c == ""])
        classes = [str(c) for c in vocab] if vocab is not None else sorted(map(str, hot.columns))
        unknown = sorted(set(map(str, hot.columns)) - set(classes))
        if unknown:
            raise DataError(f"target {name!r} has labels outside the vocabulary: {unknown[:10]}")
        matrix = hot.reindex(columns=classes, fill_value=0).to_numpy(dtype=np.float32)
    else:
        classes = list(target_names)
        if vocab is not None and [str(c) for c in vocab] != classes:
            raise DataError(f"multilabel vocabulary {list(vocab)} does not match the target columns {classes}")
        matrix = np.zeros((len(df), len(classes)), dtype=np.float32)
        for j, name in enumerate(classes):
            flags = pd.to_numeric(df[name].astype(object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            if not np.isin(flags, (0.0, 1.0)).all():
                raise DataError(f"multilabel target column {name!r} must hold only 0/1 or False/True")
            matrix[:, j] = flags
    if len(classes) < 1:
        raise DataError(f"multilabel targets {target_names} contain no labels")
    return torch.from_numpy(np.require(matrix, requirements=["C", "W"])), classes


def _split(
    df: pd.DataFrame, valid_pct: float, valid_col: str | None, split_by: str | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positional (train, valid) indices, each in the frame's order."""
    n = len(df)
    if valid_col is not None:
        flags = df[valid_col]
        if ptypes.is_bool_dtype(flags.dtype):
            is_valid = flags.fillna(False).to_numpy(dtype=bool)
        else:
            levels = category_levels(flags)
            is_valid = np.isin(levels.astype(str), ("True", "true", "1"))
        return np.flatnonzero(~is_valid), np.flatnonzero(is_valid)
    n_valid = 0 if valid_pct == 0 else max(1, int(valid_pct * n))
    if split_by is not None:
        order = _sort_key(df[split_by]).sort_values(kind="stable", na_position="first").index.to_numpy()
        return np.sort(order[: n - n_valid]), np.sort(order[n - n_valid :])
    permutation = np.random.default_rng(seed).permutation(n)
    return np.sort(permutation[n_valid:]), np.sort(permutation[:n_valid])


def _sort_key(values: pd.Series) -> pd.Series:
    """The split column with a positional index; text that reads as dates is sorted as dates."""
    values = values.reset_index(drop=True)
    if ptypes.is_numeric_dtype(values.dtype) or ptypes.is_datetime64_any_dtype(values.dtype):
        return values
    dates = pd.to_datetime(values, errors="coerce", format="mixed", utc=True)
    return dates if dates.notna().sum() == values.notna().sum() else values.astype(str)


def _process(step: Any, frame: pd.DataFrame) -> Any:
    """Run a processor step; bad cells become a DataError naming the frame's own row label."""
    try:
        return step(frame)
    except TabularInputError as exc:
        where = f" (row label {frame.index[exc.row]!r})" if exc.row is not None and exc.row < len(frame) else ""
        raise DataError(f"cannot preprocess the data: {exc}{where}") from exc


def _loader(x_cat: np.ndarray, x_cont: np.ndarray, y: torch.Tensor, bs: int, shuffle: bool, seed: int) -> DataLoader:
    """Batches indexed whole (no per-row collate); drops a last batch of 1 in training (batchnorm)."""
    dataset = TensorDataset(torch.from_numpy(x_cat), torch.from_numpy(x_cont), y)
    if shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    drop_last = shuffle and len(dataset) % bs == 1
    return DataLoader(dataset, sampler=BatchSampler(sampler, bs, drop_last=drop_last), batch_size=None)
