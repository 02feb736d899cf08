"""``python -m training drift|drift-report``: PSI of new data against the bundle's reference; the classifier report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bundle import reference as ref
from bundle.manifest import read_manifest, read_reference
from training.data.core import DataError, read_csv
from training.data.labelled import labelled_image_files
from training.defaults import REPORTS_DIR

MIN_DRIFT_ROWS = 100  # below this a PSI is mostly sampling noise: say so


def drift(args: argparse.Namespace) -> dict[str, Any]:
    """PSI of each feature of new data against the bundle's training-time reference, with a sample-aware verdict.

    Each PSI is compared with what samples of the same size drawn from the
    reference itself score by chance (their 99th percentile): a feature is
    shifted only above both 0.25 and that noise level.
    """
    manifest = read_manifest(args.bundle)
    reference = read_reference(args.bundle, manifest)
    if not reference:
        raise DataError(f"{args.bundle}: this bundle has no reference statistics")
    features = reference["features"]
    absent: list[str] = []
    if manifest.input_kind == "image":
        files, _ = labelled_image_files(args.data)
        summaries = _image_summaries(files, manifest)
        columns = {name: summaries[name.split(".", 1)[1]] for name in features if name.split(".", 1)[1] in summaries}
        n_rows = len(files)
    else:
        df = read_csv(args.data)
        absent = [name for name in features if name not in df.columns]
        if len(absent) == len(features):
            raise DataError(
                f"{args.data} shares no columns with {manifest.name} v{manifest.version}: it has "
                f"{', '.join(map(str, df.columns[:20]))}; the model's columns are {', '.join(features)}"
            )
        columns = {name: df[name].to_numpy() for name in features if name in df.columns}
        n_rows = len(df)
    scores = {name: round(ref.psi(features[name], values), 4) for name, values in columns.items()}
    noise = {name: round(ref.psi_noise(features[name], n_rows), 4) for name in scores}
    verdicts = {name: ref.drift_verdict(scores[name], noise[name]) for name in scores}
    warnings_: list[str] = []
    if n_rows < MIN_DRIFT_ROWS:
        warnings_.append(f"only {n_rows} rows: below {MIN_DRIFT_ROWS} PSI is noisy, so verdicts need a large shift")
    if absent:
        warnings_.append(f"columns absent from the data, not scored: {', '.join(absent)}")
    for line in warnings_:
        print(f"warning: {line}", file=sys.stderr)
    out = args.out or REPORTS_DIR / manifest.name / str(manifest.version)
    out.mkdir(parents=True, exist_ok=True)
    report = {"rows": n_rows, "psi": scores, "noise_p99": noise, "verdict": verdicts, "warnings": warnings_}
    (out / "drift.json").write_text(json.dumps(report, indent=2))
    _plot_drift(scores, out / "drift.png", f"{manifest.name} v{manifest.version}: PSI against training ({n_rows} rows)")
    shifted = sorted((n for n, v in verdicts.items() if v == "shifted"), key=lambda n: -scores[n])
    return {**report, "shifted": shifted, "report": str(out / "drift.png")}


def _image_summaries(files: list[Path], manifest: Any) -> dict[str, np.ndarray]:
    """The per-image summaries the service measures (``bundle.monitoring.pixel_summaries``)."""
    from bundle.images import ResizeSpec, preprocess
    from bundle.monitoring import encoded_size, pixel_summaries

    image = manifest.image
    spec = ResizeSpec(image.height, image.width, image.resize_method, image.pad_mode)
    datas = [f.read_bytes() for f in files]
    if not datas:
        return {}
    pixels = np.stack([preprocess(data, spec) for data in datas])
    return pixel_summaries(pixels, [encoded_size(data) for data in datas])


def drift_report(args: argparse.Namespace) -> dict[str, Any]:
    """The classifier drift report (``training.cli.drift_report``)."""
    from training.cli.drift_report import drift_report as run

    return run(args)


def _plot_drift(scores: dict[str, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    values = [scores[n] for n in names]
    colors = ["tab:red" if v > 0.25 else "tab:orange" if v > 0.1 else "tab:green" for v in values]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.5))
    ax.barh(names, values, color=colors)
    for x, style in ((0.1, ":"), (0.25, "--")):
        ax.axvline(x, color="gray", linestyle=style)
    ax.set_xlabel("PSI (< 0.1 stable, 0.1-0.25 moderate, > 0.25 shifted)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
