"""``python -m training finetune --from BUNDLE``: yesterday's model, today's data, the next version."""

from __future__ import annotations

import argparse
from typing import Any

from bundle.manifest import read_manifest
from training.cli.train import parity_line
from training.export import export_learner, load_learner
from training.finetune import finetune_data, finetune_learner
from training.learner import set_seed


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
