"""Signals an operator can trust (issue 27): every figure of its checks, printed beside its target.

    python -m loadtests.signals                               # everything; about 15 minutes on two cores
    python -m loadtests.signals --models digits --checks drift,shift
    python -m loadtests.signals --work /tmp/signals           # keep the trained bundles for the next run

Models (``loadtests.signal_data``): the digits example's recipe, a from-scratch ``small_resnet`` on bright
shapes on dark noisy backgrounds (64 px), the diamonds example's recipe (tabular; regression) and the penguins
example's (tabular; out-of-domain flags only), each trained on part of
its data; the rest is held out, in-domain traffic the model never saw. Everything goes through the real
service (Starlette's TestClient around ``service.app``, ONNX Runtime, the monitor's worker), with the default
drift window (1,000 items) and minimum (200), the default drift lines (warn 0.1, drift 0.2) and the bundles'
default out-of-domain score and false-alarm rate (0.01).

Checks:

* ``drift``: in-domain traffic, windows of 1,000 items drawn with replacement from the held-out items: the
  share of windows whose verdict is ``ok``, per feature (input features and the prediction features), over
  ``--windows`` (50) windows, each the service's whole window (disjoint);
* ``shift``: one window with one feature shifted: each continuous feature by 0.5 of its training standard
  deviation (tabular), every pixel times 0.7 (images): that feature's verdict, and the other features';
* ``ood``: the share of held-out items flagged (target: at most twice the rate), and of uniform noise,
  photographs (scikit-image's samples) at the model's input size, as they are and at other sizes, and
  inverted images (targets: at least 0.9); for classifiers the same on the model exported with the energy
  score (v2), for comparison; for tables, rows drawn uniformly within each column's training range;
* ``guardrail``: a canary whose candidate is the same bundle as stable, under in-domain traffic for
  ``--windows`` drift windows of the candidate, with ``max_drift: 0.2``: never rolled back; then the shifted
  traffic: rolled back for drift;
* ``old``: the bundles in ``models/`` (built before this change) copied and served: every signal answers;
* ``cost``: the digits model exported twice (energy, Mahalanobis), served by ``python -m service`` with
  monitoring on: requests per second at 32 clients and one client's p50, alternating slices; and the graph's
  run alone per batch size.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtests import signal_data as data

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("digits", "shapes", "diamonds", "penguins")
CHECKS = ("drift", "shift", "ood", "guardrail", "old", "cost")
RATE = 0.01


@dataclass
class Figure:
    model: str
    check: str
    figure: str
    target: str
    met: bool | None  # None: reported, no target


@dataclass
class Subject:
    """One model under test: its bundle folder, and the traffic it never saw."""

    name: str
    repo: Path
    kind: str  # image | tabular
    held_out: Any  # a Split (images) or a DataFrame (rows)
    size: int = 0  # the model's input side (images)
    encoded: list[bytes] = field(default_factory=list)  # the held-out images as PNG
    versions: tuple[int, ...] = (1,)  # v1: the default export; v2 (classifiers): the same model with energy

    def items(self) -> int:
        return len(self.encoded) if self.kind == "image" else len(self.held_out)


FIGURES: list[Figure] = []


def report(model: str, check: str, figure: str, target: str, met: bool | None) -> None:
    FIGURES.append(Figure(model, check, figure, target, met))
    mark = "" if met is None else ("  met" if met else "  NOT MET")
    print(f"  {model:9s} {check:34s} {figure:44s} {target}{mark}", flush=True)


# -- building the models ------------------------------------------------------------------------------


def build(name: str, work: Path) -> Subject:
    """Train and export (or reuse from ``work``) the bundle of ``name``; its held-out traffic."""
    repo = work / f"{name}-repo"
    folder = repo / name / "1"
    started = time.perf_counter()
    if name == "digits":
        model_split, held = data.digits_split(seed=0)
        if not folder.exists():
            _export_both(data.train_digits(model_split), repo, name)
        subject = Subject(name, repo, "image", held, 28, [data.png(x) for x in held.items], (1, 2))
    elif name == "shapes":
        held = data.night_shapes(
            5000, seed=1
        )  # generated: enough that windows drawn from it carry no sample error of its own
        if not folder.exists():
            _export_both(data.train_shapes(data.night_shapes(900, seed=0)), repo, name)
        subject = Subject(name, repo, "image", held, 64, [data.png(x) for x in held.items], (1, 2))
    elif name == "penguins":
        model_rows, held_rows = data.penguins_split()
        if not folder.exists():
            _export_both(data.train_penguins(model_rows), repo, name)
        subject = Subject(name, repo, "tabular", held_rows.drop(columns=["species"]), versions=(1, 2))
    else:
        model_rows, held_rows = data.diamonds_split()
        if not folder.exists():
            data.export_to(data.train_diamonds(model_rows), repo, name)
        subject = Subject(name, repo, "tabular", held_rows.drop(columns=["price"]))
    manifest = json.loads((folder / "manifest.json").read_text())
    print(
        f"{name}: bundle ready in {time.perf_counter() - started:.0f} s; validation {manifest['metrics']}; "
        f"out-of-domain score {(manifest.get('monitoring') or {}).get('ood_score')}; {subject.items()} held out",
        flush=True,
    )
    return subject


def _export_both(learn: Any, repo: Path, name: str) -> None:
    """v1 as export makes it by default (the Mahalanobis score), v2 the same model with the energy score."""
    data.export_to(learn, repo, name, 1)
    data.export_to(learn, repo, name, 2, ood_score="energy")


# -- serving ------------------------------------------------------------------------------------------


@contextmanager
def served(repo: Path, clock: Callable[[], float] | None = None, **overrides: Any) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from service.app import create_app
    from service.settings import ServiceSettings

    values: dict[str, Any] = dict(
        models=repo,
        intra_op_threads=1,
        preprocess_threads=2,
        watch_interval_s=0.0,
        prediction_log=False,
        max_items_per_request=1000,
        max_batch_size=64,
    )
    values.update(overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = TestClient(create_app(ServiceSettings(**values), clock=clock))
    with client:
        yield client


def send(
    client: Any, subject: Subject, picks: Any, items: Any = None, version: int | None = None, key: str | None = None
) -> list[dict[str, Any]]:
    """Predict the held-out items ``picks`` (or ``items``: PNGs, or a frame of rows), in requests of 64 images
    or 500 rows, pinned to ``version`` (else as routed); ``key`` makes each request's X-Request-Key (the
    rollout arm)."""
    path = f"/v1/models/{subject.name}" + (f"/versions/{version}" if version else "") + "/predict"
    predictions: list[dict[str, Any]] = []
    if subject.kind == "image":
        images = items if items is not None else [subject.encoded[i] for i in picks]
        for n, start in enumerate(range(0, len(images), 64)):
            files = [("file", (f"{i}.png", b, "image/png")) for i, b in enumerate(images[start : start + 64])]
            headers = {"X-Request-Key": f"{key}-{n}"} if key else {}
            response = client.post(path, files=files, headers=headers)
            assert response.status_code == 200, response.text
            predictions += response.json()["predictions"]
    else:
        frame = items if items is not None else subject.held_out.iloc[list(picks)]
        rows = json.loads(frame.to_json(orient="records"))
        for n, start in enumerate(range(0, len(rows), 500)):
            headers = {"X-Request-Key": f"{key}-{n}"} if key else {}
            response = client.post(path, json={"rows": rows[start : start + 500]}, headers=headers)
            assert response.status_code == 200, response.text
            predictions += response.json()["predictions"]
    return predictions


def drift_report(client: Any, name: str, version: int = 1) -> dict[str, Any]:
    client.app.state.components.monitor.wait_idle(30)
    (found,) = client.get(f"/v1/models/{name}/drift", params={"version": version}).json()["versions"]
    return found


def verdicts(found: dict[str, Any]) -> dict[str, str]:
    return {row["feature"]: row["verdict"] for row in found["features"] + found["predictions"]}


# -- the checks ---------------------------------------------------------------------------------------


def check_drift(subject: Subject, windows: int) -> None:
    """In-domain windows of the default size: the share of ``ok`` verdicts per feature."""
    counts: dict[str, int] = {}
    worst: dict[str, float] = {}
    started = time.perf_counter()
    with served(subject.repo) as client:
        for picks in data.bootstrap_windows(subject.items(), 1000, windows, seed=7):
            send(client, subject, picks, version=1)
            found = drift_report(client, subject.name)
            assert found["window"]["size"] == 1000, found["window"]
            for row in found["features"] + found["predictions"]:
                counts[row["feature"]] = counts.get(row["feature"], 0) + (row["verdict"] == "ok")
                worst[row["feature"]] = max(worst.get(row["feature"], 0.0), row["psi"] - row["noise_psi"])
    print(f"  ({windows} windows in {time.perf_counter() - started:.0f} s)")
    for feature, ok in counts.items():
        share = ok / windows
        report(
            subject.name,
            f"in-domain ok: {feature}",
            f"{share:.2f} of {windows} windows",
            ">= 0.99 of >= 50",
            share >= 0.99 and windows >= 50,
        )


def shifted_items(subject: Subject, feature: str | None) -> Any:
    """1,000 held-out items with one change: pixels times 0.7 (images), or ``feature`` + 0.5 training sd."""
    picks = data.bootstrap_windows(subject.items(), 1000, 1, seed=11)[0]
    if subject.kind == "image":
        darker = [(subject.held_out.items[i].astype(np.float32) * 0.7).round().astype(np.uint8) for i in picks]
        return [data.png(x) for x in darker]
    reference = json.loads((subject.repo / subject.name / "1" / "reference.json").read_text())["features"]
    frame = subject.held_out.iloc[picks].copy()
    frame[feature] = frame[feature] + 0.5 * reference[feature]["std"]
    return frame


def check_shift(subject: Subject) -> None:
    if subject.kind == "image":
        cases = {"pixels x 0.7": ("image.brightness", None)}
    else:
        cases = {f"{name} + 0.5 sd": (name, name) for name in data.DIAMOND_CONTS}
    with served(subject.repo) as client:
        for label, (expected, column) in cases.items():
            send(client, subject, [], shifted_items(subject, column), version=1)
            found = drift_report(client, subject.name)
            got = verdicts(found)
            psi = {row["feature"]: row["psi"] for row in found["features"]}
            others = {f: v for f, v in got.items() if f != expected and not f.startswith("prediction.")}
            moved = sorted(f for f, v in others.items() if v != "ok")
            report(
                subject.name,
                f"shift {label}: {expected}",
                f"{got[expected]} (PSI {psi[expected]:.3f})",
                "drift in one window",
                got[expected] == "drift",
            )
            if subject.kind == "image":  # scaling every pixel scales the grey level's spread by the same 0.7
                allowed = {"image.contrast"}
                report(
                    subject.name,
                    f"shift {label}: other inputs",
                    ", ".join(f"{f} {got[f]}" for f in moved) or "all ok",
                    "only image.contrast also (x0.7 scales it)",
                    not set(moved) - allowed,
                )
            else:
                report(
                    subject.name,
                    f"shift {label}: other inputs",
                    ", ".join(f"{f} {got[f]}" for f in moved) or "all ok",
                    "no drift elsewhere",
                    all(others[f] != "drift" for f in moved),
                )
            send(client, subject, data.bootstrap_windows(subject.items(), 1000, 1, seed=13)[0], version=1)  # in domain


def check_ood(subject: Subject) -> None:
    """Out-of-domain flags: held-out items (at most twice the rate), and what must be flagged; for classifiers,
    the same cases on v2 (the energy score) for comparison."""
    rng = np.random.default_rng(5)
    if subject.kind == "image":
        size = subject.size
        photos = data.photographs()
        cases = {
            f"uniform noise {size}x{size}": list(rng.integers(0, 256, (200, size, size, 3), dtype=np.uint8)),
            "uniform noise 200x150": list(rng.integers(0, 256, (100, 150, 200, 3), dtype=np.uint8)),
            f"photographs {size}x{size} ({len(photos)})": [data.resized(p, size, size) for p in photos],
            "photographs as they are": photos,
            "photographs 100x75": [data.resized(p, 100, 75) for p in photos],
            "photographs 256x256": [data.resized(p, 256, 256) for p in photos],
            "inverted held-out images": [255 - x for x in subject.held_out.items],
        }
        encoded = {label: [data.png(x) for x in images] for label, images in cases.items()}
    else:
        reference = json.loads((subject.repo / subject.name / "1" / "reference.json").read_text())
        encoded = {"rows uniform within training ranges": data.uniform_rows(reference["features"], 1000)}
    with served(subject.repo) as client:
        for version in subject.versions:
            held = send(client, subject, range(subject.items()), version=version)
            score = drift_report(client, subject.name, version)["ood"]["score"]
            tag = f"v{version} {score or 'input checks'}"
            share = np.mean([p["ood"]["flagged"] for p in held])
            model_share = np.mean(["model_score" in p["ood"]["reasons"] for p in held])
            report(
                subject.name,
                f"ood {tag}: held-out flagged",
                f"{share:.4f} (model_score {model_share:.4f}, {len(held)} items)",
                f"<= {2 * RATE} (2 x rate)",
                share <= 2 * RATE,
            )
            for label, items in encoded.items():
                predictions = send(client, subject, [], items, version=version)
                flagged = np.mean([p["ood"]["flagged"] for p in predictions])
                by_model = np.mean(["model_score" in p["ood"]["reasons"] for p in predictions])
                default = version == 1 and subject.kind == "image"
                report(
                    subject.name,
                    f"ood {tag}: {label}",
                    f"{flagged:.3f} (model_score alone {by_model:.3f})",
                    ">= 0.9" if default else "(comparison)",
                    flagged >= 0.9 if default else None,
                )


GUARDRAIL_POLICY = """
models:
  {name}:
    stable: 1
    candidate: 2
    stage: canary
    steps: [{{regions: {{"*": 50}}}}]
    start: 2020-01-01T00:00:00Z
    guardrails: {{min_requests: 50, max_drift: 0.2}}
