"""Finding image files under a folder and checking, cheaply and once, that each can be read."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from bundle.images import ImageError, ImageTooLarge
from training.data.core import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
UNREADABLE = (ImageError, ImageTooLarge, OSError)

Item = Path | np.ndarray  # an image file, or the pixels of an in-memory image


class SkippedImagesWarning(UserWarning):
    """Some files were not readable images and were left out."""


def get_image_files(path: str | Path) -> list[Path]:
    """Every file under ``path`` with an image extension, sorted (hidden files ignored)."""
    return [f for f in walk_files(Path(path)) if f.suffix.lower() in IMAGE_EXTENSIONS]


def walk_files(root: Path) -> list[Path]:
    return sorted(f for f in root.rglob("*") if f.is_file() and not is_hidden(f, root))


def is_hidden(file: Path, root: Path) -> bool:
    """A dot-file or anything inside a dot-folder (.DS_Store, .ipynb_checkpoints, .git)."""
    return any(part.startswith(".") for part in file.relative_to(root).parts)


def readable_images(files: Sequence[Path], max_pixels: int) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Split files into readable images and (file, reason) for the rest, reading headers only."""
    good: list[Path] = []
    bad: list[tuple[Path, str]] = []
    for file in files:
        reason = unreadable_reason(file, max_pixels)
        if reason is None:
            good.append(file)
        else:
            bad.append((file, reason))
    return good, bad


def unreadable_reason(file: Path, max_pixels: int) -> str | None:
    if file.suffix.lower() not in IMAGE_EXTENSIONS:
        return "not an image file"
    if not file.is_file():
        return "file not found"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit below
            with Image.open(file) as img:
                width, height = img.size
                if width * height > max_pixels:
                    return f"{width}x{height} is over the {max_pixels}-pixel limit"
                img.verify()
    except Exception as exc:  # Pillow raises many types for corrupt files
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


def warn_skipped(bad: list[tuple[Path, str]], total: int) -> None:
    if not bad:
        return
    examples = "; ".join(f"{file}: {reason}" for file, reason in bad[:3])
    warnings.warn(
        f"skipped {len(bad)} of {total} files that are not readable images, e.g. {examples}",
        SkippedImagesWarning,
        stacklevel=3,
    )


def existing_dir(path: str | Path) -> Path:
    root = Path(path)
    if not root.exists():
        raise DataError(f"path {root} does not exist")
    if not root.is_dir():
        raise DataError(f"path {root} is not a folder")
    return root


def parent_name(file: Path) -> str:
    return file.parent.name


def describe_item(item: Item) -> str:
    return str(item) if isinstance(item, Path) else f"array {item.shape}"
