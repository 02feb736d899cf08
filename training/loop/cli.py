"""The loop's sub-commands of ``python -m training``: ``dataset`` and ``nightly``.

The training CLI calls :func:`add_commands` with its sub-parsers and looks a
parsed command up in :data:`HANDLERS`; a handler returns the JSON result, or
raises a ``ValueError`` whose message the CLI prints before exiting 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bundle.durations import parse_duration
from training.loop.labelled import HUMAN_SOURCES, SOURCES, read_labelled


def _sources(text: str) -> tuple[str, ...]:
    aliases = {"api": "feedback"}  # the log's name for answers sent to the feedback API
    chosen = tuple(aliases.get(s.strip(), s.strip()) for s in text.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SOURCES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(SOURCES)}, got {text!r}")
    return chosen


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def _margin(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _when(text: str) -> float:
    """An ISO date or time (UTC unless it says otherwise), or epoch seconds."""
    from datetime import UTC, datetime

    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date or time such as 2026-12-06 or 2026-12-06T00:00Z, got {text!r}"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _window_args(p: argparse.ArgumentParser) -> None:
    state_url = os.environ.get("SERVING_STATE_URL") or None
    p.add_argument(
        "--log",
        required=state_url is None,
        default=state_url,
        help="prediction log: a SQLite file or a postgresql:// URL (default $SERVING_STATE_URL)",
    )
    p.add_argument("--model", required=True, help="model name")
    p.add_argument(
        "--since",
        type=_duration,
        default=86_400.0,
        help="answers received this recently: 30m, 12h, 1d (default), 2w; before --until",
    )
    p.add_argument(
        "--until",
        type=_when,
        default=None,
        help="end of the window (default now): 2026-12-06, 2026-12-06T00:00Z or epoch seconds",
    )
    p.add_argument("--region", help="only items served in this region")
    p.add_argument(
        "--sources",
        type=_sources,
        default=HUMAN_SOURCES,
        help="where labels may come from: review "
        "(the review queue), feedback (the feedback API), predictions (the model's own answers to "
        "unanswered items: a feedback loop, never by default); default review,feedback",
    )


def add_commands(sub: Any) -> None:
    """Add ``dataset`` and ``nightly`` to the training CLI's sub-parsers."""
    p = sub.add_parser("dataset", help="write the labelled items of the prediction log as fine-tuning data")
    _window_args(p)
    p.add_argument(
        "--repo",
        type=Path,
        default=Path("models"),
        help="model repository, for the model's classes and columns (default models/)",
    )
    p.add_argument("--version", type=int, help="whose manifest to read (default: the newest in --repo)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write (class folders or data.csv, items.csv, summary.json); replaced if it exists",
    )

    p = sub.add_parser("nightly", help="fine-tune stable on the day's answers, gate, export, hand over in shadow")
    _window_args(p)
    p.add_argument("--repo", type=Path, required=True, help="model repository the service watches")
    p.add_argument("--service", default=os.environ.get("SERVING_URL"), help="the service's URL (default $SERVING_URL)")
    p.add_argument(
        "--token", default=os.environ.get("SERVING_ADMIN_TOKEN"), help="admin token (default $SERVING_ADMIN_TOKEN)"
    )
    p.add_argument(
        "--valid",
        type=Path,
        help="the original validation set (image folder with a folder per class, "
        "or CSV with the target column), for the forgetting gate; default: the one the stable "
        "version's lineage names",
    )
    p.add_argument("--template", help="rollout plan template in the policy file (shadow, then the canary steps)")
    p.add_argument(
        "--max-forgetting",
        type=_margin,
        default=0.02,
        help="how much worse on the original "
        "validation set the new model may be: error-rate points for classifiers, a share of stable's "
        "RMSE for regression (default 0.02)",
    )
    p.add_argument(
        "--holdout",
        type=_share,
        default=0.2,
        help="share of the new labelled items held out to compare stable and new (default 0.2)",
    )
    p.add_argument(
        "--min-items", type=int, default=20, help="fewer labelled items than this is nothing to learn from (default 20)"
    )
    p.add_argument(
        "--from-newest",
        action="store_true",
        help="when the service serves no stable version, start from the newest in --repo",
    )
    p.add_argument("--day", help="the day this run is for, its idempotence key (default: --until's UTC date)")
    p.add_argument("--force", action="store_true", help="run again for a day that already exported or refused")
    p.add_argument("--workdir", type=Path, help="reports, datasets and the lock (default <repo>/<model>/nightly)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: lr_find's rule on the day's data)")
    p.add_argument("--epochs", type=int, help="epochs (default: 3, raised to make 100 optimiser steps)")
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--load-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the service to load the new version before handing it over (default 300)",
    )


def dataset(args: argparse.Namespace) -> dict[str, Any]:
    from bundle.manifest import read_manifest
    from training.loop.dataset import write_dataset

    until = args.until if args.until is not None else time.time()
    since = until - args.since
    bundle = _bundle(args.repo, args.model, args.version)
    manifest = read_manifest(bundle)
    items = read_labelled(args.log, args.model, args.since, until, args.region, args.sources)
    written = write_dataset(items, manifest, args.out, (since, until), args.sources, args.region)
    summary = written.summary
    print(
        f"{summary['items']} labelled items of {args.model} written to {args.out} "
        f"(per source {summary['per_source']}, chosen by the model {summary['chosen_by_model']['share']:.0%})",
        file=sys.stderr,
    )
    return summary


def nightly(args: argparse.Namespace) -> dict[str, Any]:
    from training.loop.nightly import NightlyOptions, run_nightly

    if not args.service:
        raise ValueError("--service: the service's URL is needed (or set SERVING_URL)")
    options = NightlyOptions(
        model=args.model,
        repo=args.repo,
        log=args.log,
        service=args.service,
        token=args.token,
        since_s=args.since,
        until=args.until,
        day=args.day,
        template=args.template,
        max_forgetting=args.max_forgetting,
        holdout=args.holdout,
        valid=args.valid,
        region=args.region,
        sources=args.sources,
        from_newest=args.from_newest,
        min_items=args.min_items,
        lr=args.lr,
        epochs=args.epochs,
        bs=args.bs,
        seed=args.seed,
        device=args.device,
        workdir=args.workdir,
        force=args.force,
        load_timeout_s=args.load_timeout,
    )
    result = run_nightly(options)
    if result.get("already_done"):
        print(result["message"], file=sys.stderr)
    return result


def _bundle(repo: Path, model: str, version: int | None) -> Path:
    folder = repo / model
    if version is None:
        versions = [int(p.name) for p in folder.glob("*") if p.name.isdigit() and (p / "manifest.json").is_file()]
        if not versions:
            raise FileNotFoundError(f"--repo: {folder} holds no version of {model}")
        version = max(versions)
    return folder / str(version)


HANDLERS: dict[str, Callable[[argparse.Namespace], Any]] = {"dataset": dataset, "nightly": nightly}
