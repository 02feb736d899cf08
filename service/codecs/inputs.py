"""Request bodies -> model input arrays, for image and tabular models.

Each decoder is plain synchronous code that the app runs in the
preprocessing thread pool (only a raw thumbnail is decoded in place, being
cheaper than the hand-off): parse the body, validate it at the boundary
(errors name the field or part that failed), and replay the preprocessing the
manifest records through the shared ``bundle`` code.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
import re
import time
from typing import Any, Mapping, Protocol

import numpy as np
import pandas as pd

from PIL import Image

from bundle.images import (
    SERVED_FORMATS,
    ImageError,
    ImageFormatRefused,
    ImageTooLarge,
    ResizeSpec,
    load_image,
    open_image,
    plain_png_pixels,
    preprocess,
    resize,
    to_chw,
)
from bundle.manifest import Manifest
from bundle.tabular import (
    JSON_NUMBER_TYPES,
    TabularInputError,
    TabularProcessor,
    rows_to_columns,
    unknown_columns_message,
)
from service.http.errors import DeadlineExceeded, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.codecs.multipart import parse_multipart

JSON = "application/json"
MULTIPART = "multipart/form-data"
CSV = "text/csv"
# Request budgets a decoder enforces beyond the item count, with their defaults (settings override them).
DEFAULT_INLINE_MAX_BYTES = 32_768
DEFAULT_MAX_REQUEST_PIXELS = 50_000_000
DEFAULT_MAX_COLUMNS = 512
DEFAULT_MAX_CELLS = 32_768
_FAST_BUDGET_FROM = 16  # rows from which the column-wise budget check beats the row loop
MAX_CONTINUOUS = 1e15  # |value| of a continuous column in JSON; far beyond any feature, far from float32 overflow
MAX_INT_DIGITS = 310  # a longer integer is beyond any float, and past 4,300 digits Python refuses to convert it

RAW_IMAGE_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/bmp",
    "image/x-ms-bmp",
    "image/gif",
    "application/octet-stream",
)
# The raw-body media types each image format may be sent as (application/octet-stream goes with any).
FORMAT_MEDIA_TYPES = {
    "JPEG": ("image/jpeg",),
    "PNG": ("image/png",),
    "WEBP": ("image/webp",),
    "BMP": ("image/bmp", "image/x-ms-bmp"),
    "GIF": ("image/gif",),
    "TIFF": ("image/tiff",),
}


class InputDecoder(Protocol):
    media_types: tuple[str, ...]

    def decode(
        self, media_type: str, content_type: str, body: bytes, deadline: float | None = None,
        seen: dict[str, Any] | None = None,
    ) -> list[np.ndarray]:
        """One array per ONNX input, all with the same number of rows (items).

        ``deadline`` (``time.perf_counter()`` seconds): past it, remaining work is skipped (504).
        ``seen``, when given, receives what monitoring needs of the raw input: ``images`` (the encoded
        bytes of each image) and ``sizes`` (each one's (width, height) from its header), or ``columns``
        (the raw values, one object array per column) and, for a JSON body, ``rows`` (the rows as sent).
        """
        ...

    def decode_in_place(self, media_type: str, content_type: str, body: bytes) -> list[np.ndarray] | None:
        """Decode now when that costs less than a thread hand-off, else None (the caller uses the pool)."""
        ...

    def schema(self) -> dict[str, Any]: ...


def media_type_of(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def check_media_type(decoder: InputDecoder, media_type: str) -> None:
    if media_type not in decoder.media_types:
        shown = media_type or "no Content-Type"
        accepted = ", ".join(decoder.media_types)
        raise UnsupportedMediaType(f"{shown} is not accepted by this model; send one of: {accepted}")


def decoder_for(
    manifest: Manifest, max_items: int, max_pixels: int, inline_max_pixels: int = 0, **limits: Any
) -> InputDecoder:
    """The decoder for a manifest's input kind; ``limits`` are the keyword budgets of that decoder."""
    if manifest.input_kind == "image":
        image_limits = {k: v for k, v in limits.items() if k in ImageInputs.LIMITS}
        return ImageInputs(manifest, max_items, max_pixels, inline_max_pixels, **image_limits)
    return TabularInputs(manifest, max_items, **{k: v for k, v in limits.items() if k in TabularInputs.LIMITS})


def input_limits(settings: Any) -> dict[str, Any]:
    """The decoder budgets of ``ServiceSettings``, as ``decoder_for`` keywords."""
    return {
        "inline_max_bytes": settings.inline_decode_max_bytes,
        "max_request_pixels": settings.max_request_pixels,
        "formats": tuple(settings.image_formats),
        "max_columns": settings.max_columns,
        "max_cells": settings.max_cells_per_request,
        "ignore_unknown": settings.ignore_unknown_columns,
    }


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.perf_counter() >= deadline:
        raise DeadlineExceeded("the request deadline passed before its preprocessing finished")


# -- JSON ------------------------------------------------------------------------------------


def _reject_constant(token: str) -> float:
    raise InvalidInput(f"invalid JSON: {token} is not allowed; send null for a missing value")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidInput(f"invalid JSON: the number {text} is out of range")
    return value


def _bounded_int(text: str) -> int | float:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidInput(f"invalid JSON: an integer of {len(text.lstrip('-'))} digits is out of range")
    return int(text)


def parse_json(body: bytes) -> Any:
    """Strict JSON: NaN, Infinity and overflowing numbers are refused, not turned into floats."""
    try:
        return json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"invalid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidInput("invalid JSON: nested too deeply") from exc
    except ValueError as exc:  # anything else the parser refuses; never a 500
        raise InvalidInput(f"invalid JSON: {exc}") from exc


def _json_list(body: bytes, key: str, max_items: int, what: str) -> list[Any]:
    document = parse_json(body)
    if not isinstance(document, dict) or key not in document:
        raise InvalidInput(f"{key}: missing; send {{\"{key}\": [...]}}")
    items = document[key]
    if not isinstance(items, list):
        raise InvalidInput(f"{key}: expected a list, got {type(items).__name__}")
    if not items:
        raise InvalidInput(f"{key}: empty; send at least one {what}")
    if len(items) > max_items:
        raise PayloadTooLarge(f"{key}: {len(items)} {what}s in one request, the limit is {max_items}")
    return items


# -- images ----------------------------------------------------------------------------------


class ImageInputs:
    """Multipart ``file`` parts, a raw image body, or JSON base64 instances -> uint8 [N, 3, H, W].

    Budgets: ``max_items`` images, ``max_pixels`` per image and
    ``max_request_pixels`` in all, all read from the image headers before any
    pixel is decoded; only ``formats`` (checked against the bytes) are decoded.
    """

    media_types = (MULTIPART, JSON, *RAW_IMAGE_TYPES)
    LIMITS = ("inline_max_bytes", "max_request_pixels", "formats")

    def __init__(
        self,
        manifest: Manifest,
        max_items: int,
        max_pixels: int,
        inline_max_pixels: int = 0,
        *,
        inline_max_bytes: int = DEFAULT_INLINE_MAX_BYTES,
        max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
        formats: tuple[str, ...] = SERVED_FORMATS,
    ) -> None:
        if manifest.image is None:
            raise ValueError(f"{manifest.name} v{manifest.version}: image model without an image section")
        image = manifest.image
        self.image = image
        self.spec = ResizeSpec(image.height, image.width, image.resize_method, image.pad_mode)
        self.max_items = max_items
        self.max_pixels = max_pixels
        self.inline_max_pixels = inline_max_pixels
        self.inline_max_bytes = inline_max_bytes
        self.max_request_pixels = max_request_pixels
        self.formats = tuple(formats)
        raw = [t for fmt in self.formats for t in FORMAT_MEDIA_TYPES.get(fmt, ())]
        self.media_types = (MULTIPART, JSON, *raw, "application/octet-stream")

    def decode_in_place(self, media_type: str, content_type: str, body: bytes) -> list[np.ndarray] | None:
        """A raw thumbnail: decoded at once; anything else is left for the pool.

        Only a small body qualifies (``inline_max_bytes``), so the event loop
        never parses more than that many bytes of headers or chunks; the pixel
        limit is checked from the header before any pixel is decoded.
        """
        if not self.inline_max_pixels or media_type in (MULTIPART, JSON) or not body:
            return None
        if len(body) > self.inline_max_bytes:
            return None
        try:
            pixels = preprocess(body, self.spec, min(self.inline_max_pixels, self.max_pixels), self.formats)
        except ImageTooLarge:
            return None  # not a thumbnail: the pool decodes it under the real limit
        except ImageFormatRefused as exc:
            raise UnsupportedMediaType(f"body: {exc}") from exc
        except ImageError as exc:
            raise InvalidInput(f"body: {exc}") from exc
        return [pixels[None]]

    def decode(
        self, media_type: str, content_type: str, body: bytes, deadline: float | None = None,
        seen: dict[str, Any] | None = None,
    ) -> list[np.ndarray]:
        if media_type == MULTIPART:
            images = self._multipart(content_type, body)
        elif media_type == JSON:
            images = self._instances(body)
        else:
            images = [("body", body)]
        sizes: list[tuple[int, int]] | None = None
        if seen is not None:
            seen["images"] = [data for _, data in images]
            seen["sizes"] = sizes = []
        return [self.decode_images(images, deadline, sizes)]

    def decode_images(
        self, images: list[tuple[str, bytes]], deadline: float | None = None,
        sizes: list[tuple[int, int]] | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Encoded images, each named by where it came from (for errors) -> uint8 [N, 3, H, W].

        Every header, and the request's pixel budget, is checked before any image is decoded. ``sizes``
        receives each image's (width, height) as its header states it (``bundle.monitoring.encoded_size``'s
        figure, read here at no cost where monitoring would open the header a second time).
        """
        opened = self._open_all(images)
        if sizes is not None:
            sizes.extend((img.shape[1], img.shape[0]) if isinstance(img, np.ndarray) else img.size for img in opened)
        pixels = np.empty((len(images), 3, self.spec.height, self.spec.width), dtype=np.uint8)
        for i, ((where, data), img) in enumerate(zip(images, opened)):
            check_deadline(deadline)
            pixels[i] = self._pixels(where, data, img)
        return pixels

    def _open_all(self, images: list[tuple[str, bytes]]) -> list[Image.Image | np.ndarray]:
        opened: list[Image.Image | np.ndarray] = []
        total = 0
        for where, data in images:
            if not data:
                raise InvalidInput(f"{where}: empty image")
            try:
                img: Image.Image | np.ndarray | None = None
                if "PNG" in self.formats:
                    img = plain_png_pixels(data, self.max_pixels)
                if img is None:
                    img = open_image(data, self.max_pixels, self.formats)
            except ImageTooLarge as exc:
                raise PayloadTooLarge(f"{where}: {exc}") from exc
            except ImageFormatRefused as exc:
                raise UnsupportedMediaType(f"{where}: {exc}") from exc
            except ImageError as exc:
                raise InvalidInput(f"{where}: {exc}") from exc
            if isinstance(img, np.ndarray):
                total += img.shape[0] * img.shape[1]
            else:
                total += img.size[0] * img.size[1]
            if total > self.max_request_pixels:
                raise PayloadTooLarge(
                    f"{where}: the images of this request have more than {self.max_request_pixels} pixels in all "
                    "(max_request_pixels)"
                )
            opened.append(img)
        return opened

    def _pixels(self, where: str, data: bytes, img: Image.Image | np.ndarray) -> np.ndarray:
        try:
            if isinstance(img, np.ndarray):  # a plain PNG libspng already decoded
                height, width = img.shape[:2]
                mode = "L" if img.ndim == 2 else "RGB"
                return to_chw(resize(Image.frombuffer(mode, (width, height), img, "raw", mode, 0, 1), self.spec))
            return to_chw(resize(load_image(img, self.spec), self.spec))
        except ImageTooLarge as exc:
            raise PayloadTooLarge(f"{where}: {exc}") from exc
        except ImageError as exc:
            raise InvalidInput(f"{where}: {exc}") from exc

    def _multipart(self, content_type: str, body: bytes) -> list[tuple[str, bytes]]:
        # Count every part against the limit so a body of thousands of tiny parts is refused early.
        parts = parse_multipart(content_type, body, max_parts=self.max_items)
        images = []
        for part in parts:
            if part.name != "file":
                shown = part.name[:40]
                raise InvalidInput(f"multipart part {shown!r}: unexpected; send each image as a part named 'file'")
            label = f"file[{len(images)}]" + (f" ({part.filename})" if part.filename else "")
            images.append((label, bytes(part.data)))
        if not images:
            raise InvalidInput("multipart body has no 'file' part; send each image as a part named 'file'")
        return images

    def _instances(self, body: bytes) -> list[tuple[str, bytes]]:
        instances = _json_list(body, "instances", self.max_items, "image")
        images = []
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict) or not isinstance(instance.get("b64"), str):
                raise InvalidInput(f"instances[{i}]: expected an object {{\"b64\": \"<base64 image>\"}}")
            try:
                data = base64.b64decode(instance["b64"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidInput(f"instances[{i}].b64: invalid base64 ({exc})") from exc
            images.append((f"instances[{i}].b64", data))
        return images

    def schema(self) -> dict[str, Any]:
        return {
            "kind": "image",
            "height": self.image.height,
            "width": self.image.width,
            "resize_method": self.image.resize_method,
            "pad_mode": self.image.pad_mode,
            "channel_order": self.image.channel_order,
            "media_types": list(self.media_types),
            "image_formats": list(self.formats),
        }


# -- tables ----------------------------------------------------------------------------------

_CELL = re.compile(r"^column '.*?', row \d+: ")
_ROW = re.compile(r"^row \d+: ")
_NOT_A_NUMBER = re.compile(r"^(.*) is not a number$")


class TabularInputs:
    """JSON ``{"rows": [...]}`` or CSV with a header -> the processed ``x_cat``/``x_cont`` the graph takes."""

    media_types = (JSON, CSV)
    LIMITS = ("max_columns", "max_cells", "ignore_unknown")

    def __init__(
        self, manifest: Manifest, max_items: int, *, max_columns: int = DEFAULT_MAX_COLUMNS,
        max_cells: int = DEFAULT_MAX_CELLS, ignore_unknown: bool = False,
    ) -> None:  # fmt: skip
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

    def decode_in_place(self, media_type: str, content_type: str, body: bytes) -> list[np.ndarray] | None:
        return None  # even one row costs more than a thread hand-off

    def decode(
        self, media_type: str, content_type: str, body: bytes, deadline: float | None = None,
        seen: dict[str, Any] | None = None,
    ) -> list[np.ndarray]:
        rows = None
        if media_type == CSV:
            columns = self._csv(body)
            where = "csv row {row}, column {column!r}"
            row_base = 1
        else:
            rows = _json_list(body, "rows", self.max_items, "row")
            self._check_json_budget(rows)
            try:
                columns = rows_to_columns(rows, self.raw_columns, unknown=self.unknown)
            except TabularInputError as exc:
                raise InvalidInput(_locate(exc, "rows[{row}].{column}", 0)) from exc
            where = "rows[{row}].{column}"
            row_base = 0
        check_deadline(deadline)
        arrays = self.process(columns, where, row_base)
        if seen is not None:
            seen["columns"] = columns
            if rows is not None:
                seen["rows"] = rows
        return arrays

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
