"""How every plot verb hands back its figure: saved when given a path, drawn inline in Jupyter, always returned.

Figures are plain ``matplotlib.figure.Figure`` objects, never pyplot's global
state, so training stays headless and thread-safe. In a notebook a verb's
returned figure renders as a PNG (:func:`finish` registers IPython's PNG
formatter for ``Figure``, so it works without ``%matplotlib inline`` and is
drawn once even when the inline backend is on too). Verbs that return
something else (``lr_find`` returns the suggested rates) draw their figure
with :func:`show`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

DPI = 100


def finish(fig: Figure, path: str | Path | None = None) -> Figure:
    """Save ``fig`` as a PNG at ``path`` (folders made) when one is given; make it render inline; return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _register_png_formatter()
    return fig


def show(fig: Figure) -> None:
    """Draw ``fig`` now when running in a Jupyter kernel; do nothing in a script or a terminal."""
    shell = _ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        from IPython.display import display

        _register_png_formatter()
        display(fig)


def png_bytes(fig: Figure) -> bytes:
    """``fig`` encoded as PNG, as a notebook shows it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def image_grid(
    images: Sequence[np.ndarray], titles: Sequence[str], colours: Sequence[str] | None = None, ncols: int | None = None
) -> Figure:
    """Images ([H, W, 3] uint8) in a square-ish grid, each titled; ``colours`` colour the titles."""
    n = len(images)
    cols = ncols or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(2.5 * cols, 2.5 * rows))
    for slot, (image, title) in enumerate(zip(images, titles)):
        ax = fig.add_subplot(rows, cols, slot + 1)
        ax.imshow(image)
        ax.axis("off")
        ax.set_title(title, fontsize=9, color=colours[slot] if colours else "black")
    fig.tight_layout()
    return fig


def image_array(pixels: torch.Tensor) -> np.ndarray:
    """[C, H, W] pixels (uint8, or float in 0..255) -> an [H, W, 3] uint8 array for imshow."""
    pixels = pixels.float().clamp(0, 255).to(torch.uint8)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    return pixels.permute(1, 2, 0).numpy()


def _ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # IPython is not a dependency of training: without it there is no notebook
        return None
    return get_ipython()


def _register_png_formatter() -> None:
    shell = _ipython()
    if shell is None:
        return
    shell.display_formatter.formatters["image/png"].for_type(Figure, png_bytes)