"""


def check_guardrail(subject: Subject, windows: int) -> None:
    """A candidate identical to stable, under in-domain traffic for ``windows`` of its drift windows: never
    rolled back; then shifted traffic: rolled back for drift."""
    import service.monitoring.worker as worker

    worker.GAUGE_INTERVAL_S = 0.0  # a reading per batch, so the guardrail judges every window
    work = Path(tempfile.mkdtemp(prefix="signals-guardrail-"))
    shutil.copytree(subject.repo / subject.name / "1", work / "models" / subject.name / "1")
    second = work / "models" / subject.name / "2"
    shutil.copytree(work / "models" / subject.name / "1", second)
    manifest = json.loads((second / "manifest.json").read_text())
    manifest["version"] = 2
    (second / "manifest.json").write_text(json.dumps(manifest))
    (work / "rollout.yaml").write_text(GUARDRAIL_POLICY.format(name=subject.name))

    def state(client: Any) -> dict[str, Any]:
        return client.get("/v1/rollouts").json()["models"][subject.name]

    readings: list[float] = []
    rolled_back_early = None
    started = time.perf_counter()
    with served(work / "models", clock=lambda: 1.9e9, rollout=work / "rollout.yaml", rollout_tick_s=0.02) as client:
        for n, picks in enumerate(data.bootstrap_windows(subject.items(), 2000, windows, seed=21)):
            send(client, subject, picks, key=f"w{n}")  # about 1,000 items to each arm
            client.app.state.components.monitor.wait_idle(30)
            time.sleep(0.1)
            now = state(client)
            value = now["guardrails"]["readings"].get("candidate", {}).get("drift")
            if value is not None:
                readings.append(value)
            if now["stage"] != "canary":
                rolled_back_early = n
                break
        report(
            subject.name,
            "guardrail: in-domain canary",
            f"{len(readings)} windows judged, max reading "
            f"{max(readings, default=float('nan')):.3f}, stage {now['stage']}",
            "never rolled back over >= 50",
            rolled_back_early is None and len(readings) >= 50,
        )
        shifted = shifted_items(subject, "carat" if subject.kind == "tabular" else None)
        send(client, subject, [], shifted, key="shifted")
        send(client, subject, [], shifted, key="shifted-again")
        client.app.state.components.monitor.wait_idle(30)
        deadline = time.monotonic() + 10
        while (now := state(client))["stage"] != "rolled_back" and time.monotonic() < deadline:
            time.sleep(0.05)
        reason = (now.get("last_decisions") or [{}])[0].get("reason", "")
    print(f"  (guardrail run {time.perf_counter() - started:.0f} s)")
    report(
        subject.name,
        "guardrail: shifted canary",
        f"stage {now['stage']}: {reason[:40]}",
        "rolled back for drift",
        now["stage"] == "rolled_back" and reason.startswith("drift"),
    )
    shutil.rmtree(work, ignore_errors=True)


def check_old_bundles() -> None:
    """Bundles written before this change (``models/`` of the main checkout, or this one's) load and serve."""
    sources = [ROOT / "models", Path("/work/main/models")]
    found = next((s for s in sources if any(s.glob("*/1/manifest.json"))), None)
    if found is None:
        report("old", "old bundles serve", "no models/ to copy", "serve", None)
        return
    work = Path(tempfile.mkdtemp(prefix="signals-old-"))
    for name in ("digits", "penguins", "diamonds"):
        if (found / name / "1").exists():
            shutil.copytree(found / name / "1", work / name / "1")
    with served(work) as client:
        for name in sorted(p.name for p in work.iterdir()):
            manifest = json.loads((work / name / "1" / "manifest.json").read_text())
            if manifest["input_kind"] == "image":
                held = data.digits_split(seed=0)[1]
                answers = send(client, Subject(name, work, "image", held), [], [data.png(x) for x in held.items[:300]])
            else:
                frame = pd.read_csv(io.StringIO(_example_rows(name)))
                answers = send(client, Subject(name, work, "tabular", frame), range(len(frame)))
            found_report = drift_report(client, name)
            perf = found_report["performance"]
            report(
                name,
                "old bundle: serves with every signal",
                f"{len(answers)} answered; ood {found_report['ood']['score']}; verdict {found_report['verdict']}; "
                f"estimate {perf['estimated_accuracy_status']}",
                "loads and serves",
                len(answers) > 0,
            )
    shutil.rmtree(work, ignore_errors=True)


def _example_rows(name: str) -> str:
    if name == "penguins":
        from palmerpenguins import load_penguins

        return load_penguins().drop(columns=["species"]).to_csv(index=False)
    return data.diamonds_split()[1].drop(columns=["price"]).head(300).to_csv(index=False)


def check_cost(work: Path, seconds: float, reverse: bool = False) -> None:
    """Energy against Mahalanobis on the digits example: the graph's run alone, then the whole service."""
    import onnx
    import onnxruntime as ort

    from bundle.manifest import read_manifest
    from loadtests.benchmark import HOST, alternating_loads, service_server
    from loadtests.loadgen import build_request, load
    from service.monitoring.batch import BatchColumns

    repo = work / "cost-repo"
    if not (repo / "digits" / "2").exists():
        learn = data.train_digits(data.digits_split(seed=0)[0])
        data.export_to(learn, repo, "digits", 1, ood_score="energy")
        data.export_to(learn, repo, "digits", 2)
    pixels = np.random.default_rng(0).integers(0, 256, (32, 3, 28, 28), dtype=np.uint8)
    timings = {}
    for version in (1, 2):
        folder = repo / "digits" / str(version)
        manifest = read_manifest(folder)
        graph, _ = BatchColumns.graph(manifest, folder / "model.onnx")  # type: ignore[misc]
        plain = onnx.load(str(folder / "model.onnx")).SerializeToString()
        for label, model in (("model alone", plain), ("with monitoring columns", graph)):
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            names = [o.name for o in session.get_outputs() if o.name != "features"]
            for batch in (1, 10, 32):
                feed = {"pixels": pixels[:batch]}
                for _ in range(50):
                    session.run(names, feed)
                runs = []
                for _ in range(7):
                    t = time.perf_counter()
                    for _ in range(200):
                        session.run(names, feed)
                    runs.append((time.perf_counter() - t) / 200 * 1e6)
                timings[(manifest.monitoring.ood_score, label, batch)] = float(np.median(runs))
    for batch in (1, 10, 32):
        e_model, e_cols = (
            timings[("energy", "model alone", batch)],
            timings[("energy", "with monitoring columns", batch)],
        )
        m_cols = timings[("mahalanobis", "with monitoring columns", batch)]
        report(
            "digits",
            f"cost: one ORT run, batch {batch}",
            f"model {e_model:.0f} us; + energy columns "
            f"{e_cols - e_model:.0f} us; + Mahalanobis columns {m_cols - e_model:.0f} us",
            "small next to the run",
            None,
        )
    png = data.png(data.digits_split(seed=0)[1].items[0])
    env = {"SERVING_MONITORING": "true", "SERVING_PREDICTION_LOG": "false"}
    with service_server(repo, env) as port:
        targets = {
            f"v{v}": (port, build_request(HOST, port, f"/v1/models/digits/versions/{v}/predict", png, "image/png"))
            for v in ((2, 1) if reverse else (1, 2))  # which version's slices go first in each round
        }
        many = alternating_loads(targets, 32, seconds)
        one = {name: load(HOST, port, request, 1, 1.0, warmup_seconds=0.3) for name, (port, request) in targets.items()}
        for _ in range(4):
            for name, (port_, request) in targets.items():
                one[name].add(load(HOST, port_, request, 1, 1.0, warmup_seconds=0))
    for clients, results in ((32, many), (1, one)):
        energy, maha = results["v1"], results["v2"]
        report(
            "digits",
            f"cost: {clients} client(s), energy -> Mahalanobis",
            f"{energy.rate:.0f} -> {maha.rate:.0f} req/s ({maha.rate / energy.rate:.3f}); p50 {energy.median_ms:.2f}"
            f" -> {maha.median_ms:.2f} ms",
            "reported",
            None,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated, of {', '.join(CHECKS)}")
    parser.add_argument("--windows", type=int, default=50, help="in-domain windows (drift and guardrail)")
    parser.add_argument("--work", type=Path, help="keep trained bundles here and reuse them (default: a temp folder)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per version (cost)")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    checks = [c for c in args.checks.split(",") if c]
    unknown = sorted(set(models) - set(MODELS)) + sorted(set(checks) - set(CHECKS))
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")
    import torch

    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="signals-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"{'model':11s} {'check':34s} {'figure':44s} target")
    for name in models:
        if not set(checks) & {"drift", "shift", "ood", "guardrail"}:
            break
        subject = build(name, work)
        windows_too = name != "penguins"  # too few held-out rows to draw windows from (signal_data)
        if "drift" in checks and windows_too:
            check_drift(subject, args.windows)
        if "shift" in checks and windows_too:
            check_shift(subject)
        if "ood" in checks:
            check_ood(subject)
        if "guardrail" in checks and windows_too:
            check_guardrail(subject, args.windows)
    if "old" in checks:
        check_old_bundles()
    if "cost" in checks:
        check_cost(work, args.seconds)
        check_cost(work, args.seconds, reverse=True)
    print(f"\n{len(FIGURES)} figures in {time.perf_counter() - started:.0f} s; not met:")
    for f in FIGURES:
        if f.met is False:
            print(f"  {f.model} {f.check}: {f.figure} (target {f.target})")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
