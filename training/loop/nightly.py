"""``python -m training nightly``: yesterday's model, today's answers, tomorrow's shadow candidate.

One run, for one model and one day:

1. asks the service which version serves as stable, and starts from it;
2. builds the day's dataset from the log (people's and outside systems' answers only, by default);
3. fine-tunes a copy of stable on all but a held-out share of it;
4. scores stable and the new model on the held-out share (and per region) and on the original
   validation set, and gates: no export when the new model forgot (original validation worse by more
   than ``max_forgetting``) or is not better than stable on the held-out share;
5. exports the next version with its lineage (``manifest.training.lineage``), written beside the
   repository's versions and renamed into place, so a watching service never sees half a version;
6. hands it to the service as a shadow candidate with the policy file's template;
7. writes the report (``<repo>/<model>/nightly/<day>/report.json`` and ``.html``).

A run holds a lock for the model; a second run for a day that already ended in an export or a
refusal says so and exits 0 (``--force`` runs again).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bundle.manifest import read_manifest
from training.data.core import DataError
from training.export import export_learner, load_learner
from training.finetune import FINETUNE_DEFAULTS, FinetuneDefaults, finetune_learner
from training.learner import set_seed
from training.loop.dataset import iso, write_dataset
from training.loop.evaluate import held_out, labelled_loader, loop_dataloaders, scores, subset_loader
from training.loop.gates import forgetting_gate, improvement_gate
from training.loop.labelled import HUMAN_SOURCES, read_labelled
from training.loop.lock import exclusive
from training.loop.report import read_report, write_report

# The nightly trains as `finetune --from` does (docs/nightly.md: measured to move a model on a day's data).
NIGHTLY_DEFAULTS: FinetuneDefaults = FINETUNE_DEFAULTS
DONE = ("exported", "refused")  # outcomes that settle a day


class NightlyError(ValueError):
    """The run could not do its work; the message says what and which flag to look at."""


class Refused(NightlyError):
    """A gate refused the new model: nothing was exported."""


@dataclass
class NightlyOptions:
    model: str
    repo: Path
    log: str
    service: str
    token: str | None = None
    since_s: float = 86_400.0
    until: float | None = None
    day: str | None = None
    template: str | None = None
    max_forgetting: float = 0.02
    holdout: float = 0.2
    valid: Path | None = None
    region: str | None = None
    sources: tuple[str, ...] = HUMAN_SOURCES
    from_newest: bool = False
    min_items: int = 20
    lr: float | None = None
    epochs: int | None = None
    bs: int = 64
    seed: int = 42
    device: str = "auto"
    workdir: Path | None = None
    force: bool = False
    load_timeout_s: float = 300.0
    warnings: list[str] = field(default_factory=list)


def run_nightly(o: NightlyOptions) -> dict[str, Any]:
    started = time.perf_counter()
    until = o.until if o.until is not None else time.time()
    day = o.day or datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d")
    if not (o.repo / o.model).is_dir():
        raise NightlyError(f"--repo: {o.repo} has no model {o.model!r} (no folder {o.repo / o.model})")
    workdir = o.workdir or o.repo / o.model / "nightly"
    folder = workdir / day
    with exclusive(workdir / ".lock", f"a nightly run for {o.model}"):
        previous = read_report(folder)
        if previous and previous.get("outcome") in DONE and not o.force:
            if previous.get("outcome") == "exported" and (previous.get("rollout") or {}).get("error"):
                return _hand_over_again(o, previous, folder)
            return {
                "already_done": True,
                "day": day,
                "outcome": previous["outcome"],
                "new_version": previous.get("new_version"),
                "report": str(folder / "report.html"),
                "message": f"nightly for {o.model} already ran for {day} ({previous['outcome']}: "
                f"{previous.get('message')}); nothing to do (--force runs it again)",
            }
        report: dict[str, Any] = {
            "model": o.model,
            "day": day,
            "outcome": "failed",
            "new_version": None,
            "warnings": o.warnings,
        }
        try:
            return _run(o, report, folder, until - o.since_s, until)
        except Exception as exc:
            report.setdefault("message", str(exc))
            raise
        finally:
            report["seconds"] = round(time.perf_counter() - started, 2)
            write_report(folder, report)


def _run(o: NightlyOptions, report: dict[str, Any], folder: Path, since: float, until: float) -> dict:
    from bundle.rollout_client import RolloutClient, RolloutError

    client = RolloutClient(o.service, o.token, actor="nightly")
    stable = _stable_version(o, client, RolloutError)
    bundle = o.repo / o.model / str(stable)
    manifest = read_manifest(bundle)
    report["stable_version"] = stable
    lineage_before = manifest.training.get("lineage") or {}
    valid = o.valid or (
        Path(lineage_before["original_validation"]) if lineage_before.get("original_validation") else None
    )
    if valid is None:
        raise NightlyError(
            "--valid: the original validation set (an image folder with a folder per class, or a "
            "CSV with the target column) is needed for the forgetting gate"
        )

    message = f"reading answers for {o.model} between {iso(since)} and {iso(until)} from the log"
    print(message, flush=True)
    items = read_labelled(o.log, o.model, o.since_s, until, o.region, o.sources)
    dataset = write_dataset(items, manifest, folder / "data", (since, until), o.sources, o.region)
    report["data"] = dataset.summary
    if len(dataset.items) < o.min_items:
        raise NightlyError(
            f"nothing to learn from: {len(dataset.items)} labelled item(s) for {o.model} in the "
            f"window, fewer than --min-items {o.min_items}"
        )
    if "predictions" in o.sources:
        o.warnings.append(
            "--sources includes predictions: the model's own answers are training data (a feedback "
            "loop: it learns what it already says)"
        )
    holdout = held_out(dataset, o.holdout)
    report["held_out"] = sum(holdout)
    print(
        f"{len(dataset.items)} labelled items ({dataset.summary['per_source']}); {sum(holdout)} held out; "
        f"starting from v{stable}",
        flush=True,
    )

    stable_learn = load_learner(bundle)
    new_learn = load_learner(bundle)
    set_seed(o.seed)
    dls = loop_dataloaders(new_learn, dataset, holdout, folder, o.bs)
    new_learn.to_device(o.device)
    tuned = finetune_learner(new_learn, dls, NIGHTLY_DEFAULTS, lr=o.lr, epochs=o.epochs)
    new_learn.to_cpu()
    report["training"] = {
        "epochs": tuned.epochs,
        "lr": tuned.lr,
        "lr_source": tuned.lr_source,
        "items": len(holdout) - sum(holdout),
    }

    slices = _score_slices(stable_learn, new_learn, dataset, holdout, valid)
    report["metrics"] = slices
    report["label_distribution"] = _label_distribution(dataset, valid)
    gates = [
        forgetting_gate(
            slices["original validation"]["stable"], slices["original validation"]["new"], o.max_forgetting
        ),
        improvement_gate(slices["new held-out"]["stable"], slices["new held-out"]["new"]),
    ]
    report["gates"] = [g.to_dict() for g in gates]
    failed = [g for g in gates if not g.passed]
    if failed:
        report["outcome"] = "refused"
        report["message"] = "refused, nothing exported: " + "; ".join(g.reason for g in failed)
        raise Refused(f"{report['message']} (report: {folder / 'report.html'})")

    lineage = {
        "parent_version": stable,
        "day": report["day"],
        "data_window": {"since": iso(since), "until": iso(until), "of": "when the answer arrived"},
        "region": o.region,
        "sources": list(o.sources),
        "items": len(dataset.items),
        "trained_on": len(holdout) - sum(holdout),
        "held_out": sum(holdout),
        "per_class": dataset.summary["per_class"],
        "per_source": dataset.summary["per_source"],
        "chosen_by_model_share": dataset.summary["chosen_by_model"]["share"],
        "served_by_versions": dataset.summary["served_by_versions"],
        "gates": report["gates"],
        "original_validation": str(valid),
        "report": _relative(folder / "report.html", o.repo / o.model),
    }
    info = dict(
        manifest.training,
        finetuned_from=stable,
        epochs=tuned.epochs,
        lr=tuned.lr,
        lr_source=tuned.lr_source,
        lineage=lineage,
    )
    new_bundle = export_learner(new_learn, o.repo, o.model, training_info=info)
    version = int(new_bundle.name)
    report.update(outcome="exported", new_version=version, bundle=str(new_bundle))
    report["message"] = f"v{version} exported from v{stable}: " + "; ".join(g.reason for g in gates)
    print(report["message"], flush=True)
    report["rollout"] = _hand_over(o, client, version, report["day"], RolloutError)
    return _result(report, folder)


def _stable_version(o: NightlyOptions, client: Any, rollout_error: type[Exception]) -> int:
    try:
        stable = client.stable_version(o.model)
    except rollout_error as exc:
        raise NightlyError(f"--service: cannot ask {o.service} which version of {o.model} is stable: {exc}") from None
    if stable is None:
        if not o.from_newest:
            raise NightlyError(
                f"--service: {o.service} serves no stable version of {o.model} (--from-newest starts "
                f"from the newest version in --repo instead)"
            )
        versions = [int(p.name) for p in (o.repo / o.model).glob("*") if p.name.isdigit()]
        if not versions:
            raise NightlyError(f"--repo: {o.repo / o.model} holds no version of {o.model}")
        return max(versions)
    return int(stable)


def _score_slices(stable: Any, new: Any, dataset: Any, holdout: list[bool], valid: Path) -> dict[str, dict[str, Any]]:
    """Each model's metrics on the held-out share, each region's part of it, and the original validation set."""
    try:
        original = (labelled_loader(stable, valid), labelled_loader(new, valid))
    except (DataError, FileNotFoundError) as exc:
        raise NightlyError(f"--valid: {exc}") from exc
    slices = {
        "new held-out": {
            "items": sum(holdout),
            "stable": scores(stable, subset_loader(stable, dataset, holdout)),
            "new": scores(new, subset_loader(new, dataset, holdout)),
        },
        "original validation": {
            "items": len(original[0].dataset),
            "stable": scores(stable, original[0]),
            "new": scores(new, original[1]),
        },
    }
    regions = sorted({i.region for i in dataset.items})
    if len(regions) > 1:
        for region in regions:
            keep = [h and i.region == region for h, i in zip(holdout, dataset.items)]
            if any(keep):
                slices[f"new held-out, region {region}"] = {
                    "items": sum(keep),
                    "stable": scores(stable, subset_loader(stable, dataset, keep)),
                    "new": scores(new, subset_loader(new, dataset, keep)),
                }
    chosen = [h and i.chosen_by_model for h, i in zip(holdout, dataset.items)]
    if any(chosen) and not all(c == h for c, h in zip(chosen, holdout)):
        slices["new held-out, chosen by the model"] = {
            "items": sum(chosen),
            "stable": scores(stable, subset_loader(stable, dataset, chosen)),
            "new": scores(new, subset_loader(new, dataset, chosen)),
        }
    return slices


def _label_distribution(dataset: Any, valid: Path) -> dict[str, Any]:
    new = Counter(str(i.answer) for i in dataset.items)
    original: Counter[str] = Counter()
    if valid.is_dir():
        original = Counter(p.parent.name for p in valid.rglob("*") if p.is_file() and p.parent != valid)
    return {"new": _shares(new), "original": _shares(original), "original_is": "the original validation set"}


def _shares(counts: Counter[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: round(v / total, 4) for k, v in sorted(counts.items())} if total else {}


def _hand_over(o: NightlyOptions, client: Any, version: int, day: str, rollout_error: type[Exception]) -> dict:
    reason = f"nightly {day}: fine-tuned on the day's answers; gates passed"
    deadline = time.monotonic() + o.load_timeout_s
    try:
        while True:  # the service loads and warms a new version a moment after it appears in the repository
            try:
                client.shadow(o.model, str(version), template=o.template, reason=reason)
                break
            except rollout_error as exc:
                if not (exc.status == 422 and "not loaded" in exc.message) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        state = client.status(o.model)
    except rollout_error as exc:
        return {
            "error": f"v{version} is in the repository but the service did not take it as a shadow candidate: "
            f"{exc} (a rerun today retries)"
        }
    return {
        "stage": state.get("stage"),
        "stable": state.get("stable"),
        "candidate": state.get("candidate"),
        "template": o.template,
        "state": state,
    }


def _hand_over_again(o: NightlyOptions, report: dict[str, Any], folder: Path) -> dict[str, Any]:
    from bundle.rollout_client import RolloutClient, RolloutError

    client = RolloutClient(o.service, o.token, actor="nightly")
    report["rollout"] = _hand_over(o, client, int(report["new_version"]), report["day"], RolloutError)
    write_report(folder, report)
    return _result(report, folder)


def _result(report: dict[str, Any], folder: Path) -> dict[str, Any]:
    rollout = report.get("rollout") or {}
    if rollout.get("error"):
        raise NightlyError(f"{rollout['error']} (report: {folder / 'report.html'})")
    return {
        "outcome": report["outcome"],
        "day": report["day"],
        "stable_version": report.get("stable_version"),
        "new_version": report.get("new_version"),
        "bundle": report.get("bundle"),
        "gates": report.get("gates"),
        "rollout": {k: v for k, v in rollout.items() if k != "state"},
        "report": str(folder / "report.html"),
        "report_json": str(folder / "report.json"),
    }


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())
