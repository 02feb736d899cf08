"""Benchmark the service against its ceilings, all measured in this one run on this machine.

    python -m loadtests.benchmark [--seconds 10] [--skip-digits]

1. resnet18 at 128 px (untrained; weights do not change the timing), JPEG input:
   - the pipeline limit: one process decoding JPEGs and running ONNX Runtime at
     its best batch size, no HTTP, with the service's ONNX Runtime settings;
   - the service with batching on (max_batch_size = that best size, at most
     half the clients) and off (max_batch_size = 1), 32 concurrent clients;
   - one client alone: median latency against the pipeline's single-item time,
     the two measured in alternating slices so background load hits both alike.
2. The digits example (a tiny model, where HTTP is the ceiling): the service
   against a bare Starlette endpoint that only reads the body and answers JSON,
   32 concurrent clients.

Prints the figures and the targets' ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from bundle.images import ResizeSpec, preprocess
from bundle.manifest import read_manifest
from loadtests.loadgen import LoadResult, build_request, load

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
ROUNDS = 4  # slices per alternating measurement


def sample_jpeg(side: int = 480) -> bytes:
    """A real photo when scikit-image is installed (its sample data ships with it), else a synthetic one."""
    try:
        from skimage import data

        img = Image.fromarray(data.astronaut())
    except ImportError:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:side, 0:side]
        base = np.stack([xx, yy, (xx + yy) // 2], axis=-1) % 256
        img = Image.fromarray((base + rng.integers(0, 40, base.shape)).clip(0, 255).astype(np.uint8))
    img = img.resize((side, side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_resnet_bundle(repo: Path, px: int = 128) -> Path:
    """An untrained resnet18 at ``px`` pixels (128 by default), exported through the real training pipeline."""
    from training.builders import vision_learner
    from training.data.images import ImageDataLoaders
    from training.export import export_learner

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, px, px, 3), dtype=np.uint8)
    labels = [str(i % 2) for i in range(16)]
    dls = ImageDataLoaders.from_arrays(images, labels, valid_pct=0.25, size=px, method="crop", bs=8)
    learn = vision_learner(dls, arch="resnet18", pretrained=False, device="cpu")
    return export_learner(learn, repo, "resnet18")


class Pipeline:
    """The ceiling without HTTP: one process decoding JPEGs and running ONNX Runtime, one batch at a time.

    The session is built exactly as the service builds its own (``OnnxRuntime``
    with the service's default settings), so the two compare like for like.
    """

    def __init__(self, bundle: Path, jpeg: bytes) -> None:
        from service.models.runtime import OnnxRuntime
        from service.settings import ServiceSettings

        manifest = read_manifest(bundle)
        spec = manifest.image
        settings = ServiceSettings()
        self.resize = ResizeSpec(spec.height, spec.width, spec.resize_method, spec.pad_mode)
        self.jpeg = jpeg
        self.runtime = OnnxRuntime(
            bundle / "model.onnx",
            manifest.onnx.inputs,
            manifest.onnx.outputs,
            provider="cpu",
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            allow_spinning=settings.ort_spinning,
        )

    def run(self, batch: int) -> None:
        pixels = np.stack([preprocess(self.jpeg, self.resize) for _ in range(batch)])
        self.runtime.run([pixels])

    def rate(self, batch: int, seconds: float) -> float:
        """Items per second at one batch size."""
        self.runtime.warm_up([batch])
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            self.run(batch)
            done += batch
        return done / (time.perf_counter() - started)

    def single_item_ms(self, seconds: float) -> list[float]:
        """Milliseconds per lone item (decode + run), one sample per item."""
        times: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            self.run(1)
            times.append((time.perf_counter() - t0) * 1000)
        return times


def pipeline_limit(pipeline: Pipeline, seconds: float) -> dict[int, float]:
    """Items/s per batch size for decode + ONNX Runtime in one process."""
    return {batch: pipeline.rate(batch, seconds / 6) for batch in (1, 2, 4, 8, 16, 32)}


def one_client_against_single_item(
    pipeline: Pipeline, port: int, request: bytes, seconds: float, rounds: int = ROUNDS
) -> tuple[LoadResult, float]:
    """One client's latencies through the service, and the pipeline's single-item median in ms.

    The two are measured in alternating slices, so a neighbour's load on the
    machine weighs on both alike.
    """
    single: list[float] = []
    served = LoadResult(requests=0, errors=0, seconds=0.0, latencies_ms=[])
    load(HOST, port, request, 1, 0.5, warmup_seconds=0)
    pipeline.single_item_ms(0.5)
    for _ in range(rounds):
        single += pipeline.single_item_ms(seconds / rounds)
        served.add(load(HOST, port, request, 1, seconds / rounds, warmup_seconds=0))
    return served, statistics.median(single)


def alternating_loads(
    targets: dict[str, tuple[int, bytes | list[bytes]]], clients: int, seconds: float, rounds: int = ROUNDS
) -> dict[str, LoadResult]:
    """Closed-loop load on each (port, request) in turn, ``rounds`` slices each, so they share the conditions."""
    results = {name: LoadResult(requests=0, errors=0, seconds=0.0, latencies_ms=[]) for name in targets}
    for port, request in targets.values():
        load(HOST, port, request, clients, min(2.0, seconds / 3), warmup_seconds=0)
    for _ in range(rounds):
        for name, (port, request) in targets.items():
            results[name].add(load(HOST, port, request, clients, seconds / rounds, warmup_seconds=0))
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextmanager
def server(args: list[str], env: dict[str, str], ready_path: str, timeout: float = 120) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, *args, "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}{ready_path}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def service_server(repo: Path, env: dict[str, str]) -> Iterator[int]:
    """``python -m service`` on a free port; its prediction log goes to a temporary file unless ``env`` names one
    (the service runs in the checkout, and its default log path is relative)."""
    with tempfile.TemporaryDirectory(prefix="bench-log-") as logs:
        service_env = {
            "SERVING_WATCH_INTERVAL_S": "0",
            "SERVING_LOG_LEVEL": "warning",
            "SERVING_PREDICTION_LOG_PATH": str(Path(logs) / "predictions.sqlite"),
            **env,
        }
        with server(["-m", "service", "--models", str(repo), "--host", HOST], service_env, "/readyz") as port:
            yield port


@contextmanager
def bare_server() -> Iterator[int]:
    """The bare endpoint under the same uvicorn options as ``python -m service`` (no access log)."""
    args = ["-m", "uvicorn", "loadtests.bare_app:app", "--host", HOST, "--log-level", "warning", "--no-access-log"]
    with _bare(args) as port:
        yield port


@contextmanager
def _bare(args: list[str]) -> Iterator[int]:
    """The bare app has no readiness route: ready once it accepts connections."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, *args, "--port", str(port)], cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def describe(label: str, r: LoadResult) -> str:
    return (
        f"  {label:<34} {r.rate:8.1f} req/s   p50 {r.median_ms:7.2f} ms   p99 {r.percentile(99):7.2f} ms"
        f"   errors {r.errors}/{r.requests}"
    )


def digits_bundle_repo(work: Path) -> Path:
    models = ROOT / "models"
    if any((models / "digits").glob("*/manifest.json")):
        return models
    repo = work / "digits-repo"
    subprocess.run(
        [sys.executable, "-m", "training", "examples", "digits", "--out", str(repo), "--data-dir", str(work / "data")],
        cwd=ROOT,
        check=True,
    )
    return repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per load run")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--skip-digits", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo = work / "repo"
        print("building the resnet18 128 px bundle ...", flush=True)
        bundle = build_resnet_bundle(repo)
        jpeg = sample_jpeg()

        print("\nresnet18 @ 128 px, JPEG input")
        pipeline = Pipeline(bundle, jpeg)
        rates = pipeline_limit(pipeline, seconds=args.seconds)
        best = max(rates, key=rates.get)
        limit = rates[best]
        print("  pipeline limit (decode + ORT, no HTTP): " + ", ".join(f"b{b}: {r:.1f}/s" for b, r in rates.items()))
        print(f"  best batch size {best}: {limit:.1f} items/s")

        # Batching on means batches up to the size this machine runs best (bigger ones are slower per item
        # on a small CPU), and at most half the clients: with every client in one batch the runtime would
        # sit idle while all their next requests are decoded, where two halves take turns. Off means every
        # request runs alone. Everything else is the service's default. Both services run side by side and
        # take the load in alternating slices.
        on_size = min(best, max(1, args.clients // 2))
        batching_on = {"SERVING_MAX_BATCH_SIZE": str(on_size)}
        batching_off = {"SERVING_MAX_BATCH_SIZE": "1"}
        with service_server(repo, batching_on) as on_port, service_server(repo, batching_off) as off_port:
            path = "/v1/models/resnet18/predict"
            on_request = build_request(HOST, on_port, path, jpeg, "image/jpeg")
            off_request = build_request(HOST, off_port, path, jpeg, "image/jpeg")
            targets = {"on": (on_port, on_request), "off": (off_port, off_request)}
            loads = alternating_loads(targets, args.clients, args.seconds)
            on, off = loads["on"], loads["off"]
            alone, single_ms = one_client_against_single_item(pipeline, on_port, on_request, args.seconds)
        print(describe(f"service, batching on (max {on_size}), {args.clients} clients", on))
        print(describe(f"service, batching off, {args.clients} clients", off))
        print(describe("service, one client", alone))
        print(f"  pipeline single item (alternating with it) {single_ms:.2f} ms")
        print(f"  throughput / pipeline limit   {on.rate / limit:5.2f}   (target >= 0.85)")
        print(f"  batching on / batching off    {on.rate / off.rate:5.2f}   (target >= 1.3)")
        print(f"  one client median - single    {alone.median_ms - single_ms:+5.2f} ms (target <= +3 ms)")

        if not args.skip_digits:
            digits_repo = digits_bundle_repo(work)
            sample = _digits_png()
            print(f"\ndigits example, PNG input, {args.clients} clients")
            with service_server(digits_repo, {}) as service_port, bare_server() as bare_port:
                path = "/v1/models/digits/predict"
                loads = alternating_loads(
                    {
                        "service": (service_port, build_request(HOST, service_port, path, sample, "image/png")),
                        "bare": (bare_port, build_request(HOST, bare_port, path, sample, "image/png")),
                    },
                    args.clients,
                    args.seconds,
                )
            served, bare = loads["service"], loads["bare"]
            print(describe("service", served))
            print(describe("bare Starlette endpoint", bare))
            print(f"  service / bare endpoint       {served.rate / bare.rate:5.2f}   (target >= 0.5)")


def _digits_png() -> bytes:
    from sklearn.datasets import load_digits

    image = (load_digits().images[0] * (255 / 16)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


if __name__ == "__main__":
    main()
