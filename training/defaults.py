"""How long to train when nobody says: sized by optimiser steps, not by epochs alone.

Five epochs of a 400-row table at batch size 64 are 25 optimiser steps, far
too few to learn anything; five epochs of a million rows are 80,000. So the
CLI's default epochs are the course's (4 for images, 5 for tables) or, when
that is fewer steps, as many epochs as make :data:`MIN_STEPS` steps
(:data:`MIN_IMAGE_STEPS` for images from scratch), at most :data:`MAX_EPOCHS`. docs/training.md has the figures behind the numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

DEFAULT_LR_RULE = "clamped"  # lr_find's rule the CLI trains at; chosen by measurement (docs/training.md)
MIN_STEPS = 200  # tables of a few hundred rows needed 125-300 steps (docs/training.md)
MIN_IMAGE_STEPS = 400  # from-scratch image models: 200 steps left the hard shapes at 0.33 error, 400 at 0.05
MAX_EPOCHS = 100  # a table of a few dozen rows stops here rather than at thousands of epochs
IMAGE_EPOCHS = 4  # the course's defaults, kept whenever they already make MIN_STEPS steps
TABULAR_EPOCHS = 5


def default_epochs(n_batches: int, epochs: int, min_steps: int = MIN_STEPS, max_epochs: int = MAX_EPOCHS) -> int:
    """``epochs``, or more when ``epochs`` passes over ``n_batches`` batches make fewer than ``min_steps`` steps."""
    if n_batches < 1:
        raise ValueError(f"the training data makes no batch (n_batches={n_batches}): nothing to train on")
    needed = math.ceil(min_steps / n_batches)
    return max(epochs, min(needed, max_epochs))


REPORTS_DIR = Path("reports")  # where commands write their plots and reports unless told --out
