"""The ``python -m training`` command line: its sub-commands, their options and help."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.defaults import DEFAULT_LR_RULE, IMAGE_EPOCHS, MAX_EPOCHS, MIN_IMAGE_STEPS, MIN_STEPS, TABULAR_EPOCHS


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (argparse then names the flag in its error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def share(text: str) -> float:
    """An argparse type: a share strictly between 0 and 1."""
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def _image_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, help="a folder tree (label = parent folder) or, with --csv, the image root")
    p.add_argument("--csv", help="CSV of file names and labels, relative to DATA")
    p.add_argument("--fn-col", default=0, help="CSV column with file names (name or index)")
    p.add_argument("--label-col", default=1, help="CSV column with labels (name or index)")
    p.add_argument("--label-delim", help="labels separated by this make a multi-label problem")
    p.add_argument("--valid-col", help="CSV boolean column marking validation rows")
    p.add_argument(
        "--valid-pct",
        type=share,
        default=None,
        help="random validation share (default: train/ valid/ folders if present, else 0.2)",
    )
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--method", choices=["crop", "squish", "pad"], default="crop", help="resize method (default crop)")
    p.add_argument("--pad-mode", choices=["reflection", "zeros"], default="reflection")
    p.add_argument(
        "--aug",
        choices=["auto", "full", "flips"],
        default="auto",
        help="training augmentation: full "
        "(fastai's aug_transforms: flips, rotation, zoom, warp, lighting, random-resized crop), flips, or "
        "auto (default): full from pretrained weights, flips when training from scratch",
    )
    p.add_argument("--no-aug", action="store_true", help="no training augmentation")
    p.add_argument(
        "--min-scale",
        type=float,
        default=0.75,
        help="random-resized crop minimum scale (crop method, full augmentation)",
    )
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips (e.g. for digits or text)")


def _tabular_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, help="CSV file")
    p.add_argument("--target", required=True, help="target column")
    p.add_argument("--cat", nargs="*", default=None, help="categorical columns (default: cont_cat_split)")
    p.add_argument("--cont", nargs="*", default=None, help="continuous columns (default: cont_cat_split)")
    p.add_argument("--date", nargs="*", default=(), help="date columns expanded with add_datepart")
    p.add_argument(
        "--date-format",
        help="strftime pattern of the --date columns, e.g. %%d.%%m.%%Y "
        "(default ISO 8601; recorded in the bundle, so the service reads them the same way)",
    )
    p.add_argument("--task", choices=["auto", "classification", "regression"], default="auto")
    p.add_argument("--log-target", action="store_true", help="regress log(target), serve exp()")
    p.add_argument("--y-range", default="auto", help="'auto' (regression: target range +-5%%), 'none' or LOW,HIGH")
    p.add_argument("--valid-pct", type=share, default=0.2)
    p.add_argument("--valid-col", help="boolean column marking validation rows")
    p.add_argument("--split-by", help="time split: sort by this column, validate on the last rows")
    p.add_argument("--max-card", type=int, default=20, help="integer columns with more levels are continuous")
    p.add_argument("--layers", default="200,100", help="hidden layer sizes (default 200,100)")


def _arch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--arch",
        default="resnet34",
        help="resnet18, resnet34, resnet50 (ImageNet weights), small_resnet (made to train from scratch) or simple_cnn",
    )
    p.add_argument(
        "--pretrained",
        default="imagenet",
        help="'imagenet' (default: torchvision's weights, from the "
        "torch cache or downloaded once; ignored by the from-scratch archs), 'none' (train from scratch) "
        "or a .pth state dict file",
    )
    p.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_const",
        const="none",
        help="train from scratch (same as --pretrained none)",
    )


def _fit_args(p: argparse.ArgumentParser, epochs: int, steps: int = MIN_STEPS, sweep: bool = False) -> None:
    if not sweep:
        p.add_argument(
            "--epochs",
            type=positive_int,
            default=None,
            help=f"default: {epochs}, or as many as make "
            f"{steps} optimiser steps when training from scratch on little data (at most {MAX_EPOCHS})",
        )
        p.add_argument(
            "--lr",
            type=float,
            default=None,
            help=f"maximum learning rate (default: lr_find's "
            f"{DEFAULT_LR_RULE} rule, a search of up to 100 training steps)",
        )
    p.add_argument("--bs", type=positive_int, default=64, help="batch size")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--mixed-precision", action="store_true", help="autocast on CUDA")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--out", type=Path, default=Path("models"), help="model repository (default models/)")
    p.add_argument("--interpret", action="store_true", help="also write confusion matrix and top losses PNGs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train, export, fine-tune, interpret, find a learning rate, build the examples.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("image", help="train an image model and export it")
    _image_data_args(p)
    _arch_args(p)
    _fit_args(p, epochs=IMAGE_EPOCHS, steps=MIN_IMAGE_STEPS)
    _export_args(p)

    p = sub.add_parser("tabular", help="train a tabular model and export it")
    _tabular_data_args(p)
    _fit_args(p, epochs=TABULAR_EPOCHS)
    _export_args(p)

    p = sub.add_parser("lr-find", help="run the learning-rate finder and save its plot")
    kinds = p.add_subparsers(dest="kind", required=True)
    for kind, data_args in (("image", _image_data_args), ("tabular", _tabular_data_args)):
        k = kinds.add_parser(kind, help=f"the same data arguments as '{kind}'")
        data_args(k)
        if kind == "image":
            _arch_args(k)
        _fit_args(k, epochs=0, sweep=True)
        k.add_argument("--out", type=Path, help="the plot's path (default reports/lr_find/<data>-<time>.png)")

    p = sub.add_parser("finetune", help="continue training an exported model on new data, into a new version")
    p.add_argument("--from", dest="source", type=Path, required=True, help="bundle folder models/<name>/<version>")
    p.add_argument("data", type=Path, help="image folder or CSV with the same labels/columns as the model")
    p.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="default: training.finetune.FINETUNE_DEFAULTS "
        "(a few epochs, raised to make its minimum of optimiser steps)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default: FINETUNE_DEFAULTS, lr_find's rule on the new data)",
    )
    p.add_argument(
        "--freeze-epochs",
        type=int,
        default=None,
        help="epochs training the head alone first (default: FINETUNE_DEFAULTS)",
    )
    p.add_argument("--bs", type=positive_int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--valid-pct", type=share, default=0.2)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, help="model repository (default: the source bundle's)")

    p = sub.add_parser("interpret", help="confusion matrix, most confused, top losses of an exported model on data")
    p.add_argument("bundle", type=Path, help="bundle folder models/<name>/<version>")
    p.add_argument("data", type=Path, help="labelled image folder or CSV with the target column")
    p.add_argument("--k", type=int, default=9, help="how many top losses to plot")
    p.add_argument("--out", type=Path, help="where to write the PNGs (default reports/<name>/<version>)")

    p = sub.add_parser("drift", help="compare new data against an exported model's training reference (PSI)")
    p.add_argument("bundle", type=Path, help="bundle folder models/<name>/<version>")
    p.add_argument("data", type=Path, help="image folder or CSV of recent inputs")
    p.add_argument(
        "--out", type=Path, help="where to write drift.json and drift.png (default reports/<name>/<version>)"
    )

    p = sub.add_parser(
        "drift-report", help="classifier drift report: can a random forest tell logged rows from training rows?"
    )
    p.add_argument("--model", required=True, type=Path, help="bundle folder models/<name>/<version>")
    p.add_argument("--log", required=True, help="prediction log: a SQLite file or a postgresql:// URL")
    p.add_argument("--since", help="only predictions this recent: 30m, 12h, 1d, 2w")
    p.add_argument("--region", help="only predictions from this region")
    p.add_argument("--out", type=Path, help="where to write drift-report.html/.json (default reports/<name>/<version>)")

    p = sub.add_parser("examples", help="build the example models into the repository")
    p.add_argument("names", nargs="*", default=None, help="digits, diamonds, penguins (default: all)")
    p.add_argument("--out", type=Path, default=Path("models"), help="model repository (default models/)")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="where the digits PNGs are written")

    from training.loop.cli import add_commands  # dataset, nightly: the feedback loop

    add_commands(sub)
    return parser
