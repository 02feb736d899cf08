"""Durations as people write them (``90s``, ``5m``, ``2h``, ``1d``, ``7d``, ``1w``) and back.

One reading for the rollout file's holds, ``--since`` windows and the nightly job's data window.
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_DURATION_S = 3650 * 86_400.0  # ten years: beyond it is a typo, and times derived from it must stay printable
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(value: Any) -> float:
    """``"5m"``, ``"1d"``, ``"90s"``, ``"2h"``, ``"1w"``, or plain seconds (a number, or digits alone) -> seconds.

    Raises ValueError naming what was given for anything else, zero, or more than ten years.
    """
    if isinstance(value, bool):
        raise ValueError(f"a duration such as 5m, 1d or 30d is needed, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"a duration such as 30s, 5m, 2h, 1d, 7d or 1w is needed, got {value!r}")
        seconds = float(match[1]) * UNIT_SECONDS.get(match[2], 1)
    if not seconds > 0:  # NaN as well
        raise ValueError(f"a duration must be positive, got {value!r}")
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise ValueError(f"a duration must be at most {format_duration(MAX_DURATION_S)}, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The largest whole unit: 86400 -> ``1d``, 5400 -> ``90m``, 90 -> ``90s``."""
    for unit in ("d", "h", "m"):
        size = UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
