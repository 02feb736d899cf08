"""Image preprocessing shared by training (validation/inference path) and serving.

Everything deterministic that turns an encoded image into model pixels lives
here, so the service replays exactly what training validated on. Random
training augmentation lives in ``training.data.augment`` and never runs here.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
import pyspng
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000
# The formats the service decodes by default (checked against the bytes, never the Content-Type). Pillow reads many
# more, some through external programs (EPS starts Ghostscript): none of those is reachable from a request.
SERVED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
# Bounds on the header structures Pillow parses in Python, one step per segment or chunk: far above any real image,
# far below a flood of tiny segments (an 8x8 JPEG padded with a million comments).
MAX_JPEG_SEGMENTS = 1024  # segments before the first scan
MAX_PNG_CHUNKS = 65_536  # chunks in all (a large PNG has thousands of IDAT chunks)
MAX_PNG_ANCILLARY_CHUNKS = 1024  # chunks other than IDAT
_ORIENTATION = 0x0112  # the EXIF tag
_TURNED = frozenset(range(2, 9))  # orientations exif_transpose undoes; 1 (and junk) mean upright
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_GRAY, _PNG_RGB = 0, 2  # IHDR colour types that need no conversion beyond channel replication


class ImageError(ValueError):
    """The bytes are not a usable image (corrupt, truncated, unknown format)."""


class ImageTooLarge(ValueError):
    """The image has more pixels than allowed (decompression bomb guard)."""


class ImageFormatRefused(ImageError):
    """The bytes are an image format outside the allow-list (or none that is recognised)."""


@dataclass(frozen=True)
class ResizeSpec:
    height: int
    width: int
    method: str = "crop"  # crop | squish | pad
    pad_mode: str = "reflection"  # reflection | zeros


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    target: ResizeSpec | None = None,
    formats: tuple[str, ...] | None = None,
) -> Image.Image:
    """Decode bytes into an upright RGB image.

    Takes the first frame of animations, applies EXIF orientation, converts
    grayscale/RGBA/palette to RGB (16-bit grayscale scaled, not clipped). When
    ``target`` is given, JPEGs are decoded with draft mode at the smallest
    scale that still covers the target. ``formats``: the allow-list checked
    against the bytes (the service's); None lets Pillow read any format
    (training data is trusted).
    """
    return load_image(open_image(data, max_pixels, formats), target)


def open_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, formats: tuple[str, ...] | None = None
) -> Image.Image:
    """Read only the header: format (against ``formats``), structure bounds and size; no pixel is decoded."""
    fmt = sniff_format(data)
    if formats is not None:
        if fmt is None:
            raise ImageError(f"not a recognised image format; send one of: {', '.join(formats)}")
        if fmt not in formats:
            raise ImageFormatRefused(f"{fmt} images are not accepted; send one of: {', '.join(formats)}")
    check_structure(data, fmt)
    img = _open(data, fmt, fallback=formats is None)
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels, limit is {max_pixels}")
    return img


def load_image(img: Image.Image, target: ResizeSpec | None = None) -> Image.Image:
    """Decode the pixels of an image ``open_image`` returned, upright and RGB."""
    if target is not None and img.format == "JPEG":
        img.draft("RGB", _draft_size(img.size, target, _exif_swaps_axes(img)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.seek(0)
            img.load()
            # exif_transpose copies an image it does not turn; most images carry no orientation at all.
            if img.getexif().get(_ORIENTATION, 1) in _TURNED:
                img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from exc


def _open(data: bytes, fmt: str | None, fallback: bool = True) -> Image.Image:
    """``Image.open``, told the format the magic bytes name (skips trying every plugin in turn).

    With ``fallback`` an image whose magic bytes misled us (or named nothing)
    gets every format Pillow has; without it, only the one named.
    """
    try:
        try:
            return Image.open(io.BytesIO(data), formats=(fmt,) if fmt else None)
        except UnidentifiedImageError:
            if fmt is None or not fallback:
                raise
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageError("not a recognised image format") from exc
    except Image.DecompressionBombError as exc:  # Pillow's own limit, far above ours: still too large
        raise ImageTooLarge(str(exc)) from exc
    except Exception as exc:  # Pillow raises many types for corrupt headers
        raise ImageError(f"cannot read image: {exc}") from exc


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name whose signature starts ``data``, or None."""
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM") and len(data) >= 26:
        return "BMP"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    return None


def check_structure(data: bytes, fmt: str | None) -> None:
    """Refuse a JPEG or PNG whose header structures would take Pillow an unbounded number of steps to parse.

    The walk itself is bounded by the same limits; truncation and other damage
    are left for the decoder to report.
    """
    if fmt == "JPEG":
        _check_jpeg_segments(data)
    elif fmt == "PNG":
        _check_png_chunks(data)


def _check_jpeg_segments(data: bytes) -> None:
    pos, end, segments = 2, len(data), 0
    while pos < end:
        if data[pos] != 0xFF:
            return  # damaged: the decoder says so
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            return
        marker = data[pos]
        pos += 1
        if marker in (0xDA, 0xD9):  # start of scan (libjpeg, in C, takes it from here) or end of image
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            continue
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise ImageError(f"JPEG has more than {MAX_JPEG_SEGMENTS} segments before its image data")
        if pos + 2 > end:
            return
        pos += (data[pos] << 8) | data[pos + 1]


def _check_png_chunks(data: bytes) -> None:
    pos, end, chunks, ancillary = 8, len(data), 0, 0
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IEND":
            return
        chunks += 1
        if kind != b"IDAT":
            ancillary += 1
        if chunks > MAX_PNG_CHUNKS or ancillary > MAX_PNG_ANCILLARY_CHUNKS:
            raise ImageError(
                f"PNG has more than {MAX_PNG_CHUNKS} chunks or {MAX_PNG_ANCILLARY_CHUNKS} chunks besides image data"
            )
        pos += 12 + length


def _draft_size(size: tuple[int, int], target: ResizeSpec, swap: bool = False) -> tuple[int, int]:
    """The smallest stored (w, h) the resize method still needs, for JPEG draft decoding.

    ``swap``: the EXIF orientation turns the stored image by 90 degrees, so
    the target's width applies to the stored height.
    """
    w, h = size
    tw, th = (target.height, target.width) if swap else (target.width, target.height)
    if target.method == "squish":
        return tw, th
    if target.method == "crop":
        scale = max(tw / w, th / h)
    else:  # pad
        scale = min(tw / w, th / h)
    return max(1, int(np.ceil(w * scale))), max(1, int(np.ceil(h * scale)))


def _exif_swaps_axes(img: Image.Image) -> bool:
    """Whether the EXIF orientation (5-8: transposed or turned 90/270 degrees) swaps width and height."""
    try:
        return img.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)
    except Exception:  # unreadable EXIF: exif_transpose will ignore it too
        return False


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        img = _to_8bit_gray(img)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer / float) grayscale image scaled to 8 bits: 0..65535 -> 0..255, as PNG means it.

    Pillow's own conversion clips instead of scaling, which turns nearly every
    16-bit pixel white.
    """
    values = np.asarray(img).astype(np.float64)
    scaled = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, "L")


def resize(img: Image.Image, spec: ResizeSpec) -> Image.Image:
    """Resize deterministically: centre crop, squish, or pad (fastai's ResizeMethod)."""
    w, h = img.size
    tw, th = spec.width, spec.height
    if spec.method == "squish":
        return img.resize((tw, th), Image.Resampling.BILINEAR)
    if spec.method == "crop":
        scale = max(tw / w, th / h)
        nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR) if (nw, nh) != (w, h) else img
        left, top = (nw - tw) // 2, (nh - th) // 2
        return img.crop((left, top, left + tw, top + th))
    if spec.method == "pad":
        scale = min(tw / w, th / h)
        nw, nh = min(tw, max(1, round(w * scale))), min(th, max(1, round(h * scale)))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR) if (nw, nh) != (w, h) else img
        return pad_to(img, tw, th, spec.pad_mode)
    raise ValueError(f"unknown resize method {spec.method!r}: use crop, squish or pad")


