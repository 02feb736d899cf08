"""Training defaults on data nobody tuned them for: each figure printed beside its target.

    python -m loadtests.training_bench                  # everything: about 30 minutes on two cores
    python -m loadtests.training_bench tables           # or any of: tables images lr finetune examples
    python -m loadtests.training_bench images --epochs 10 --quick

- ``tables``: the tabular CLI's defaults (``python -m training tabular DATA
  --target T``, nothing else) on small and large, classification and
  regression tables, against scikit-learn's HistGradientBoosting on the same
  split and against predicting the training mean (majority class). Target:
  RMSE within 5% of HistGradientBoosting's (accuracy within 1 point), and
  better than the mean.
- ``images``: the from-scratch archs with the image CLI's defaults against a
  plain four-block conv-BN-ReLU-maxpool CNN in a plain PyTorch loop (AdamW,
  one cycle, flips only) given the same epochs, on two generated shape sets,
  one of them on noisy graded backgrounds. Target: error within 0.05 of it.
- ``lr``: lr_find's rules (valley, steep, slide, minimum) and fixed rates on
  every case above and the examples; prints each case's figure per rule and
  each rule's mean regret (how far from the case's best rule).
- ``finetune``: ``finetune --from`` strategies on a day's new data.
- ``examples``: ``python -m training examples`` and each example's target.

Asserts nothing: it prints figures (and exits 1 when a target is missed).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from training.cli import build_parser
from training.cli.examples import (
    carseats_frame,
    diamonds_frame,
    penguins_frame,
    write_hard_shapes_folder,
    write_shapes_folder,
)
from training.cli.train import fit_learner, make_image_learner, make_tabular_learner
from training.finetune import FINETUNE_DEFAULTS, FinetuneDefaults, finetune_data, finetune_learner
from training.learner import Learner, set_seed

PARTS = ("tables", "images", "lr", "finetune", "examples")


@dataclass
class Figure:
    """One measured figure beside its target."""

    part: str
    case: str
    metric: str
    value: float
    target: str
    met: bool
    detail: str = ""

    def line(self) -> str:
        return (
            f"{self.part:<9} {self.case:<34} {self.metric:<11} {self.value:>9.4f}  {self.target:<34} "
            f"{'yes' if self.met else 'NO':<4} {self.detail}"
        )


# -- tables --------------------------------------------------------------------------------------


def sales_frame(n: int = 12000, seed: int = 0) -> pd.DataFrame:
    """A generated large table with a date: a store's takings (``amount``) and whether it hit its goal (``goal``).

    Both depend on a smooth function of price, an interaction of two numbers,
    the store's category and the weekend, with noise, so neither a linear
    model nor a tree gets them for free. Use one target and drop the other.
    """
    rng = np.random.default_rng(seed)
    price, promo, stock = rng.normal(size=(3, n))
    store = rng.choice(list("ABCDEF"), n)
    day = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 730, n), unit="D")
    store_effect = pd.Series(store).map({"A": 1.0, "B": -1.0, "C": 0.5, "D": 0.0, "E": -0.5, "F": 1.5}).to_numpy()
    logit = np.sin(2 * price) + promo * stock + store_effect + 0.8 * (day.dayofweek >= 5) - 0.3
    hit = rng.random(n) < 1 / (1 + np.exp(-2 * logit))
    amount = 100 * np.exp(0.3 * logit + rng.normal(0, 0.1, n))
    return pd.DataFrame(
        {
            "price": price,
            "promo": promo,
            "stock": stock,
            "store": store,
            "day": day.strftime("%Y-%m-%d"),
            "amount": amount.round(2),
            "goal": np.where(hit, "hit", "missed"),
        }
    )


@dataclass(frozen=True)
class Table:
    name: str
    load: Callable[[], pd.DataFrame]
    target: str
    flags: tuple[str, ...] = ()


TABLES = (
    Table("carseats-like (400, regression)", carseats_frame, "Sales"),
    Table("penguins (344, classification)", penguins_frame, "species"),
    # price is an integer column: --task says it is a quantity, not 11,000 classes
    Table(
        "diamonds (20,000, regression)",
        lambda: diamonds_frame().sample(n=20000, random_state=0),
        "price",
        ("--task", "regression"),
    ),
    Table(
        "sales goal (12,000, classif., date)", lambda: sales_frame().drop(columns="amount"), "goal", ("--date", "day")
    ),
    Table(
        "sales amount (12,000, regr., date)", lambda: sales_frame().drop(columns="goal"), "amount", ("--date", "day")
    ),
)


def baseline_frame(df: pd.DataFrame, train: pd.DataFrame, features: list[str], dates: list[str]) -> pd.DataFrame:
    """Features as HistGradientBoosting takes them: numbers as they are, dates as parts, text as categories."""
    out = pd.DataFrame(index=df.index)
    for name in features:
        column = df[name]
        if name in dates:
            when = pd.to_datetime(column, errors="coerce")
            for part in ("year", "month", "day", "dayofweek", "dayofyear"):
                out[f"{name}_{part}"] = getattr(when.dt, part)
        elif pd.api.types.is_numeric_dtype(column):
            out[name] = column
        else:
            levels = sorted(train[name].dropna().astype(str).unique())
            out[name] = pd.Categorical(column.astype(object).where(column.notna(), None), categories=levels)
    return out


def hist_gradient_boosting(
    train: pd.DataFrame, valid: pd.DataFrame, features: list[str], target: str, task: str, dates: list[str]
) -> np.ndarray:
    """scikit-learn's HistGradientBoosting with its defaults, fitted on ``train``, predicting ``valid``."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    model_type = HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
    model = model_type(categorical_features="from_dtype", random_state=0)
    model.fit(
        baseline_frame(train, train, features, dates), train[target].astype(float if task == "regression" else str)
    )
    return model.predict(baseline_frame(valid, train, features, dates))


