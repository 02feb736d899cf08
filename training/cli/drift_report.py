"""``python -m training drift-report``: the course's ``is_valid`` trick on live traffic.

Label the reference sample that export stored in ``reference.json`` 0 and
the rows the prediction log holds 1, and train a random forest to tell them
apart. If it cannot (cross-validated ROC AUC near 0.5), live traffic looks
like training data; the higher the AUC, the easier the two are told apart,
and the forest's feature importances name the features that give the live
rows away. For image models the rows are the per-image summaries
(brightness, contrast, saturation, width, height, aspect).

The report is an HTML page with the AUC, the importances (table and plot)
and the PSI of each feature, written beside a JSON summary.

The AUC is cross-validated: each fold's rows are scored by a forest that
never saw them. It says how far apart the two sets are, and how sure that is:
the report gives each fold's AUC and their spread. A cross-validated AUC can
fall below 0.5, and far below it means something specific: live rows that
repeat reference rows (the same items sent again, as a test replaying
training data does). A forest memorises the copy it trained on, labelled
"reference", and so calls its held-out twin, labelled "live", a reference
row: wrong in a consistent direction, so worse than chance. The report counts
those copies. Slightly below 0.5 (within about twice the folds' spread) is
only noise around "indistinguishable".
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bundle import reference as ref
from bundle.durations import parse_duration
from bundle.manifest import read_manifest, read_reference
from training.defaults import REPORTS_DIR

MAX_LOGGED_ROWS = 5_000  # the most recent logged rows the forest sees
_IMAGE_FIELDS_SKIPPED = ("sha256", "bytes", "b64")


N_FOLDS = 5


@dataclass
class ClassifierDrift:
    auc: float  # over every row's out-of-fold score
    importances: dict[str, float]  # feature -> importance, largest first
    reference_rows: int
    logged_rows: int
    fold_aucs: list[float] = field(default_factory=list)  # each fold's AUC on the rows it held out
    copies: int = 0  # logged rows equal to some reference row (on the reference's columns)

    @property
    def spread(self) -> float:
        """The standard deviation of the folds' AUCs."""
        return float(np.std(self.fold_aucs)) if self.fold_aucs else 0.0


def read_logged_inputs(
    log: str,
    model: str,
    version: int,
    since_s: float | None = None,
    region: str | None = None,
    limit: int = MAX_LOGGED_ROWS,
) -> list[dict[str, Any]]:
    """The input rows of the logged predictions of one version, newest first (one per item)."""
    from bundle.prediction_log import logged_inputs, open_log
    from bundle.store import StoreUnavailable

    try:
        store = open_log(log)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--log: {exc}") from None
    try:
        items = logged_inputs(store, model, version, since_s, region, limit)
    except StoreUnavailable as exc:
        raise ValueError(f"--log: cannot read the prediction log: {exc}") from exc
    finally:
        store.close()
    return [{k: v for k, v in item.items() if k not in _IMAGE_FIELDS_SKIPPED} for item in items]


