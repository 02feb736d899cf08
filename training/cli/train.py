"""``python -m training image|tabular|lr-find|examples``: build the data, the learner, fit it, export it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bundle.manifest import read_manifest
from training.builders import tabular_learner, vision_learner
from training.cli.examples import EXAMPLES, build_example
from training.data.augment import Augment, aug_transforms
from training.data.images import ImageDataLoaders
from training.data.tabular import TabularDataLoaders
from training.defaults import IMAGE_EPOCHS, MIN_IMAGE_STEPS, MIN_STEPS, REPORTS_DIR, TABULAR_EPOCHS, default_epochs
from training.export import export_learner
from training.interpret import write_interpretation
from training.learner import Learner, set_seed
from training.lr_find import DEFAULT_LR_RULE, SuggestedLRs
from training.models.vision import resolve_pretrained


def _col(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.isdigit() else value


def image_augmentation(args: argparse.Namespace) -> Augment | None:
    """``--aug``: fastai's full set from pretrained weights; from scratch only flips (``auto``).

    Measured on the hard shapes set (docs/training.md): with rotation, warp,
    lighting and random-resized crops a from-scratch model stayed at chance
    (error 0.60-0.69 at seven learning rates) in its 200 default steps, where
    flips alone reached 0-0.43.
    """
    if args.no_aug:
        return None
    choice = getattr(args, "aug", "full")
    if choice == "auto":
        choice = "full" if pretrained_of(args) else "flips"
    if choice == "flips":
        return Augment(do_flip=not args.no_flip, max_rotate=0.0, max_zoom=1.0, max_lighting=0.0, max_warp=0.0)
    return aug_transforms(do_flip=not args.no_flip, min_scale=args.min_scale)


def image_dls(args: argparse.Namespace) -> ImageDataLoaders:
    aug = image_augmentation(args)
    common = dict(size=args.size, method=args.method, pad_mode=args.pad_mode, aug=aug, bs=args.bs, seed=args.seed)
    if args.csv:
        return ImageDataLoaders.from_csv(
            args.data,
            csv_fname=args.csv,
            fn_col=_col(args.fn_col),
            label_col=_col(args.label_col),
            label_delim=args.label_delim,
            valid_col=args.valid_col,
            valid_pct=args.valid_pct if args.valid_pct is not None else 0.2,
            **common,
        )
    return ImageDataLoaders.from_folder(args.data, valid_pct=args.valid_pct, **common)


def tabular_dls(args: argparse.Namespace) -> TabularDataLoaders:
    y_block = {"auto": None, "classification": "category", "regression": "regression"}[args.task]
    return TabularDataLoaders.from_csv(
        args.data,
        y_names=args.target,
        cat_names=args.cat,
        cont_names=args.cont,
        date_fields=tuple(args.date or ()),
        date_formats={field: args.date_format for field in args.date or ()} if args.date_format else None,
        y_block=y_block,
        log_target=args.log_target,
        valid_pct=args.valid_pct,
        valid_col=args.valid_col,
        split_by=args.split_by,
        max_card=args.max_card,
        seed=args.seed,
        bs=args.bs,
    )


def _y_range(args: argparse.Namespace, dls: TabularDataLoaders) -> tuple[float, float] | None:
    if dls.task != "regression" or args.y_range == "none":
        return None
    if args.y_range != "auto":
        low, high = (float(v) for v in args.y_range.split(","))
        return low, high
    ys = torch.cat([b[-1] for b in dls.train])
    low, high = float(ys.min()), float(ys.max())
    margin = 0.05 * (high - low or 1.0)
    return low - margin, high + margin


def _learner_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"device": args.device, "mixed_precision": getattr(args, "mixed_precision", False), "seed": args.seed}


def pretrained_of(args: argparse.Namespace) -> bool | Path:
    """``--pretrained imagenet|none|FILE`` as ``vision_learner`` takes it (resolved for the arch)."""
    value = str(getattr(args, "pretrained", "imagenet"))
    choice = {"imagenet": True, "none": False}.get(value.lower(), Path(value))
    return resolve_pretrained(getattr(args, "arch", "resnet34"), choice)


def make_image_learner(args: argparse.Namespace) -> Learner:
    set_seed(args.seed)
    dls = image_dls(args)
    pretrained = pretrained_of(args)
    learn = vision_learner(dls, arch=getattr(args, "arch", "resnet34"), pretrained=pretrained, **_learner_kwargs(args))
    if pretrained is True:
        print(f"starting from torchvision's ImageNet weights for {args.arch} (--no-pretrained: from scratch)")
    return learn


def make_tabular_learner(args: argparse.Namespace) -> Learner:
    set_seed(args.seed)
    dls = tabular_dls(args)
    layers = [int(v) for v in str(getattr(args, "layers", "200,100")).split(",") if v]
    return tabular_learner(dls, layers=layers, y_range=_y_range(args, dls), **_learner_kwargs(args))


def _find_lr(learn: Learner, save_path: Path | None = None) -> SuggestedLRs:
    """lr_find's suggestions, saying that the search runs and what it cost."""
    print(f"searching for a learning rate: up to 100 training steps of {learn.dls.bs} items (--lr skips this)")
    suggestion = learn.lr_find(show_plot=False, save_path=save_path)
    print(f"learning rate {suggestion.chosen:.2e} (lr_find's {DEFAULT_LR_RULE}; {learn.recorder.sweep.describe()})")
    return suggestion