def table_case(table: Table, workdir: Path, extra: tuple[str, ...] = ()) -> tuple[Learner, argparse.Namespace]:
    """The table written to CSV and a learner made exactly as ``python -m training tabular`` makes it."""
    path = workdir / f"{table.target}.csv"
    table.load().to_csv(path, index=False)
    argv = [
        "tabular",
        str(path),
        "--target",
        table.target,
        "--name",
        "bench",
        "--out",
        str(workdir),
        *table.flags,
        *extra,
    ]
    args = build_parser().parse_args(argv)
    learn = make_tabular_learner(args)
    learn.show_table = False
    return learn, args


def table_score(learn: Learner, table: Table) -> tuple[str, float, float, float]:
    """(metric, ours, HistGradientBoosting's, the mean's or majority's) on the learner's validation rows."""
    dls = learn.dls
    train, valid = dls.train_df_raw, dls.valid_df_raw
    dates = list(dls.processor.date_fields)
    features = list(dls.processor.raw_columns)
    baseline = hist_gradient_boosting(train, valid, features, table.target, dls.task, dates)
    scores = learn.validate()
    if dls.task == "regression":
        truth = valid[table.target].to_numpy(dtype=float)
        hgb = float(np.sqrt(np.mean((baseline - truth) ** 2)))
        mean = float(np.sqrt(np.mean((train[table.target].mean() - truth) ** 2)))
        return "rmse", scores["rmse"], hgb, mean
    truth = valid[table.target].astype(str).to_numpy()
    majority = float(np.mean(truth == train[table.target].astype(str).mode()[0]))
    return "accuracy", 1.0 - scores["error_rate"], float(np.mean(baseline == truth)), majority


