"""The one error type of tabular preprocessing, and how a bad value is shown in its message."""

from __future__ import annotations

from typing import Any


class TabularInputError(ValueError):
    """A value the preprocessing cannot use; ``column`` and ``row`` (position) locate it."""

    def __init__(self, message: str, column: str | None = None, row: int | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.row = row


def show_value(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
