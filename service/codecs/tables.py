"""Tabular request bodies -> the processed ``x_cat``/``x_cont`` the graph takes: JSON ``{"rows": [...]}`` or CSV.

Budgets (rows, columns, cells, the range of continuous values) are checked
before the table is built, errors name the row and field that failed
(``rows[3].bill_length_mm: expected a number, got 'abc'``), and the fitted
processors the manifest records are replayed through ``bundle.tabular``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from bundle.manifest import Manifest
from bundle.tabular import (
    JSON_NUMBER_TYPES,
    TabularInputError,
    TabularProcessor,
    rows_to_columns,
    unknown_columns_message,
)
from service.codecs.decoded import Decoded, RawInputs, check_deadline
from service.codecs.media import CSV, JSON
from service.codecs.strict_json import json_list
from service.http.errors import InvalidInput, PayloadTooLarge

DEFAULT_MAX_COLUMNS = 512
DEFAULT_MAX_CELLS = 32_768
_FAST_BUDGET_FROM = 16  # rows from which the column-wise budget check beats the row loop
MAX_CONTINUOUS = 1e15  # |value| of a continuous column in JSON; far beyond any feature, far from float32 overflow
_CELL = re.compile(r"^column '.*?', row \d+: ")
_ROW = re.compile(r"^row \d+: ")
_NOT_A_NUMBER = re.compile(r"^(.*) is not a number$")


class TabularInputs:
    """JSON ``{"rows": [...]}`` or CSV with a header -> the processed ``x_cat``/``x_cont`` the graph takes."""

    media_types: tuple[str, ...] = (JSON, CSV)
    LIMITS = ("max_columns", "max_cells", "ignore_unknown")

    def __init__(
        self,
        manifest: Manifest,
        max_items: int,
        *,
        max_columns: int = DEFAULT_MAX_COLUMNS,
        max_cells: int = DEFAULT_MAX_CELLS,
        ignore_unknown: bool = False,
    ) -> None:
        if manifest.tabular is None:
            raise ValueError(f"{manifest.name} v{manifest.version}: tabular model without a tabular section")
        self.tabular = manifest.tabular
        self.processor = TabularProcessor.from_dict(manifest.tabular.processor)
        self.raw_columns = list(manifest.tabular.raw_columns)
        self.input_names = [spec.name for spec in manifest.onnx.inputs]
        unknown = [name for name in self.input_names if name not in ("x_cat", "x_cont")]
        if unknown:
            raise ValueError(f"tabular ONNX inputs must be x_cat and/or x_cont, the manifest lists {unknown}")
        self.max_items = max_items
        self.unknown = "ignore" if ignore_unknown else "error"
        self.max_columns = max_columns
        self.max_cells = max_cells

    def decode_in_place(self, media_type: str, content_type: str, body: bytes) -> Decoded | None:
        return None  # even one row costs more than a thread hand-off

    def decode(self, media_type: str, content_type: str, body: bytes, deadline: float | None = None) -> Decoded:
        rows = None
        if media_type == CSV:
            columns = self._csv(body)
            where = "csv row {row}, column {column!r}"
            row_base = 1
        else:
            rows = json_list(body, "rows", self.max_items, "row")
            self._check_json_budget(rows)
            try:
                columns = rows_to_columns(rows, self.raw_columns, unknown=self.unknown)
            except TabularInputError as exc:
                raise InvalidInput(_locate(exc, "rows[{row}].{column}", 0)) from exc
            where = "rows[{row}].{column}"
            row_base = 0
        check_deadline(deadline)
        arrays = self.process(columns, where, row_base)
        return Decoded(arrays, RawInputs(columns=columns, rows=rows))

    def process(
        self, columns: Mapping[str, np.ndarray] | pd.DataFrame, where: str, row_base: int = 0
    ) -> list[np.ndarray]:
        """Raw columns -> the ONNX inputs; ``where`` (with ``{row}`` and ``{column}``) locates a bad cell."""
        try:
            table = self.processor.transform(columns, strict=True)
        except TabularInputError as exc:
            raise InvalidInput(_locate(exc, where, row_base)) from exc
        arrays = {"x_cat": table.x_cat, "x_cont": table.x_cont}
        return [arrays[name] for name in self.input_names]

    def _check_json_budget(self, rows: list[Any]) -> None:
        """Columns and cells within budget; continuous values are JSON numbers (or null) within ``MAX_CONTINUOUS``.

        A fast check, column by column with C-level iteration, passes what nearly every request is; anything
        it cannot pass goes through the row-by-row loop, which names the first offending row and field."""
        if len(rows) > _FAST_BUDGET_FROM and self._within_json_budget(rows):
            return
        cells = 0
        continuous = self.processor.raw_cont_names
        for i, row in enumerate(rows):
            if isinstance(row, dict):
                if len(row) > self.max_columns:
                    raise PayloadTooLarge(
                        f"rows[{i}]: {len(row)} columns, the limit is {self.max_columns} (max_columns)"
                    )
                cells += len(row)
                for name in continuous:
                    value = row.get(name)
                    if value is None:
                        continue
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise InvalidInput(f"rows[{i}].{name}: expected a number, got {json.dumps(value)[:40]}")
                    if abs(value) > MAX_CONTINUOUS:
                        raise InvalidInput(f"rows[{i}].{name}: {value:g} is out of range (at most {MAX_CONTINUOUS:g})")
        if cells > self.max_cells:
            raise PayloadTooLarge(f"rows: {cells} cells in one request, the limit is {self.max_cells} (max_cells)")

    def _within_json_budget(self, rows: list[Any]) -> bool:
        """True when every row is a dict within the budgets whose continuous values are in-range numbers or null."""
        if not all(type(row) is dict for row in rows):
            return False
        lengths = list(map(len, rows))
        if max(lengths, default=0) > self.max_columns or sum(lengths) > self.max_cells:
            return False
        for name in self.processor.raw_cont_names:
            values = [row.get(name) for row in rows]
            if not set(map(type, values)) <= JSON_NUMBER_TYPES:
                return False  # text, booleans, lists...: the loop says which
            numbers = [value for value in values if value is not None]
            if numbers and not -MAX_CONTINUOUS <= min(numbers) <= max(numbers) <= MAX_CONTINUOUS:
                return False  # out of range, or a NaN that hides the extremes
        return True

    def _check_csv_budget(self, body: bytes) -> None:
        """Count rows, columns and cells with the csv module (C, stops at the first excess) before pandas runs."""
        try:
            reader = csv.reader(io.StringIO(body.decode("utf-8")), skipinitialspace=True)
            cells = 0
            for number, record in enumerate(reader):
                if len(record) > self.max_columns:
                    what = "the CSV header" if number == 0 else f"csv row {number}"
                    raise PayloadTooLarge(
                        f"{what} has {len(record)} columns, the limit is {self.max_columns} (max_columns)"
                    )
                if number > self.max_items + 1 and record:
                    raise PayloadTooLarge(f"CSV has more than {self.max_items} rows, the limit is {self.max_items}")
                cells += len(record) if number else 0
                if cells > self.max_cells:
                    raise PayloadTooLarge(f"CSV has more than {self.max_cells} cells (max_cells)")
        except (UnicodeDecodeError, csv.Error) as exc:
            raise InvalidInput(f"invalid CSV: {exc}") from exc

    def _csv(self, body: bytes) -> dict[str, np.ndarray]:
        """The CSV's columns as object arrays (text, NaN for a blank cell), converted from pandas once."""
        self._check_csv_budget(body)
        try:
            # Read every cell as text: the processors parse numbers themselves, exactly as for JSON strings.
            frame = pd.read_csv(io.BytesIO(body), dtype=str, skipinitialspace=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"invalid CSV: {exc}") from exc
        if not any(name in frame.columns for name in self.raw_columns):
            raise InvalidInput(
                f"CSV header has none of the model's columns; expected some of: {', '.join(self.raw_columns)}"
            )
        unknown = [str(name) for name in frame.columns if name not in self.raw_columns]
        if unknown and self.unknown == "error":
            raise InvalidInput(unknown_columns_message(unknown, self.raw_columns, "CSV header has"))
        if len(frame) == 0:
            raise InvalidInput("CSV has a header but no rows")
        if len(frame) > self.max_items:
            raise PayloadTooLarge(f"CSV has {len(frame)} rows, the limit is {self.max_items}")
        return {str(name): frame[name].to_numpy(dtype=object) for name in frame.columns}

    def schema(self) -> dict[str, Any]:
        processor = self.processor
        vocab = processor.categorify.vocab if processor.categorify is not None else {}
        columns: list[dict[str, Any]] = []
        for name in processor.raw_cat_names:
            columns.append({"name": name, "kind": "categorical", "vocab": vocab.get(name, [])})
        for name in processor.raw_cont_names:
            columns.append({"name": name, "kind": "continuous", "minimum": -MAX_CONTINUOUS, "maximum": MAX_CONTINUOUS})
        for name in processor.date_fields:
            columns.append({"name": name, "kind": "date"})
        return {"kind": "tabular", "columns": columns, "media_types": list(self.media_types)}


def _locate(exc: TabularInputError, cell: str, row_base: int) -> str:
    """``rows[3].bill_length_mm: expected a number, got 'abc'`` from the processor's error."""
    message = str(exc)
    if exc.row is None:
        return message
    if exc.column is None:  # the whole row is wrong (rows_to_columns: not an object)
        return f"rows[{exc.row}]: {_ROW.sub('', message)}"
    detail = _CELL.sub("", message)
    not_number = _NOT_A_NUMBER.match(detail)
    if not_number:
        detail = f"expected a number, got {not_number.group(1)}"
    return f"{cell.format(row=exc.row + row_base, column=exc.column)}: {detail}"
