"""What the user sees while training: a tqdm bar per epoch and fastai's per-epoch table."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], total: int, desc: str, enabled: bool = True) -> Iterable[T]:
    """A transient tqdm bar, shown only when asked for and stderr is a terminal (so logs stay clean)."""
    show = enabled and sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=not show, dynamic_ncols=True)


def format_time(seconds: float) -> str:
    """``mm:ss``, as fastai's table shows it."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes:02d}:{secs:02d}"


class EpochTable:
    """Fixed-width rows: ``epoch  train_loss  valid_loss  <metrics...>  time``."""

    def __init__(self, columns: Sequence[str], stream: TextIO | None = None) -> None:
        self.columns = list(columns)
        self.widths = [max(len(name), 10) for name in self.columns]
        self.stream = stream

    def header(self) -> str:
        return "  ".join(name.ljust(width) for name, width in zip(self.columns, self.widths))

    def format_row(self, values: Sequence[object]) -> str:
        cells = []
        for value, width in zip(values, self.widths):
            if isinstance(value, float):
                text = f"{value:.6f}"
            else:
                text = str(value)
            cells.append(text.ljust(width))
        return "  ".join(cells).rstrip()

    def print_header(self) -> None:
        self._write(self.header().rstrip())

    def print_row(self, values: Sequence[object]) -> None:
        self._write(self.format_row(values))

    def _write(self, line: str) -> None:
        stream = self.stream if self.stream is not None else sys.stdout
        print(line, file=stream, flush=True)