def pad_to(img: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    arr = np.asarray(img)
    h, w = arr.shape[:2]
    top, left = (height - h) // 2, (width - w) // 2
    channels = ((0, 0),) * (arr.ndim - 2)  # none for a grayscale image
    pads = ((top, height - h - top), (left, width - w - left), *channels)
    if mode == "reflection" and h > 1 and w > 1:
        # np.pad's reflect needs each pad smaller than the side: grow in steps, content kept centred
        (top, bottom), (left, right) = pads[0], pads[1]
        while top or bottom or left or right:
            t, b = min(top, arr.shape[0] - 1), min(bottom, arr.shape[0] - 1)
            lft, r = min(left, arr.shape[1] - 1), min(right, arr.shape[1] - 1)
            arr = np.pad(arr, ((t, b), (lft, r), *channels), mode="reflect")
            top, bottom, left, right = top - t, bottom - b, left - lft, right - r
        return Image.fromarray(arr)
    return Image.fromarray(np.pad(arr, pads, mode="constant"))


def to_chw(img: Image.Image) -> np.ndarray:
    """RGB (or grayscale, replicated) PIL image -> uint8 array (3, H, W), the ONNX input layout."""
    # tobytes + frombuffer: the same pixels as np.asarray(img), without the array-interface detour.
    flat = np.frombuffer(img.tobytes(), dtype=np.uint8)
    if img.mode == "L":
        return np.repeat(flat.reshape(1, img.height, img.width), 3, axis=0)
    if img.mode != "RGB":
        raise ValueError(f"to_chw takes an RGB or L image, got {img.mode}")
    return np.ascontiguousarray(flat.reshape(img.height, img.width, 3).transpose(2, 0, 1))


def plain_png_pixels(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """The pixels of a plain PNG, decoded by libspng: (H, W) grayscale or (H, W, 3) RGB; else None.

    Plain means 8-bit grayscale or RGB, not animated, without EXIF: the PNGs
    whose upright RGB pixels need nothing beyond channel replication. PNG is
    lossless, so these pixels are exactly Pillow's (``decode_image``, the
    reference); what libspng saves is Pillow's per-image overhead, most of the
    cost of a thumbnail (figures in docs/performance.md). Every other PNG, and
    any this decoder refuses, gets None and goes through ``decode_image``,
    which also words the errors.
    """
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if depth != 8 or colour not in (_PNG_GRAY, _PNG_RGB) or b"eXIf" in data or b"acTL" in data:
        return None
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels, limit is {max_pixels}")
    _check_png_chunks(data)
    try:
        return pyspng.load(data)
    except Exception:  # libspng refuses it: let Pillow decide, and explain
        return None


def preprocess(
    data: bytes, spec: ResizeSpec, max_pixels: int = DEFAULT_MAX_PIXELS, formats: tuple[str, ...] | None = None
) -> np.ndarray:
    """Encoded bytes -> uint8 (3, H, W) pixels, exactly as the model was validated.

    A plain PNG is decoded by libspng (:func:`plain_png_pixels`); every other
    image takes :func:`preprocess_by_pillow`, the reference both must agree with.
    """
    if formats is not None and "PNG" not in formats:
        pixels = None
    else:
        pixels = plain_png_pixels(data, max_pixels)
    if pixels is None:
        return preprocess_by_pillow(data, spec, max_pixels, formats)
    # A grayscale image is resized as it is and replicated to RGB afterwards: the same pixels, a third of the work.
    height, width = pixels.shape[:2]
    mode = "L" if pixels.ndim == 2 else "RGB"
    img = Image.frombuffer(mode, (width, height), pixels, "raw", mode, 0, 1)
    return to_chw(resize(img, spec))


def preprocess_by_pillow(
    data: bytes, spec: ResizeSpec, max_pixels: int = DEFAULT_MAX_PIXELS, formats: tuple[str, ...] | None = None
) -> np.ndarray:
    """:func:`preprocess` through Pillow alone: the path every image can take."""
    return to_chw(resize(decode_image(data, max_pixels, target=spec, formats=formats), spec))


def image_summary(img: Image.Image) -> dict[str, float]:
    """Per-image statistics the drift and out-of-domain monitors compare.

    Brightness and contrast are the mean and standard deviation of the
    grayscale pixels in [0, 1]; size is of the decoded image.
    """
    gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    w, h = img.size
    return {
        "brightness": float(gray.mean()),
        "contrast": float(gray.std()),
        "width": float(w),
        "height": float(h),
        "aspect": float(w / h),
    }
