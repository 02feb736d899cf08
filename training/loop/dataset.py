"""``python -m training dataset``: the labelled items of a window of the log, written as fine-tuning reads them.

Image models: ``OUT/<class>/<request_id>-<item>.<ext>``, the folder tree
``finetune --from`` reads. Tabular models: ``OUT/data.csv``, the model's
columns and its target column. Beside them, ``items.csv`` (one row per item,
in the same order: where it came from, who answered, what the model said,
why the model chose to show it) and ``summary.json``.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from bundle.manifest import Manifest
from bundle.prediction_log import LabelledItem
from training.loop.labelled import HUMAN_SOURCES, source_name
from training.progress import progress_bar

ITEMS_FILE = "items.csv"
SUMMARY_FILE = "summary.json"
TABLE_FILE = "data.csv"
ITEM_COLUMNS = (
    "file",
    "request_id",
    "item",
    "label",
    "source",
    "region",
    "version",
    "served_at",
    "answered_at",
    "predicted",
    "confidence",
    "chosen_by_model",
    "reasons",
)


class NothingToLearn(ValueError):
    """No labelled item in the window could become training data; the message says why."""


@dataclass
class Dataset:
    folder: Path
    summary: dict[str, Any]
    items: list[LabelledItem]  # those written, in items.csv's order
    files: list[str]  # each item's file under ``folder`` (images), or TABLE_FILE's row (tables)


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def write_dataset(
    items: list[LabelledItem],
    manifest: Manifest,
    out: Path,
    window: tuple[float, float],
    sources: tuple[str, ...] = HUMAN_SOURCES,
    region: str | None = None,
) -> Dataset:
    """Write ``items`` into ``out`` (replacing what a previous run left there) and return what was written.

    Items whose answer the model cannot learn from are left out and counted in the summary: an image logged
    without its bytes, a class the model does not have. Raises :class:`NothingToLearn` when none is left.
    """
    skipped: Counter[str] = Counter()
    usable = []
    classes = manifest.outputs.classes
    for item in items:
        if not item.has_input:
            skipped["no_image_bytes" if manifest.input_kind == "image" else "no_row"] += 1
        elif manifest.task == "classification" and classes is not None and str(item.answer) not in classes:
            skipped["unknown_label"] += 1
        elif manifest.task == "multilabel":
            skipped["multilabel_not_supported"] += 1
        else:
            usable.append(item)
    if not usable:
        raise NothingToLearn(_nothing_message(manifest.name, len(items), skipped, window, sources, region))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = _write_images(usable, out) if manifest.input_kind == "image" else _write_table(usable, manifest, out)
    with (out / ITEMS_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(ITEM_COLUMNS)
        for name, item in zip(files, usable):
            writer.writerow(
                [
                    name,
                    item.request_id,
                    item.item,
                    item.answer,
                    source_name(item),
                    item.region,
                    item.version,
                    iso(item.served_at),
                    iso(item.answered_at),
                    item.predicted,
                    item.confidence,
                    int(item.chosen_by_model),
                    " ".join(item.reasons),
                ]
            )
    summary = summarise(usable, manifest, window, sources, region, skipped)
    summary["folder"] = str(out)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return Dataset(out, summary, usable, files)


def summarise(
    items: list[LabelledItem],
    manifest: Manifest,
    window: tuple[float, float],
    sources: tuple[str, ...],
    region: str | None,
    skipped: Counter[str] | None = None,
) -> dict[str, Any]:
    """Counts per class, source, region and serving version; the dates; how much the model chose itself."""
    chosen = [i for i in items if i.chosen_by_model]
    reasons: Counter[str] = Counter(r for i in chosen for r in i.reasons)
    served = [i.served_at for i in items]
    answered = [i.answered_at for i in items if i.answered_at is not None]
    per_class = Counter(str(i.answer) for i in items) if manifest.task != "regression" else {}
    return {
        "model": manifest.name,
        "input_kind": manifest.input_kind,
        "task": manifest.task,
        "window": {"since": iso(window[0]), "until": iso(window[1]), "of": "when the answer arrived"},
        "region": region,
        "sources": list(sources),
        "items": len(items),
        "per_class": dict(sorted(per_class.items())),
        "per_source": dict(Counter(source_name(i) for i in items)),
        "per_region": dict(sorted(Counter(i.region for i in items).items())),
        "served_by_versions": {str(v): n for v, n in sorted(Counter(i.version for i in items).items())},
        "served": {"first": iso(min(served, default=None)), "last": iso(max(served, default=None))},
        "answered": {"first": iso(min(answered, default=None)), "last": iso(max(answered, default=None))},
        "chosen_by_model": {
            "share": round(len(chosen) / len(items), 4) if items else 0.0,
            "items": len(chosen),
            "per_reason": dict(reasons),
        },
        "model_was_right": _agreement(items),
        "skipped": dict(skipped or {}),
        "written_at": iso(time.time()),
    }


def _agreement(items: list[LabelledItem]) -> float | None:
    judged = [i for i in items if i.source != "predictions" and isinstance(i.label, str)]
    if not judged:
        return None
    return round(sum(str(i.predicted) == i.label for i in judged) / len(judged), 4)


def _write_images(items: list[LabelledItem], out: Path) -> list[str]:
    files = []
    for item in progress_bar(items, len(items), "writing the day's images"):
        assert item.image is not None
        name = f"{item.answer}/{item.request_id}-{item.item}{_extension(item.image)}"
        path = out / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(item.image)
        files.append(name)
    return files


def _write_table(items: list[LabelledItem], manifest: Manifest, out: Path) -> list[str]:
    assert manifest.tabular is not None
    target = (manifest.outputs.target_names or ["target"])[0]
    columns = [c for c in manifest.tabular.raw_columns if c != target]
    rows = [{**{c: (item.row or {}).get(c) for c in columns}, target: item.answer} for item in items]
    pd.DataFrame(rows, columns=[*columns, target]).to_csv(out / TABLE_FILE, index=False)
    return [f"{TABLE_FILE}:{i}" for i in range(len(items))]


_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


def _extension(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), ".png")


def _nothing_message(
    model: str, n: int, skipped: Counter[str], window: tuple[float, float], sources: tuple[str, ...], region: str | None
) -> str:
    scope = f"answers from {', '.join(sources)} for {model} between {iso(window[0])} and {iso(window[1])}"
    if region:
        scope += f" in region {region}"
    if not n:
        return (
            f"nothing to learn from: no {scope} in the log (ground truth arrives through POST /v1/feedback "
            "and the review queue; --since widens the window)"
        )
    why = ", ".join(f"{k}: {v}" for k, v in skipped.items())
    hint = ""
    if skipped.get("no_image_bytes"):
        hint = (
            " (the log kept no image bytes for them: SERVING_PREDICTION_LOG_IMAGES keeps them for review items "
            "and a sample, or all)"
        )
    return f"nothing to learn from: {n} {scope}, none usable ({why}){hint}"
