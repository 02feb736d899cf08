"""What each ``python -m training`` sub-command does, given its parsed arguments."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from bundle import reference as ref
from bundle.manifest import read_manifest, read_reference
from training.builders import tabular_learner, vision_learner
from training.data.augment import aug_transforms
from training.data.core import DataError, read_csv
from training.data.images import IMAGE_EXTENSIONS, ImageDataLoaders
from training.data.tabular import TabularDataLoaders, class_targets
from training.examples import EXAMPLES, build_example
from training.export import export_learner, load_learner
from training.interpret import ClassificationInterpretation
from training.learner import Learner, set_seed

FIT_NOTE = "lr_find's valley"
REPORTS_DIR = Path("reports")


def _col(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.isdigit() else value


def image_dls(args: argparse.Namespace) -> ImageDataLoaders:
    aug = None if args.no_aug else aug_transforms(do_flip=not args.no_flip, min_scale=args.min_scale)
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


def make_image_learner(args: argparse.Namespace) -> Learner:
    set_seed(args.seed)
    dls = image_dls(args)
    pretrained = getattr(args, "pretrained", None)
    return vision_learner(dls, arch=getattr(args, "arch", "resnet34"), pretrained=pretrained, **_learner_kwargs(args))


def make_tabular_learner(args: argparse.Namespace) -> Learner:
    set_seed(args.seed)
    dls = tabular_dls(args)
    layers = [int(v) for v in str(getattr(args, "layers", "200,100")).split(",") if v]
    return tabular_learner(dls, layers=layers, y_range=_y_range(args, dls), **_learner_kwargs(args))


def _fit(learn: Learner, args: argparse.Namespace, pretrained: bool) -> float:
    lr = args.lr
    if lr is None:
        lr = float(learn.lr_find(show_plot=False).valley)
        print(f"learning rate {lr:.2e} ({FIT_NOTE})")
    if pretrained:
        learn.fine_tune(args.epochs, base_lr=lr)
    else:
        learn.fit_one_cycle(args.epochs, lr)
    return lr


def _export(learn: Learner, args: argparse.Namespace, lr: float) -> dict[str, Any]:
    info = {"arch": getattr(learn, "arch", None), "epochs": args.epochs, "lr": lr, "bs": args.bs, "seed": args.seed}
    bundle = export_learner(learn, args.out, args.name, training_info=info)
    manifest = read_manifest(bundle)
    result: dict[str, Any] = {"bundle": str(bundle), "metrics": manifest.metrics, "parity": manifest.parity}
    if args.interpret and learn.dls.task == "classification":
        result["reports"] = write_interpretation(learn, REPORTS_DIR / args.name / str(manifest.version))
    return result


def train_image(args: argparse.Namespace) -> dict[str, Any]:
    learn = make_image_learner(args)
    lr = _fit(learn, args, pretrained=args.pretrained is not None)
    return _export(learn, args, lr)


def train_tabular(args: argparse.Namespace) -> dict[str, Any]:
    learn = make_tabular_learner(args)
    lr = _fit(learn, args, pretrained=False)
    return _export(learn, args, lr)


def lr_find(args: argparse.Namespace) -> dict[str, Any]:
    from training.cli import build_parser

    # reuse the training sub-command's data arguments; --name is not needed for a sweep
    rest = list(args.rest) + ["--name", "lr-find"]
    sub = build_parser().parse_args([args.kind, *rest])
    learn = make_image_learner(sub) if args.kind == "image" else make_tabular_learner(sub)
    out = REPORTS_DIR / "lr_find.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    suggestion = learn.lr_find(save_path=out)
    return {"valley": float(suggestion.valley), "steep": float(suggestion.steep), "plot": str(out)}


def write_interpretation(learn: Learner, out: Path, dl: DataLoader | None = None, k: int = 9) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    interp = ClassificationInterpretation.from_learner(learn, dl)
    interp.plot_confusion_matrix(out / "confusion_matrix.png")
    interp.plot_top_losses(k, out / "top_losses.png")
    return {
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
    out = args.out or REPORTS_DIR / manifest.name / str(manifest.version)
    return write_interpretation(learn, out, _encoded_loader(learn, args.data), k=args.k)


def finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Yesterday's model, today's data: keep its preprocessing and vocabulary, train on, export a new version."""
    manifest = read_manifest(args.source)
    learn = load_learner(args.source)
    set_seed(args.seed)
    old = learn.dls
    if old.input_kind == "image":
        dls = ImageDataLoaders.from_folder(
            args.data,
            valid_pct=args.valid_pct,
            seed=args.seed,
            size=(old.resize_spec.height, old.resize_spec.width),
            method=old.resize_spec.method,
            pad_mode=old.resize_spec.pad_mode,
            aug=getattr(old, "aug", None),
            bs=args.bs,
            vocab=old.vocab,
        )
    else:
        dls = TabularDataLoaders.from_csv(
            args.data,
            y_names=old.target_names,
            y_block={"classification": "category", "regression": "regression"}.get(old.task),
            log_target=old.log_target,
            valid_pct=args.valid_pct,
            seed=args.seed,
            bs=args.bs,
            processor=old.processor,
            vocab=old.vocab,
        )
        dls.y_range = old.y_range
    dls.thresholds = old.thresholds
    learn.dls = dls
    learn.to_device(args.device)
    learn.fit_one_cycle(args.epochs, args.lr)
    info = dict(manifest.training, finetuned_from=manifest.version, epochs=args.epochs, lr=args.lr)
    bundle = export_learner(learn, args.out or args.source.parent.parent, manifest.name, training_info=info)
    new = read_manifest(bundle)
    return {"bundle": str(bundle), "from_version": manifest.version, "metrics": new.metrics}


def drift(args: argparse.Namespace) -> dict[str, Any]:
    """PSI of each feature of new data against the bundle's training-time reference."""
    manifest = read_manifest(args.bundle)
    reference = read_reference(args.bundle, manifest)
    if not reference:
        raise DataError(f"{args.bundle}: this bundle has no reference statistics")
    features = reference["features"]
    if manifest.input_kind == "image":
        files, _ = _labelled_image_files(args.data)
        summaries = _image_summaries(files, manifest)
        columns = {name: summaries[name.split(".", 1)[1]] for name in features if name.split(".", 1)[1] in summaries}
    else:
        df = read_csv(args.data)
        columns = {name: df[name].to_numpy() if name in df.columns else np.full(len(df), np.nan) for name in features}
    scores = {name: round(ref.psi(features[name], values), 4) for name, values in columns.items()}
    out = args.out or REPORTS_DIR / manifest.name / str(manifest.version)
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift.json").write_text(json.dumps(scores, indent=2))
    _plot_drift(scores, out / "drift.png", f"{manifest.name} v{manifest.version}: PSI against training")
    shifted = sorted((n for n, s in scores.items() if s > 0.25), key=lambda n: -scores[n])
    return {"psi": scores, "shifted (psi > 0.25)": shifted, "report": str(out / "drift.png")}


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

