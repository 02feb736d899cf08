"""``python -m training``: train, export, fine-tune, interpret, find a learning rate, build the examples.

The application around the library: ``parser`` (the sub-commands and their
options), one module per family of sub-commands (``train``, ``finetune``,
``interpret``, ``drift``), the example models (``examples``) and the offline
drift report (``drift_report``). Each command's result is printed as JSON on
stdout; progress and tables go to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from training.cli.parser import build_parser
from training.data.core import DataError


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from training.cli import drift, finetune, interpret, train
    from training.export import ExportError
    from training.loop import cli as loop_cli

    handler = {
        "image": train.train_image,
        "tabular": train.train_tabular,
        "lr-find": train.lr_find,
        "finetune": finetune.finetune,
        "interpret": interpret.interpret,
        "drift": drift.drift,
        "drift-report": drift.drift_report,
        "examples": train.examples,
        **loop_cli.HANDLERS,
    }[args.command]
    started = time.perf_counter()
    try:
        # progress and epoch tables go to stderr so that stdout is the JSON result alone
        with contextlib.redirect_stdout(sys.stderr):
            result: Any = handler(args)
    except (DataError, ExportError, FileNotFoundError, ValueError) as exc:
        # errors that suggest an option carry its command-line spelling (--no-pretrained, not pretrained=False)
        print(f"error: {getattr(exc, 'cli_message', None) or exc}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    print(f"done in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0