def bench_tables(args: argparse.Namespace) -> list[Figure]:
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for table in TABLES:
            started = time.perf_counter()
            learn, cli_args = table_case(table, Path(tmp))
            lr = fit_learner(learn, cli_args, pretrained=False)
            seconds = time.perf_counter() - started
            metric, ours, hgb, mean = table_score(learn, table)
            if metric == "rmse":
                met = ours <= 1.05 * hgb and ours < mean
                target = f"<= {1.05 * hgb:.4g} (HGB {hgb:.4g}), < mean {mean:.4g}"
            else:
                met = ours >= hgb - 0.01 and ours > mean
                target = f">= {hgb - 0.01:.4f} (HGB {hgb:.4f}), > majority {mean:.3f}"
            detail = f"{cli_args.epochs} epochs, lr {lr:.2e}, {seconds:.0f} s"
            figures.append(Figure("tables", table.name, metric, ours, target, met, detail))
            print(figures[-1].line(), flush=True)
    return figures


# -- images --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSet:
    name: str
    write: Callable[[Path], Path]
    size: int


IMAGE_SETS = (
    ImageSet("shapes (300, 64 px)", lambda root: write_shapes_folder(root / "shapes", per_class=100, size=64), 64),
    ImageSet(
        "hard shapes (600, 64 px, noisy)",
        lambda root: write_hard_shapes_folder(root / "hard", per_class=200, size=64),
        64,
    ),
)
REFERENCE_LR = 3e-3  # the plain CNN's best of 1e-3, 3e-3, 1e-2 on the hard set (1e-2 stays at chance)


