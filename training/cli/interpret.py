"""``python -m training interpret``: confusion matrix, top losses and most-confused pairs of a bundle on labelled data."""

from __future__ import annotations

import argparse
import time
from typing import Any

from bundle.manifest import read_manifest
from training.data.core import DataError
from training.data.labelled import encoded_loader
from training.defaults import REPORTS_DIR
from training.export import load_learner
from training.interpret import write_interpretation


def interpret(args: argparse.Namespace) -> dict[str, Any]:
    learn = load_learner(args.bundle)
    if learn.dls.task != "classification":
        raise DataError("interpretation (confusion matrix, top losses) is for single-label classification models")
    manifest = read_manifest(args.bundle)
    # a folder per run: the training-time confusion matrix and top losses beside it stay as they were
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or REPORTS_DIR / manifest.name / str(manifest.version) / "interpret" / f"{args.data.stem}-{stamp}"
    result = write_interpretation(learn, out, encoded_loader(learn, args.data), k=args.k)
    print(
        f"{manifest.name} v{manifest.version} on {args.data}: accuracy {result['accuracy']:.4f} "
        f"(error_rate {1 - result['accuracy']:.4f}) over {result['items']} labelled items; reports in {out}"
    )
    return result