def classifier_drift(
    reference_rows: Sequence[dict[str, Any]], logged_rows: Sequence[dict[str, Any]], seed: int = 0, trees: int = 200
) -> ClassifierDrift:
    """Cross-validated ROC AUC of a random forest telling logged rows from reference rows, and importances."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    if len(reference_rows) < 5 or len(logged_rows) < 5:
        raise ValueError(
            f"need at least 5 reference and 5 logged rows, have {len(reference_rows)} and {len(logged_rows)}"
        )
    frame = pd.DataFrame([*reference_rows, *logged_rows])
    columns = [c for c in pd.DataFrame(list(reference_rows)).columns if c in frame.columns]
    x = _encode(frame[columns])
    y = np.r_[np.zeros(len(reference_rows)), np.ones(len(logged_rows))]
    forest = RandomForestClassifier(n_estimators=trees, min_samples_leaf=3, random_state=seed, n_jobs=1)
    folds = list(StratifiedKFold(n_splits=N_FOLDS, shuffle=True, random_state=seed).split(x, y))
    scores = cross_val_predict(forest, x, y, cv=folds, method="predict_proba")[:, 1]
    fold_aucs = [float(roc_auc_score(y[held], scores[held])) for _, held in folds]
    forest.fit(x, y)
    importances = dict(sorted(zip(columns, forest.feature_importances_.tolist()), key=lambda kv: -kv[1]))
    return ClassifierDrift(
        float(roc_auc_score(y, scores)),
        importances,
        len(reference_rows),
        len(logged_rows),
        fold_aucs,
        _copies(frame[columns], len(reference_rows)),
    )


def _copies(frame: pd.DataFrame, n_reference: int) -> int:
    """How many of the rows after the first ``n_reference`` equal one of those (missing equals missing)."""
    keys = frame.astype(object).where(frame.notna(), None).apply(lambda row: tuple(row), axis=1)
    reference = set(keys.iloc[:n_reference])
    return int(sum(key in reference for key in keys.iloc[n_reference:]))


def _encode(frame: pd.DataFrame) -> np.ndarray:
    """Numbers as floats (missing as NaN, which the forest handles); anything else as category codes."""
    columns = []
    for name in frame.columns:
        values = frame[name]
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.notna().sum() == values.notna().sum():
            columns.append(numbers.to_numpy(dtype=np.float64))
        else:
            codes, _ = pd.factorize(values.astype(object).where(values.notna(), None), use_na_sentinel=True)
            columns.append(codes.astype(np.float64))
    return np.stack(columns, axis=1)


def drift_report(args: argparse.Namespace) -> dict[str, Any]:
    """Run the report for ``args.model`` against ``args.log``; returns the JSON summary."""
    bundle = Path(args.model)
    manifest = read_manifest(bundle)
    reference = read_reference(bundle, manifest) or {}
    sample = reference.get("sample") or []
    if not sample:
        raise ValueError(f"{bundle}: reference.json holds no reference sample (exported before drift reports)")
    since = parse_duration(args.since) if args.since else None
    logged = read_logged_inputs(args.log, manifest.name, manifest.version, since, args.region)
    if not logged:
        raise ValueError(f"--log: no logged predictions of {manifest.name} v{manifest.version} match")
    result = classifier_drift(sample, logged)
    logged_frame = pd.DataFrame(logged)
    features = reference.get("features") or {}
    psi = {}
    for name in result.importances:
        key = f"image.{name}" if f"image.{name}" in features else name
        if key in features and name in logged_frame.columns:
            psi[name] = round(ref.psi(features[key], logged_frame[name]), 4)
    out = Path(args.out) if args.out else REPORTS_DIR / manifest.name / str(manifest.version)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": manifest.name,
        "version": manifest.version,
        "roc_auc": round(result.auc, 4),
        "roc_auc_folds": [round(a, 4) for a in result.fold_aucs],
        "roc_auc_spread": round(result.spread, 4),
        "verdict": verdict(result.auc, result.spread, result.copies, result.logged_rows),
        "copies_of_reference_rows": result.copies,
        "reference_rows": result.reference_rows,
        "logged_rows": result.logged_rows,
        "importances": {k: round(v, 4) for k, v in result.importances.items()},
        "psi": psi,
        "since": args.since,
        "region": args.region,
        "report": str(out / "drift-report.html"),
    }
    (out / "drift-report.json").write_text(json.dumps(summary, indent=2))
    (out / "drift-report.html").write_text(_html(summary, _plot(result)))
    return summary


def verdict(auc: float, spread: float = 0.0, copies: int = 0, logged: int = 0) -> str:
    """What an AUC means, given the folds' spread and how many logged rows copy reference rows."""
    if auc < 0.5 - max(0.05, 2 * spread):
        found = f"{copies} of the {logged} logged rows are copies of reference rows" if logged else "no rows"
        return (
            "below chance: live rows repeat training rows (here "
            f"{found}); a forest that memorised one copy calls its twin a training row, so it is wrong in a "
            "consistent direction. Not drift: the same data came back"
        )
    if auc < 0.6:
        return "indistinguishable: live rows look like the training reference"
    if auc < 0.8:
        return "some shift: look at the top features"
    return "shifted: a classifier tells live rows from training rows; the top features give them away"


def _plot(result: ClassifierDrift) -> str:
    """The importances as a bar chart, a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.importances)[::-1]
    values = [result.importances[n] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.5))
    ax.barh(names, values, color="tab:blue")
    ax.set_xlabel("random forest importance (what tells live rows from training rows)")
    ax.set_title(f"ROC AUC {result.auc:.3f} (0.5: indistinguishable)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _html(summary: dict[str, Any], png_b64: str) -> str:
    e = html.escape
    folds = ", ".join(f"{auc:.3f}" for auc in summary["roc_auc_folds"])
    rows = "\n".join(
        f"<tr><td>{e(name)}</td><td>{value:.4f}</td><td>{summary['psi'].get(name, '')}</td></tr>"
        for name, value in summary["importances"].items()
    )
    scope = ", ".join(f"{k} {summary[k]}" for k in ("since", "region") if summary[k]) or "every logged prediction"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report: {e(summary["model"])} v{summary["version"]}</title>
<style>body{{font-family:sans-serif;max-width:50em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:left}}</style>
</head><body>
<h1>Drift report: {e(summary["model"])} v{summary["version"]}</h1>
<p>A random forest was trained to tell {summary["reference_rows"]} training reference rows from
{summary["logged_rows"]} logged rows ({e(scope)}).</p>
<p><strong>ROC AUC {summary["roc_auc"]:.3f}</strong> (folds {folds}; spread {summary["roc_auc_spread"]:.3f}):
{e(summary["verdict"])}.</p>
<p>0.5 means the two cannot be told apart; above 0.8 live traffic has clearly moved away from training data.
The AUC is cross-validated: each fold's rows are scored by a forest that never saw them, so it can fall under 0.5.
Slightly under (within about twice the folds' spread) is noise around 0.5. Far under means live rows repeat
training rows: the forest memorises the copy it trained on, labelled training, and calls its held-out twin a
training row too. {summary["copies_of_reference_rows"]} of the {summary["logged_rows"]} logged rows are copies of
reference rows.</p>
<img alt="feature importances" src="data:image/png;base64,{png_b64}">
<table><tr><th>feature</th><th>importance</th><th>PSI</th></tr>
{rows}
</table>
<p>PSI below 0.1: stable; 0.1 to 0.25: moderate shift; above 0.25: significant shift.</p>
</body></html>
"""
