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
import io
import json
import math
import re
from typing import Any, Protocol

import numpy as np
import pandas as pd

from bundle.images import ImageError, ImageTooLarge, ResizeSpec, preprocess
from bundle.manifest import Manifest
from bundle.tabular import TabularInputError, TabularProcessor, rows_to_frame
from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.multipart import parse_multipart

JSON = "application/json"
MULTIPART = "multipart/form-data"
CSV = "text/csv"
RAW_IMAGE_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/bmp",
    "image/x-ms-bmp",
    "image/gif",
    "application/octet-stream",
)


class InputDecoder(Protocol):
    media_types: tuple[str, ...]

    def decode(
        self, media_type: str, content_type: str, body: bytes, seen: dict[str, Any] | None = None
    ) -> list[np.ndarray]:
        """One array per ONNX input, all with the same number of rows (items).

        ``seen``, when given, receives what monitoring needs of the raw input: ``images`` (the encoded
        bytes of each image) or ``frame`` (the raw rows).
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


def decoder_for(manifest: Manifest, max_items: int, max_pixels: int, inline_max_pixels: int = 0) -> InputDecoder:
    if manifest.input_kind == "image":
        return ImageInputs(manifest, max_items, max_pixels, inline_max_pixels)
    return TabularInputs(manifest, max_items)


# -- JSON ------------------------------------------------------------------------------------


def _reject_constant(token: str) -> float:
    raise InvalidInput(f"invalid JSON: {token} is not allowed; send null for a missing value")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidInput(f"invalid JSON: the number {text} is out of range")
    return value


def parse_json(body: bytes) -> Any:
    """Strict JSON: NaN, Infinity and overflowing numbers are refused, not turned into floats."""
    try:
        return json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"invalid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidInput("invalid JSON: nested too deeply") from exc


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
    """Multipart ``file`` parts, a raw image body, or JSON base64 instances -> uint8 [N, 3, H, W]."""

    media_types = (MULTIPART, JSON, *RAW_IMAGE_TYPES)

    def __init__(self, manifest: Manifest, max_items: int, max_pixels: int, inline_max_pixels: int = 0) -> None:
        if manifest.image is None:
            raise ValueError(f"{manifest.name} v{manifest.version}: image model without an image section")
        image = manifest.image
        self.image = image
        self.spec = ResizeSpec(image.height, image.width, image.resize_method, image.pad_mode)
        self.max_items = max_items
        self.max_pixels = max_pixels
        self.inline_max_pixels = inline_max_pixels

    def decode_in_place(self, media_type: str, content_type: str, body: bytes) -> list[np.ndarray] | None:
        """A raw thumbnail: decoded at once; anything over ``inline_max_pixels`` is left for the pool.

        The pixel limit is checked from the header before any pixel is
        decoded, so a large image costs only that header read here.
        """
        if not self.inline_max_pixels or media_type not in RAW_IMAGE_TYPES or not body:
            return None
        try:
            pixels = preprocess(body, self.spec, min(self.inline_max_pixels, self.max_pixels))
        except ImageTooLarge:
            return None  # not a thumbnail: the pool decodes it under the real limit
        except ImageError as exc:
            raise InvalidInput(f"body: {exc}") from exc
        return [pixels[None]]

    def decode(
        self, media_type: str, content_type: str, body: bytes, seen: dict[str, Any] | None = None
    ) -> list[np.ndarray]:
        if media_type == MULTIPART:
            images = self._multipart(content_type, body)
        elif media_type == JSON:
            images = self._instances(body)
        else:
            images = [("body", body)]
        if seen is not None:
            seen["images"] = [data for _, data in images]
        return [self.decode_images(images)]

    def decode_images(self, images: list[tuple[str, bytes]]) -> np.ndarray:
        """Encoded images, each named by where it came from (for errors) -> uint8 [N, 3, H, W]."""
        pixels = np.empty((len(images), 3, self.spec.height, self.spec.width), dtype=np.uint8)
        for i, (where, data) in enumerate(images):
            pixels[i] = self._pixels(where, data)
        return pixels

    def _pixels(self, where: str, data: bytes) -> np.ndarray:
        if not data:
            raise InvalidInput(f"{where}: empty image")
        try:
            return preprocess(data, self.spec, self.max_pixels)
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
                continue
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
        }


# -- tables ----------------------------------------------------------------------------------

_CELL = re.compile(r"^column '.*?', row \d+: ")
_ROW = re.compile(r"^row \d+: ")
_NOT_A_NUMBER = re.compile(r"^(.*) is not a number$")


class TabularInputs:
    """JSON ``{"rows": [...]}`` or CSV with a header -> the processed ``x_cat``/``x_cont`` the graph takes."""

    media_types = (JSON, CSV)

    def __init__(self, manifest: Manifest, max_items: int) -> None:
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

    def decode_in_place(self, media_type: str, content_type: str, body: bytes) -> list[np.ndarray] | None:
        return None  # even one row costs pandas more than a thread hand-off

    def decode(
        self, media_type: str, content_type: str, body: bytes, seen: dict[str, Any] | None = None
    ) -> list[np.ndarray]:
        if media_type == CSV:
            frame = self._csv(body)
            where = "csv row {row}, column {column!r}"
            row_base = 1
        else:
            rows = _json_list(body, "rows", self.max_items, "row")
            try:
                frame = rows_to_frame(rows, self.raw_columns)
            except TabularInputError as exc:
                raise InvalidInput(_locate(exc, "rows[{row}].{column}", 0)) from exc
            where = "rows[{row}].{column}"
            row_base = 0
        arrays = self.process(frame, where, row_base)
        if seen is not None:
            seen["frame"] = frame
        return arrays

    def process(self, frame: pd.DataFrame, where: str, row_base: int = 0) -> list[np.ndarray]:
        """Raw columns -> the ONNX inputs; ``where`` (with ``{row}`` and ``{column}``) locates a bad cell."""
        try:
            table = self.processor.transform(frame)
        except TabularInputError as exc:
            raise InvalidInput(_locate(exc, where, row_base)) from exc
        arrays = {"x_cat": table.x_cat, "x_cont": table.x_cont}
        return [arrays[name] for name in self.input_names]

    def _csv(self, body: bytes) -> pd.DataFrame:
        try:
            # Read every cell as text: the processors parse numbers themselves, exactly as for JSON strings.
            frame = pd.read_csv(io.BytesIO(body), dtype=str, skipinitialspace=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
            raise InvalidInput(f"invalid CSV: {exc}") from exc
        if not any(name in frame.columns for name in self.raw_columns):
            raise InvalidInput(
                f"CSV header has none of the model's columns; expected some of: {', '.join(self.raw_columns)}"
            )
        if len(frame) == 0:
            raise InvalidInput("CSV has a header but no rows")
        if len(frame) > self.max_items:
            raise PayloadTooLarge(f"CSV has {len(frame)} rows, the limit is {self.max_items}")
        return frame

    def schema(self) -> dict[str, Any]:
        processor = self.processor
        vocab = processor.categorify.vocab if processor.categorify is not None else {}
        columns: list[dict[str, Any]] = []
        for name in processor.raw_cat_names:
            columns.append({"name": name, "kind": "categorical", "vocab": vocab.get(name, [])})
        for name in processor.raw_cont_names:
            columns.append({"name": name, "kind": "continuous"})
        for name in processor.date_fields:
            columns.append({"name": name, "kind": "date"})
        return {"kind": "tabular", "columns": columns, "media_types": list(self.media_types)}


def _locate(exc: TabularInputError, cell: str, row_base: int) -> str:
    """``rows[3].bill_length_mm: expected a number, got 'abc'`` from the processor's error."""
    message = str(exc)
    if exc.row is None:
        return message
    if exc.column is None:  # the whole row is wrong (rows_to_frame: not an object)
        return f"rows[{exc.row}]: {_ROW.sub('', message)}"
    detail = _CELL.sub("", message)
    not_number = _NOT_A_NUMBER.match(detail)
    if not_number:
        detail = f"expected a number, got {not_number.group(1)}"
    return f"{cell.format(row=exc.row + row_base, column=exc.column)}: {detail}"
