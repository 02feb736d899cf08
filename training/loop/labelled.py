"""The command line's names for where labels come from, and the log read as ``--log`` names it.

The reader itself is :func:`bundle.prediction_log.labelled_items`, shared with
the service. Here only what the ``dataset`` and ``nightly`` commands add: their
names for the sources (``feedback`` is the log's ``api``: answers sent to the
feedback API), and errors that name ``--log``. ``predictions`` (the model's
own answers to the items nobody answered) is off by default: training on it
teaches the model what it already says (the course's feedback loop).
"""

from __future__ import annotations

from bundle.prediction_log import LabelledItem, labelled_items, open_log
from bundle.store import StoreUnavailable

SOURCES = ("review", "feedback", "predictions")
HUMAN_SOURCES = ("review", "feedback")  # answers from people or outside systems: the default
_LOG_NAMES = {"feedback": "api"}


class LogReadError(ValueError):
    """The prediction log could not be opened or read (the message names ``--log``)."""


def source_name(item: LabelledItem) -> str:
    """Where the item's label came from, as the command line names it."""
    return next((name for name, logged in _LOG_NAMES.items() if logged == item.source), item.source)


def read_labelled(
    log: str,
    model: str,
    since_s: float,
    until: float,
    region: str | None = None,
    sources: tuple[str, ...] = HUMAN_SOURCES,
) -> list[LabelledItem]:
    """The model's labelled items whose answers arrived in the ``since_s`` seconds before ``until``, oldest first."""
    try:
        store = open_log(log)
    except FileNotFoundError as exc:
        raise LogReadError(f"--log: {exc}") from None
    try:
        logged = tuple(_LOG_NAMES.get(s, s) for s in sources)
        return labelled_items(store, model, since_s, region, sources=logged, limit=None, until=until)
    except StoreUnavailable as exc:
        raise LogReadError(f"--log: cannot read the prediction log: {exc}") from exc
    finally:
        store.close()
