"""The native request codecs: which decoder a version gets, with the budgets of the settings."""

from __future__ import annotations

from typing import Any

from bundle.manifest import Manifest
from service.codecs.decoded import InputDecoder
from service.codecs.images import ImageInputs
from service.codecs.tables import TabularInputs


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
