"""Media types: which bodies a model takes, named as the request's Content-Type names them, sent uncompressed."""

from __future__ import annotations

from typing import Protocol

from service.http.errors import UnsupportedMediaType

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
# The raw-body media types each image format may be sent as (application/octet-stream goes with any).
FORMAT_MEDIA_TYPES = {
    "JPEG": ("image/jpeg",),
    "PNG": ("image/png",),
    "WEBP": ("image/webp",),
    "BMP": ("image/bmp", "image/x-ms-bmp"),
    "GIF": ("image/gif",),
    "TIFF": ("image/tiff",),
}


class AcceptsMedia(Protocol):
    media_types: tuple[str, ...]


def media_type_of(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def check_media_type(decoder: AcceptsMedia, media_type: str) -> None:
    if media_type not in decoder.media_types:
        shown = media_type or "no Content-Type"
        accepted = ", ".join(decoder.media_types)
        raise UnsupportedMediaType(f"{shown} is not accepted by this model; send one of: {accepted}")


def check_content_encoding(content_encoding: str) -> None:
    """Bodies are read as sent: a compressed one (``gzip``, ``br``...) is refused, never decoded as if it were plain.

    Decompressing would let a small request become a large body after every size limit was checked."""
    encoding = content_encoding.strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {content_encoding[:40]!r} is not accepted; send the body uncompressed (identity)"
        )
