"""Ground truth folded in: feedback against logged predictions, and live accuracy or error over a window.

:func:`judge` compares an answer with the prediction the log recorded
(classification: the label; multi-label: the set of labels; regression: the
absolute error). :class:`FeedbackWindow` keeps the last ``capacity``
judgements of one version and region, one per item: a second answer for the
same item replaces the first (the latest wins) and counts once.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.http.errors import InvalidInput


@dataclass(frozen=True)
class Judgement:
    """One answer compared with its prediction: ``correct`` (classification) or ``error`` (regression)."""

    label: str | None
    value: float | None
    correct: bool | None
    error: float | None


def judge(prediction: dict[str, Any], classes: Sequence[str] | None, label: Any, value: Any) -> Judgement:
    """Check an answer against what the model knows and compare it with the logged prediction."""
    if "label" in prediction:  # classification
        if label is None:
            raise InvalidInput("label: missing; this is a classification model, send the true class as 'label'")
        text = _label_text(label)
        known = list(classes) if classes else list(prediction.get("probabilities") or {})
        if text not in known:
            raise InvalidInput(f"label: {text!r} is not a class of this model; classes are {known}")
        return Judgement(text, None, text == prediction["label"], None)
    if "labels" in prediction:  # multi-label
        answer = label if isinstance(label, list) else None
        if answer is None or not all(isinstance(x, (str, int)) for x in answer):
            raise InvalidInput("label: this is a multi-label model, send the true classes as a list of strings")
        texts = sorted({_label_text(x) for x in answer})
        known = list(classes) if classes else list(prediction.get("probabilities") or {})
        unknown = [t for t in texts if t not in known]
        if unknown:
            raise InvalidInput(f"label: {unknown} are not classes of this model; classes are {known}")
        return Judgement(" ".join(texts), None, set(texts) == set(prediction["labels"]), None)
    predicted = prediction.get("value")
    if predicted is None and isinstance(prediction.get("values"), dict):
        predicted = next(iter(prediction["values"].values()), None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput("value: this is a regression model, send the true value as a finite number 'value'")
    error = abs(float(value) - float(predicted)) if predicted is not None else None
    return Judgement(None, float(value), None, error)


def _label_text(label: Any) -> str:
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise InvalidInput(f"label: expected a class name (a string), got {type(label).__name__}")
    return str(label)


class FeedbackWindow:
    """The last ``capacity`` judgements of one version and region, keyed by (request id, item)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, int], Judgement] = OrderedDict()

    def add(self, key: tuple[str, int], judgement: Judgement) -> None:
        self._items.pop(key, None)  # a second answer for the same prediction replaces the first
        self._items[key] = judgement
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._items

    def accuracy(self) -> float | None:
        judged = [j.correct for j in self._items.values() if j.correct is not None]
        return sum(judged) / len(judged) if judged else None

    def mean_error(self) -> float | None:
        errors = [j.error for j in self._items.values() if j.error is not None]
        return sum(errors) / len(errors) if errors else None
