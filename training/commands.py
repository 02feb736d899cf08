"""What each ``python -m training`` sub-command does, given its parsed arguments."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from bundle import reference as ref
from bundle.manifest import read_manifest, read_reference
from training.builders import tabular_learner, vision_learner
from training.data.augment import Augment, aug_transforms
from training.data.core import DataError, read_csv
from training.data.images import IMAGE_EXTENSIONS, ImageDataLoaders
from training.data.tabular import TabularDataLoaders, class_targets
from training.defaults import IMAGE_EPOCHS, MIN_IMAGE_STEPS, MIN_STEPS, TABULAR_EPOCHS, default_epochs
from training.examples import EXAMPLES, build_example
from training.export import export_learner, load_learner
from training.finetune import finetune_data, finetune_learner
from training.interpret import ClassificationInterpretation
from training.learner import Learner, set_seed
from training.lr_find import DEFAULT_LR_RULE, SuggestedLRs
from training.models.vision import resolve_pretrained

REPORTS_DIR = Path("reports")


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


def write_interpretation(learn: Learner, out: Path, dl: DataLoader | None = None, k: int = 9) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    interp = ClassificationInterpretation.from_learner(learn, dl)
    interp.plot_confusion_matrix(out / "confusion_matrix.png")
    interp.plot_top_losses(k, out / "top_losses.png")
    matrix = interp.confusion_matrix()
    return {
        "accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)),
        "items": int(matrix.sum()),
        "most_confused": interp.most_confused(min_val=1)[:10],
        "confusion_matrix": str(out / "confusion_matrix.png"),
        "top_losses": str(out / "top_losses.png"),
    }


def _labelled_image_files(folder: Path) -> tuple[list[Path], list[str]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"{folder}: no image files found")
    return files, [p.parent.name for p in files]


def _encoded_loader(learn: Learner, data: Path, bs: int = 64) -> DataLoader:
    """New labelled data encoded with the exported learner's own preprocessing."""
    dls = learn.dls
    if dls.input_kind == "image":
        files, labels = _labelled_image_files(data)
        unknown = sorted(set(labels) - set(dls.vocab))
        if unknown:
            raise DataError(f"{data}: labels the model does not know: {', '.join(unknown[:10])}")
        inputs = dls.encode_items(files)
        targets = torch.tensor([dls.vocab.index(label) for label in labels])
        return DataLoader(TensorDataset(*inputs, targets), batch_size=bs)
    target = dls.target_names[0]
    df = read_csv(data)
    if target not in df.columns:
        raise DataError(f"{data}: no target column {target!r}")
    df = df.dropna(subset=[target])
    inputs = dls.encode_items(df)
    if dls.task == "classification":
        targets, _ = class_targets(df[target], target, dls.vocab)  # the loader's own label rule
    else:
        values = df[target].to_numpy(dtype=np.float32)
        targets = torch.tensor(np.log(values) if dls.log_target else values).reshape(len(df), -1)
    return DataLoader(TensorDataset(*inputs, targets), batch_size=bs)


def interpret(args: argparse.Namespace) -> dict[str, Any]:
    learn = load_learner(args.bundle)
    if learn.dls.task != "classification":
        raise DataError("interpretation (confusion matrix, top losses) is for single-label classification models")
    manifest = read_manifest(args.bundle)
    # a folder per run: the training-time confusion matrix and top losses beside it stay as they were
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or REPORTS_DIR / manifest.name / str(manifest.version) / "interpret" / f"{args.data.stem}-{stamp}"
    result = write_interpretation(learn, out, _encoded_loader(learn, args.data), k=args.k)
    print(
        f"{manifest.name} v{manifest.version} on {args.data}: accuracy {result['accuracy']:.4f} "
        f"(error_rate {1 - result['accuracy']:.4f}) over {result['items']} labelled items; reports in {out}"
    )
    return result


def finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Yesterday's model, today's data: keep its preprocessing and vocabulary, train on, export a new version.

    Trains as :data:`training.finetune.FINETUNE_DEFAULTS` says, with any of
    --lr, --epochs, --freeze-epochs given overriding it: the same code path a
    scheduled fine-tune job calls.
    """
    manifest = read_manifest(args.source)
    learn = load_learner(args.source)
    set_seed(args.seed)
    dls = finetune_data(learn, args.data, valid_pct=args.valid_pct, seed=args.seed, bs=args.bs)
    learn.to_device(args.device)
    report = finetune_learner(learn, dls, lr=args.lr, epochs=args.epochs, freeze_epochs=args.freeze_epochs)
    print(
        f"fine-tuned {report.epochs} epochs at lr {report.lr:.2e} ({report.lr_source}); "
        f"on the new validation rows: {report.before} -> {report.after}"
    )
    info = dict(
        manifest.training,
        finetuned_from=manifest.version,
        epochs=report.epochs,
        lr=report.lr,
        freeze_epochs=report.freeze_epochs,
        lr_source=report.lr_source,
    )
    bundle = export_learner(learn, args.out or args.source.parent.parent, manifest.name, training_info=info)
    new = read_manifest(bundle)
    print(parity_line(new))
    return {
        "bundle": str(bundle),
        "from_version": manifest.version,
        "metrics": new.metrics,
        "on_the_new_validation_rows": {"before": report.before, "after": new.metrics},
        "old_version_metrics_on_its_own_validation_rows": manifest.metrics,
        "training": {
            "epochs": report.epochs,
            "lr": report.lr,
            "lr_source": report.lr_source,
            "freeze_epochs": report.freeze_epochs,
        },
        "parity": new.parity,
    }


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
        files, _ = _labelled_image_files(args.data)
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
    """The classifier drift report (``training.drift_report``)."""
    from training.drift_report import drift_report as run

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


def examples(args: argparse.Namespace) -> dict[str, Any]:
    names = args.names or list(EXAMPLES)
    results = {}
    for name in names:
        result = build_example(name, args.out, args.data_dir)
        print(f"{name}: {result.bundle} {result.metrics} (target: {result.target})", file=sys.stderr, flush=True)
        results[name] = {"bundle": str(result.bundle), "metrics": result.metrics, "target": result.target}
    return results
