"""How long a nightly run takes, and whether its training moves the model: figures, not assertions.

    python -m loadtests.nightly_bench                 # both cases, the nightly's defaults and --lr 1e-2 --epochs 6
    python -m loadtests.nightly_bench --case digits   # or: shapes128
    python -m loadtests.nightly_bench --threads 2

Each case trains a stable v1, serves it from a real service (uvicorn, a SQLite prediction log keeping
every image), sends the day's traffic through ``/v1/models/{name}/predict`` and its answers through
``/v1/feedback``, then times ``python -m training nightly`` end to end (reading the log, writing the
dataset, fine-tuning, scoring both models on every slice, exporting, handing the version over):

- ``digits``: 2,000 labelled digits (28 px, the digits example's model), half of them inverted (a
  shifted slice v1 never saw); v1 trained on 1,400 ordinary digits;
- ``shapes128``: 500 labelled images at 128 px, the hard shapes (noisy graded backgrounds); v1 a
  from-scratch ``simple_cnn`` (8-64 channels) trained for 30 epochs on 240 easy shapes.

Each nightly runs twice from the same v1: with its defaults (``FINETUNE_DEFAULTS``: lr_find's
clamped rule, 3 epochs raised to 100 optimiser steps) and with ``--lr 1e-2 --epochs 6``.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ADMIN, REPORTER = "bench-admin", "bench-reporter"


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


# -- the cases ---------------------------------------------------------------------------------


def digits_case(root: Path, n_day: int = 2000) -> tuple[Any, Path, list[bytes], list[str]]:
    """v1 on 1,400 ordinary digits; the original validation set, the other 397; the day, 2,000 jittered
    digits of which half are inverted."""
    from sklearn.datasets import load_digits

    from training import ImageDataLoaders, vision_learner
    from training.cli.examples import DIGITS_CHANNELS
    from training.data.augment import aug_transforms

    data = load_digits()
    images = (data.images * (255 / 16)).round().astype(np.uint8)
    labels = [str(t) for t in data.target]
    valid = root / "valid"
    for i in range(1400, len(images)):
        (valid / labels[i]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(valid / labels[i] / f"{i}.png")
    dls = ImageDataLoaders.from_arrays(
        images[:1400],
        labels[:1400],
        valid_pct=0.2,
        seed=42,
        size=28,
        method="squish",
        bs=64,
        aug=aug_transforms(do_flip=False, max_rotate=10.0, max_zoom=1.1, max_warp=0.0, max_lighting=0.1),
    )
    learn = vision_learner(dls, arch="simple_cnn", pretrained=False, seed=42, channels=DIGITS_CHANNELS)
    learn.fit_one_cycle(8, 1e-2)
    rng = np.random.default_rng(0)
    day, truth = [], []
    for k in range(n_day):
        i = int(rng.integers(0, 1400))
        pixels = np.roll(images[i], tuple(rng.integers(-1, 2, 2)), axis=(0, 1)).astype(np.int16)
        pixels = (pixels + rng.integers(-12, 13, pixels.shape)).clip(0, 255).astype(np.uint8)
        day.append(png(255 - pixels if k % 2 else pixels))
        truth.append(labels[i])
    return learn, valid, day, truth


def shapes_case(root: Path, n_day: int = 500) -> tuple[Any, Path, list[bytes], list[str]]:
    """v1: a from-scratch simple_cnn on 300 easy shapes at 128 px; the day: 500 hard shapes at 128 px."""
    from training import ImageDataLoaders, vision_learner
    from training.cli.examples import SHAPES, write_hard_shapes_folder, write_shapes_folder

    write_shapes_folder(root / "easy", per_class=100, size=128, seed=0)
    valid = write_shapes_folder(root / "valid", per_class=30, size=128, seed=1)
    dls = ImageDataLoaders.from_folder(root / "easy", valid_pct=0.2, seed=42, size=128, method="squish", bs=64)
    learn = vision_learner(dls, arch="simple_cnn", pretrained=False, seed=42, channels=(8, 16, 32, 64))
    learn.fit_one_cycle(30, 3e-3)  # 120 steps: v1 knows the easy shapes
    hard = write_hard_shapes_folder(root / "hard", per_class=(n_day + 2) // 3, size=128, seed=2)
    files = sorted(hard.rglob("*.png"))[: n_day * 3]
    chosen = [f for shape in SHAPES for f in files if f.parent.name == shape][:n_day]
    return learn, valid, [f.read_bytes() for f in chosen], [f.parent.name for f in chosen]


CASES = {"digits": digits_case, "shapes128": shapes_case}


# -- the service and the day's traffic ---------------------------------------------------------


class Service:
    def __init__(self, repo: Path, log: Path, state: Path) -> None:
        import uvicorn

        from service.app import create_app
        from service.settings import ServiceSettings

        images = "all" if "bool" not in str(ServiceSettings.model_fields["prediction_log_images"].annotation) else True
        settings = ServiceSettings(
            models=repo,
            prediction_log=True,
            prediction_log_path=log,
            prediction_log_images=images,
            admin_token=ADMIN,
            feedback_token=REPORTER,
            state_path=state,
            watch_interval_s=1.0,
            intra_op_threads=1,
            max_batch_size=32,
        )
        from socket import socket

        with socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def send_day(url: str, name: str, images: list[bytes], truth: list[str], batch: int = 50) -> float:
    import httpx

    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=60) as http:
        for at in range(0, len(images), batch):
            files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images[at : at + batch])]
            body = http.post(f"/v1/models/{name}/predict", files=files).json()
            for item in range(len(files)):
                answer = http.post(
                    "/v1/feedback",
                    json={"request_id": body["request_id"], "item": item, "label": truth[at + item]},
                    headers={"Authorization": f"Bearer {REPORTER}"},
                )
                answer.raise_for_status()
        http.get("/v1/predictions", params={"limit": 1}, headers={"Authorization": f"Bearer {ADMIN}"})
    return time.perf_counter() - started


def run_case(case: str, extra: list[list[str]]) -> None:
    from training.export import export_learner
    from training.loop.nightly import NightlyOptions, run_nightly

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        started = time.perf_counter()
        learn, valid, images, truth = CASES[case](root / "data")
        export_learner(learn, root / "models", case)
        print(f"{case}: v1 trained and exported in {time.perf_counter() - started:.0f} s", flush=True)
        service = Service(root / "models", root / "log.sqlite", root / "state.sqlite")
        try:
            sent = send_day(service.url, case, images, truth)
            print(f"{case}: {len(images)} predictions and answers through the service in {sent:.0f} s", flush=True)
            for n, flags in enumerate(extra):
                options = NightlyOptions(
                    model=case,
                    repo=root / "models",
                    log=str(root / "log.sqlite"),
                    service=service.url,
                    token=ADMIN,
                    valid=valid,
                    day=f"bench-{n}",
                    workdir=root / f"nightly-{n}",
                    lr=float(flags[1]) if flags else None,
                    epochs=int(flags[3]) if flags else None,
                )
                t0 = time.perf_counter()
                try:
                    result = run_nightly(options)
                    outcome = f"exported v{result['new_version']}"
                except ValueError as exc:
                    outcome = f"not exported ({str(exc)[:120]})"
                seconds = time.perf_counter() - t0
                report = (root / f"nightly-{n}" / f"bench-{n}" / "report.json").read_text()
                print_run(case, " ".join(flags) or "defaults", seconds, outcome, report)
        finally:
            service.stop()


def print_run(case: str, settings: str, seconds: float, outcome: str, report_text: str) -> None:
    import json

    report = json.loads(report_text)
    training = report.get("training", {})
    print(
        f"{case} [{settings}]: nightly {seconds:.0f} s, {report.get('data', {}).get('items')} items, "
        f"{training.get('epochs')} epochs at lr {training.get('lr', 0):.2e}; {outcome}"
    )
    for name, entry in (report.get("metrics") or {}).items():
        before, after = (entry.get(k) or {} for k in ("stable", "new"))
        print(
            f"    {name:40s} {entry.get('items'):5d} items  error {before.get('error_rate', float('nan')):.3f}"
            f" -> {after.get('error_rate', float('nan')):.3f}"
        )
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--defaults-only", action="store_true", help="skip the --lr 1e-2 --epochs 6 run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = [[]] if args.defaults_only else [[], ["--lr", "1e-2", "--epochs", "6"]]
    for case in args.case or list(CASES):
        run_case(case, runs)


if __name__ == "__main__":
    main()
