"""Image request bodies -> uint8 [N, 3, H, W]: multipart ``file`` parts, a raw image body, or JSON base64.

Plain synchronous code that the service runs in the decoding pool (only a
raw thumbnail is decoded in place, being cheaper than the hand-off):
budgets are read from the image headers before any pixel is decoded, errors
name the part that failed, and the resize the manifest records is replayed
through the shared ``bundle.images`` code.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
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
from service.codecs.decoded import Decoded, RawInputs, check_deadline
from service.codecs.media import FORMAT_MEDIA_TYPES, JSON, MULTIPART, RAW_IMAGE_TYPES
from service.codecs.multipart import parse_multipart
from service.codecs.strict_json import json_list
from service.http.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

DEFAULT_INLINE_MAX_BYTES = 32_768
DEFAULT_MAX_REQUEST_PIXELS = 50_000_000


class ImageInputs:
    """Multipart ``file`` parts, a raw image body, or JSON base64 instances -> uint8 [N, 3, H, W].

    Budgets: ``max_items`` images, ``max_pixels`` per image and
    ``max_request_pixels`` in all, all read from the image headers before any
    pixel is decoded; only ``formats`` (checked against the bytes) are decoded.
    """

    media_types: tuple[str, ...] = (MULTIPART, JSON, *RAW_IMAGE_TYPES)
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

    def decode_in_place(self, media_type: str, content_type: str, body: bytes) -> Decoded | None:
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
        return Decoded([pixels[None]], RawInputs(images=[body]))

    def decode(self, media_type: str, content_type: str, body: bytes, deadline: float | None = None) -> Decoded:
        if media_type == MULTIPART:
            images = self._multipart(content_type, body)
        elif media_type == JSON:
            images = self._instances(body)
        else:
            images = [("body", body)]
        sizes: list[tuple[int, int]] = []
        pixels = self.decode_images(images, deadline, sizes)
        return Decoded([pixels], RawInputs(images=[data for _, data in images], sizes=sizes))

    def decode_images(
        self,
        images: list[tuple[str, bytes]],
        deadline: float | None = None,
        sizes: list[tuple[int, int]] | None = None,
    ) -> np.ndarray:
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
        images: list[tuple[str, bytes]] = []
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
        instances = json_list(body, "instances", self.max_items, "image")
        images = []
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict) or not isinstance(instance.get("b64"), str):
                raise InvalidInput(f'instances[{i}]: expected an object {{"b64": "<base64 image>"}}')
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
