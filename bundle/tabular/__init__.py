"""Tabular preprocessing shared by training and serving, written once.

fastai's tabular pipeline (date expansion, ``Categorify``, ``FillMissing``,
``Normalize``) in the shape of scikit-learn estimators: what is learned from
the training rows is computed in ``fit`` and only applied in ``transform``,
and the learned state is plain JSON data (``to_dict``/``from_dict``) so the
manifest carries it to the service, which replays it with this same code.

One concept per module:

* ``errors``: :class:`TabularInputError`, the error every bad value raises.
* ``rows``: JSON rows -> one array per column (:func:`rows_to_columns`), unknown-column errors.
* ``values``: a column as numbers (:func:`to_numbers`) or as canonical category levels
  (:func:`category_levels`).
* ``dates``: fastai's date parts (:func:`add_datepart`, :func:`date_part_arrays`).
* ``table``: what the processors take: a DataFrame or a dict of column arrays.
* ``procs``: ``Categorify`` (numeric vocabularies sorted by value, text ones alphabetically;
  index 0 is always ``#na#``, missing or unseen), ``FillMissing``, ``Normalize``.
* ``processor``: :class:`TabularProcessor`, their composition, and :func:`cont_cat_split`.

Transforms are vectorised over columns (numpy), never looping over rows, and
work on a dict of arrays internally: pandas' per-call overhead would dominate
the one-row requests the service transforms. Where a hot path has a fast
version, the general one stays beside it as its reference (``rows``,
``values``, ``dates``), and tests/test_bundle_fast_paths.py checks that they agree.
"""

from bundle.tabular.dates import (
    DATE_CAT_PARTS,
    DATE_CONT_PARTS,
    DATE_PARTS,
    TIME_PARTS,
    add_datepart,
    date_part_arrays,
    date_parts,
    date_prefix,
)
from bundle.tabular.errors import TabularInputError
from bundle.tabular.processor import PROCS, STATE_FORMAT, ProcessedTable, TabularProcessor, cont_cat_split
from bundle.tabular.procs import INDICATOR_VOCAB, NA_LEVEL, NA_SUFFIX, Categorify, FillMissing, Normalize
from bundle.tabular.rows import UnknownColumnsError, rows_to_columns, rows_to_frame, unknown_columns_message
from bundle.tabular.table import Table
from bundle.tabular.values import JSON_NUMBER_TYPES, category_levels, column_values, to_numbers
from bundle.tabular.values import _plain_numbers as _plain_numbers  # service/monitoring/drift.py imports it from here

__all__ = [
    "DATE_CAT_PARTS",
    "DATE_CONT_PARTS",
    "DATE_PARTS",
    "INDICATOR_VOCAB",
    "JSON_NUMBER_TYPES",
    "NA_LEVEL",
    "NA_SUFFIX",
    "PROCS",
    "STATE_FORMAT",
    "TIME_PARTS",
    "Categorify",
    "FillMissing",
    "Normalize",
    "ProcessedTable",
    "Table",
    "TabularInputError",
    "TabularProcessor",
    "UnknownColumnsError",
    "add_datepart",
    "category_levels",
    "column_values",
    "cont_cat_split",
    "date_part_arrays",
    "date_parts",
    "date_prefix",
    "rows_to_columns",
    "rows_to_frame",
    "to_numbers",
    "unknown_columns_message",
]