def plain_cnn(n_out: int, widths: tuple[int, ...] = (32, 64, 128, 256)) -> nn.Sequential:
    """The reference: four conv-BN-ReLU-maxpool blocks, global average pooling, one Linear."""
    layers: list[nn.Module] = []
    n_in = 3
    for width in widths:
        layers += [
            nn.Conv2d(n_in, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        n_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(n_in, n_out))


def reference_error(learn: Learner, epochs: int, lr: float = REFERENCE_LR, seed: int = 0, bs: int = 64) -> float:
    """The plain CNN trained in a plain PyTorch loop on the learner's own split: AdamW, one cycle, flips only."""
    torch.manual_seed(seed)
    train_ds, valid_ds = learn.dls.train_ds, learn.dls.valid_ds
    x_train = torch.stack([train_ds.pixels(i) for i in range(len(train_ds))]).float() / 255
    y_train = torch.as_tensor(train_ds.targets)
    x_valid = torch.stack([valid_ds.pixels(i) for i in range(len(valid_ds))]).float() / 255
    y_valid = torch.as_tensor(valid_ds.targets)
    mean, std = x_train.mean(dim=(0, 2, 3), keepdim=True), x_train.std(dim=(0, 2, 3), keepdim=True)
    model = plain_cnn(len(learn.dls.vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * math.ceil(len(x_train) / bs))
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train))
        for start in range(0, len(x_train), bs):
            rows = order[start : start + bs]
            x = x_train[rows]
            x = torch.where((torch.rand(len(x)) < 0.5)[:, None, None, None], x.flip(3), x)
            loss = nn.functional.cross_entropy(model((x - mean) / std), y_train[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        return float((model((x_valid - mean) / std).argmax(dim=1) != y_valid).float().mean())


def image_case(
    folder: Path, arch: str, size: int, workdir: Path, extra: tuple[str, ...] = ()
) -> tuple[Learner, argparse.Namespace]:
    """A learner made exactly as ``python -m training image DATA --arch ARCH --size SIZE`` makes it."""
    argv = ["image", str(folder), "--arch", arch, "--size", str(size), "--name", "bench", "--out", str(workdir), *extra]
    args = build_parser().parse_args(argv)
    learn = make_image_learner(args)
    learn.show_table = False
    return learn, args


def bench_images(args: argparse.Namespace) -> list[Figure]:
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for image_set in IMAGE_SETS:
            folder = image_set.write(Path(tmp))
            for arch in args.archs:
                if args.case and not any(part in f"{arch} on {image_set.name}" for part in args.case):
                    continue
                started = time.perf_counter()
                learn, cli_args = image_case(folder, arch, image_set.size, Path(tmp))
                lr = fit_learner(learn, cli_args, pretrained=False)
                ours = learn.validate()["error_rate"]
                seconds = time.perf_counter() - started
                reference = reference_error(learn, cli_args.epochs)
                met = ours <= reference + 0.05
                target = f"<= {reference + 0.05:.3f} (plain CNN {reference:.3f})"
                detail = f"{cli_args.epochs} epochs, lr {lr:.2e}, {seconds:.0f} s"
                figures.append(Figure("images", f"{arch} on {image_set.name}", "error_rate", ours, target, met, detail))
                print(figures[-1].line(), flush=True)
    return figures


# -- learning-rate rules -------------------------------------------------------------------------

RULES = ("valley", "steep", "slide", "minimum", "clamped", "1e-3", "3e-3", "1e-2")


def score(learn: Learner) -> tuple[str, float]:
    """The case's figure, lower is better: error rate, or RMSE (log RMSE for a log target)."""
    scores = learn.validate()
    for name in ("error_rate", "rmse_log", "rmse"):
        if name in scores:
            return name, float(scores[name])
    raise ValueError(f"no figure to compare among {sorted(scores)}")


def compare_rules(case: str, learn: Learner, epochs: int, rules: tuple[str, ...]) -> dict[str, float]:
    """Train the same initial weights once per rule (same seed, same epochs); each rule's figure."""
    learn.progress = False
    initial = {k: v.clone() for k, v in learn.model.state_dict().items()}
    suggestion = learn.lr_find(show_plot=False)
    results: dict[str, float] = {}
    by_lr: dict[float, float] = {}  # rules that land on the same rate share one run
    for rule in rules:
        lr = float(rule) if rule[0].isdigit() else suggestion.rule(rule)
        if lr in by_lr:
            results[rule] = by_lr[lr]
            print(f"lr        {case:<34} {rule:<8} lr {lr:.2e}  (the same rate as another rule) {by_lr[lr]:.4f}")
            continue
        learn.model.load_state_dict(initial)
        learn.opt = None  # a fresh optimiser: no state carried over from the previous rule
        set_seed(0)
        learn.fit_one_cycle(epochs, lr)
        metric, value = score(learn)
        results[rule] = by_lr[lr] = value
        print(f"lr        {case:<34} {rule:<8} lr {lr:.2e}  {metric} {value:.4f}", flush=True)
    return results


def lr_cases(workdir: Path, archs: tuple[str, ...]) -> list[tuple[str, Callable[[], tuple[Learner, int]]]]:
    """(name, make) for every case: make returns a fresh learner and the default epochs for it."""
    cases: list[tuple[str, Callable[[], tuple[Learner, int]]]] = []

    def from_cli(make: Callable[[], tuple[Learner, argparse.Namespace]], pretrained: bool = False):
        def build() -> tuple[Learner, int]:
            from training.cli.train import epochs_for

            learn, _ = make()
            return learn, epochs_for(learn, pretrained)

        return build

    for table in TABLES:
        cases.append((table.name, from_cli(lambda table=table: table_case(table, workdir))))
    for image_set in IMAGE_SETS:
        folder = image_set.write(workdir)
        for arch in archs:
            cases.append(
                (
                    f"{arch} on {image_set.name}",
                    from_cli(lambda f=folder, a=arch, s=image_set.size: image_case(f, a, s, workdir)),
                )
            )

    def digits() -> tuple[Learner, int]:
        from training.cli.examples import train_digits

        learn = train_digits(workdir, epochs=0)  # the example's data, model and augmentation, untrained
        return learn, 8

    cases.append(("digits example (simple_cnn, 28 px)", digits))
    return cases


def near_best(value: float, best: float, metric: str) -> bool:
    """Within 5% of the case's best RMSE, or 0.02 of its best error rate: as good, for choosing a default."""
    return value <= best + 0.02 if metric == "error_rate" else value <= best * 1.05


def summarise_rules(table: dict[str, tuple[str, dict[str, float]]]) -> list[Figure]:
    """Per rule: on how many cases it is near the best rule, its mean rank, and its worst case."""
    figures = []
    for rule in RULES:
        near = [near_best(results[rule], min(results.values()), metric) for metric, results in table.values()]
        ranks = [sorted(results.values()).index(results[rule]) + 1 for _, results in table.values()]
        worst_case, worst_ratio = max(
            ((case, results[rule] / max(min(results.values()), 1e-3)) for case, (_, results) in table.items()),
            key=lambda pair: pair[1],
        )
        figures.append(
            Figure(
                "lr",
                f"rule {rule}",
                "near best",
                float(sum(near)),
                f"of {len(table)} cases",
                True,
                f"mean rank {np.mean(ranks):.1f}; worst {worst_ratio:.2f}x best ({worst_case})",
            )
        )
    return figures


def bench_lr(args: argparse.Namespace) -> list[Figure]:
    table: dict[str, tuple[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, make in lr_cases(Path(tmp), tuple(args.archs)):
            if args.case and not any(part in case for part in args.case):
                continue
            learn, epochs = make()
            results = compare_rules(case, learn, epochs, RULES)
            table[case] = (score(learn)[0], results)
    print(f"\n{'case':<38}" + "".join(f"{rule:>9}" for rule in RULES))
    for case, (_, results) in table.items():
        print(f"{case:<38}" + "".join(f"{results[rule]:>9.4g}" for rule in RULES))
    figures = summarise_rules(table)
    for figure in figures:
        print(figure.line(), flush=True)
    return figures


# -- fine-tuning ---------------------------------------------------------------------------------


Strategy = Callable[[Learner, Any], None]


def finetune_strategies() -> dict[str, Strategy]:
    """fastai's recipe as ``finetune`` ran it before, the issue's hand-picked settings, and the candidates."""

    def recipe(epochs: int, base_lr: float) -> Strategy:
        def run(learn: Learner, dls: Any) -> None:
            learn.dls = dls
            learn.fine_tune(epochs, base_lr=base_lr)

        return run

    def candidate(defaults: FinetuneDefaults) -> Strategy:
        def run(learn: Learner, dls: Any) -> None:
            finetune_learner(learn, dls, defaults)

        return run

    return {
        "fine_tune(3, base_lr=2e-3) (the old default)": recipe(3, 2e-3),
        "fine_tune(6, base_lr=1e-2)": recipe(6, 1e-2),
        "one cycle, steps-sized, lr_find valley": candidate(FinetuneDefaults(lr_rule="valley")),
        "one cycle, steps-sized, lr_find minimum": candidate(FinetuneDefaults(lr_rule="minimum")),
        "one cycle, steps-sized, 1e-3": candidate(FinetuneDefaults(lr=1e-3)),
        "one cycle, steps-sized, 3e-3": candidate(FinetuneDefaults(lr=3e-3)),
        "one cycle, steps-sized, 1e-2": candidate(FinetuneDefaults(lr=1e-2)),
        "one cycle, steps-sized, 3e-3, body at 1/10": candidate(FinetuneDefaults(lr=3e-3, body_lr_div=10)),
        "FINETUNE_DEFAULTS": candidate(FINETUNE_DEFAULTS),
    }


def shifted_carseats(n: int, seed: int) -> pd.DataFrame:
    """A later day of the Carseats-like table: prices matter more, and good shelves more again."""
    df = carseats_frame(n, seed)
    extra = -0.05 * (df["Price"] - 115) + np.where(df["ShelveLoc"] == "Good", 1.5, 0.0)
    return df.assign(Sales=(df["Sales"] + extra).clip(0, None).round(2))


def finetune_cases(workdir: Path) -> list[tuple[str, Path, Path]]:
    """(name, exported bundle, the day's new data): each base model trained with the CLI's defaults."""
    from training.cli import main as cli

    old = write_shapes_folder(workdir / "old-shapes", per_class=100, size=64, seed=0)
    new = write_hard_shapes_folder(workdir / "new-shapes", per_class=50, size=64, seed=1)
    carseats_csv, carseats_new = workdir / "carseats.csv", workdir / "carseats-new.csv"
    carseats_frame(400, seed=0).to_csv(carseats_csv, index=False)
    shifted_carseats(150, seed=1).to_csv(carseats_new, index=False)
    repo = workdir / "models"
    cli(["image", str(old), "--arch", "simple_cnn", "--size", "64", "--name", "shapes", "--out", str(repo)])
    cli(["tabular", str(carseats_csv), "--target", "Sales", "--name", "carseats", "--out", str(repo)])
    return [
        ("shapes -> a day of hard shapes (150)", repo / "shapes" / "1", new),
        ("carseats-like -> a shifted day (150)", repo / "carseats" / "1", carseats_new),
    ]


def bench_finetune(args: argparse.Namespace) -> list[Figure]:
    from training.export import load_learner

    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, bundle, data in finetune_cases(Path(tmp)):
            results = {}
            for name, strategy in finetune_strategies().items():
                learn = load_learner(bundle)
                learn.show_table = False
                learn.progress = False
                set_seed(42)
                dls = finetune_data(learn, data, valid_pct=0.2, seed=42, bs=64)
                learn.dls = dls
                metric, before = score(learn)
                started = time.perf_counter()
                strategy(learn, dls)
                _, after = score(learn)
                results[name] = after
                print(
                    f"finetune  {case:<38} {name:<46} {metric} {before:.4f} -> {after:.4f} "
                    f"({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
            best = min(results.values())
            ours = results["FINETUNE_DEFAULTS"]
            old = results["fine_tune(3, base_lr=2e-3) (the old default)"]
            figures.append(
                Figure("finetune", case, "after", ours, f"< old default {old:.4f}, best {best:.4f}", ours < old, "")
            )
            print(figures[-1].line(), flush=True)
    return figures


# -- examples ------------------------------------------------------------------------------------


def bench_examples(args: argparse.Namespace) -> list[Figure]:
    from bundle.manifest import read_manifest
    from training.cli.examples import EXAMPLES, build_example

    checks = {
        "digits": ("error_rate", lambda v: v <= 0.03, "<= 0.03"),
        "diamonds": ("rmse_log", lambda v: v <= 0.15, "<= 0.15"),
        "penguins": ("accuracy", lambda v: v >= 0.95, ">= 0.95"),
    }
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in EXAMPLES:
            started = time.perf_counter()
            result = build_example(name, Path(tmp) / "models", Path(tmp) / "data")
            metric, passes, target = checks[name]
            value = result.metrics[metric]
            seconds = time.perf_counter() - started
            figures.append(Figure("examples", name, metric, value, target, passes(value), f"{seconds:.0f} s"))
            print(figures[-1].line(), flush=True)
            # the bundle exists only if ONNX Runtime matched PyTorch as allclose(rtol=1e-4, atol=1e-4)
            parity = read_manifest(result.bundle).parity
            figures.append(
                Figure(
                    "examples",
                    f"{name} ONNX parity",
                    "max rel",
                    parity.max_rel_diff or 0.0,
                    f"allclose rtol {parity.rtol:g} atol {parity.tolerance:g}",
                    True,
                    f"max abs {parity.max_abs_diff:.2g}",
                )
            )
            print(figures[-1].line(), flush=True)
    return figures


BENCHES = {
    "tables": bench_tables,
    "images": bench_images,
    "lr": bench_lr,
    "finetune": bench_finetune,
    "examples": bench_examples,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.training_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"any of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--archs", nargs="+", default=["simple_cnn", "small_resnet"], help="from-scratch archs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--case", nargs="+", help="images, lr: only the cases whose name contains one of these")
    args = parser.parse_args(argv)
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    figures: list[Figure] = []
    for part in args.parts or PARTS:
        started = time.perf_counter()
        figures += BENCHES[part](args)
        print(f"-- {part}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    print(f"\n{'part':<9} {'case':<34} {'metric':<11} {'measured':>9}  {'target':<34} {'met':<4} detail")
    for figure in figures:
        print(figure.line())
    return 0 if all(f.met for f in figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