def fit_learner(learn: Learner, args: argparse.Namespace, pretrained: bool) -> float:
    """Train as the CLI does: lr_find's chosen rate unless --lr, fine_tune from pretrained weights, else one cycle.

    The sweep is kept in ``args.sweep`` so its plot can join the other reports once the version is known.
    """
    if args.epochs is None:
        args.epochs = epochs_for(learn, pretrained)
    lr = args.lr
    if lr is None:
        lr = float(_find_lr(learn).chosen)
        args.lr_find = _sweep_info(learn)
        args.sweep = learn.recorder.sweep
    if pretrained:
        learn.fine_tune(args.epochs, base_lr=lr)
    else:
        learn.fit_one_cycle(args.epochs, lr)
    return lr


def epochs_for(learn: Learner, pretrained: bool) -> int:
    """The default epochs: the course's, raised to make ``MIN_STEPS`` optimiser steps (``MIN_IMAGE_STEPS`` for
    images) when training from scratch.

    A pretrained body needs few steps (fastai's four epochs of ``fine_tune``);
    a from-scratch model or a table of a few hundred rows needs hundreds.
    """
    n_batches = len(learn.dls.train)
    image = learn.dls.input_kind == "image"
    base, min_steps = (IMAGE_EPOCHS, MIN_IMAGE_STEPS) if image else (TABULAR_EPOCHS, MIN_STEPS)
    epochs = base if pretrained else default_epochs(n_batches, base, min_steps)
    floor = "" if pretrained else f", at least {min_steps}"
    print(
        f"training {epochs} epochs of {n_batches} batches: {epochs * n_batches} optimiser steps"
        f"{floor} (--epochs overrides)"
    )
    return epochs


def _export(learn: Learner, args: argparse.Namespace, lr: float) -> dict[str, Any]:
    info = {"arch": getattr(learn, "arch", None), "epochs": args.epochs, "lr": lr, "bs": args.bs, "seed": args.seed}
    if getattr(args, "lr_find", None):
        info["lr_find"] = args.lr_find
    bundle = export_learner(learn, args.out, args.name, training_info=info)
    manifest = read_manifest(bundle)
    print(parity_line(manifest))
    reports = REPORTS_DIR / args.name / str(manifest.version)
    result: dict[str, Any] = {"bundle": str(bundle), "metrics": manifest.metrics, "parity": manifest.parity}
    if learn.recorder.losses:
        learn.recorder.plot_loss(reports / "loss.png")
        result["loss_plot"] = str(reports / "loss.png")
    if getattr(args, "sweep", None) is not None:
        args.sweep.plot(reports / "lr_find.png")
        result["lr_find_plot"] = str(reports / "lr_find.png")
    if args.interpret and learn.dls.task == "classification":
        result["reports"] = write_interpretation(learn, reports)
    return result


def parity_line(manifest: Any) -> str:
    p = manifest.parity
    return (
        f"parity: ONNX Runtime vs PyTorch max |diff| {p.max_abs_diff:.2g}, max relative {p.max_rel_diff or 0:.2g} "
        f"(allowed rtol {p.rtol:g} + atol {p.tolerance:g}; batch sizes {p.batch_sizes})"
    )


def train_image(args: argparse.Namespace) -> dict[str, Any]:
    learn = make_image_learner(args)
    lr = fit_learner(learn, args, pretrained=bool(pretrained_of(args)))
    return _export(learn, args, lr)


def train_tabular(args: argparse.Namespace) -> dict[str, Any]:
    learn = make_tabular_learner(args)
    lr = fit_learner(learn, args, pretrained=False)
    return _export(learn, args, lr)


def _sweep_info(learn: Learner) -> dict[str, Any]:
    report = learn.recorder.sweep
    return {
        "steps": report.steps,
        "planned": report.planned,
        "seconds": round(report.seconds, 2),
        "diverged": report.diverged,
    }


def lr_find(args: argparse.Namespace) -> dict[str, Any]:
    learn = make_image_learner(args) if args.kind == "image" else make_tabular_learner(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or REPORTS_DIR / "lr_find" / f"{Path(args.data).stem or 'data'}-{stamp}.png"
    suggestion = _find_lr(learn, save_path=out)
    return {
        "chosen": suggestion.chosen,
        "rule": DEFAULT_LR_RULE,
        **suggestion._asdict(),
        "plot": str(out),
        "cost": _sweep_info(learn),
    }


def examples(args: argparse.Namespace) -> dict[str, Any]:
    names = args.names or list(EXAMPLES)
    results = {}
    for name in names:
        result = build_example(name, args.out, args.data_dir)
        print(f"{name}: {result.bundle} {result.metrics} (target: {result.target})", file=sys.stderr, flush=True)
        results[name] = {"bundle": str(result.bundle), "metrics": result.metrics, "target": result.target}
    return results
