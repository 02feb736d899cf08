"""Open Inference Protocol against the native API, resnet18 at 128 px, on one service.

    python -m loadtests.oip_bench [--seconds 10] [--clients 16] [--batch 8]

One service process (batching on, ``--batch`` items at most per run) takes,
in alternating slices so background load weighs on each alike:

- the native API with the JPEG itself (``image/jpeg``; the service decodes and resizes it);
- Triton's Python HTTP client (``tritonclient.http``, gevent greenlets, one
  connection each) sending the same image preprocessed by the shared code:
  ``UINT8`` [1, 3, 128, 128] as binary tensor data, all outputs binary;
- the very bytes tritonclient sends, through the lean load generator, so the
  client's own cost is out of the figure.

Prints requests per second, latencies and the ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bundle.images import ResizeSpec, preprocess
from bundle.manifest import read_manifest
from loadtests.benchmark import HOST, build_resnet_bundle, describe, sample_jpeg, service_server
from loadtests.loadgen import LoadResult, build_request, load

ROUNDS = 3


def tritonclient_load(port: int, pixels: np.ndarray, clients: int, seconds: float) -> LoadResult:
    """Closed-loop load from ``clients`` greenlets sharing one tritonclient (its connection pool)."""
    import gevent
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(f"{HOST}:{port}", concurrency=clients, network_timeout=60)
    tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    result = LoadResult(requests=0, errors=0, seconds=0.0, latencies_ms=[])
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                client.infer("resnet18", [tensor])
            except InferenceServerException:
                result.errors += 1
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            result.requests += 1

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(clients)])
    result.seconds = time.perf_counter() - started
    client.close()
    return result


def oip_request(port: int, pixels: np.ndarray) -> bytes:
    """The request tritonclient sends for these pixels, as raw HTTP for the load generator."""
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor])
    extra = {"Inference-Header-Content-Length": str(json_size)}
    return build_request(HOST, port, "/v2/models/resnet18/infer", body, "application/octet-stream", extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per load, over all slices")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="SERVING_MAX_BATCH_SIZE of the service")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        print("building the resnet18 128 px bundle ...", flush=True)
        bundle = build_resnet_bundle(repo)
        spec = read_manifest(bundle).image
        jpeg = sample_jpeg()
        pixels = preprocess(jpeg, ResizeSpec(spec.height, spec.width, spec.resize_method, spec.pad_mode))[None]
        print(f"one {len(jpeg)}-byte JPEG per request; as UINT8 pixels {list(pixels.shape)} = {pixels.nbytes} bytes")

        with service_server(repo, {"SERVING_MAX_BATCH_SIZE": str(args.batch)}) as port:
            native = build_request(HOST, port, "/v1/models/resnet18/predict", jpeg, "image/jpeg")
            oip = oip_request(port, pixels)
            results = {
                name: LoadResult(requests=0, errors=0, seconds=0.0, latencies_ms=[])
                for name in ("native", "tritonclient", "oip bytes")
            }
            load(HOST, port, native, args.clients, 1.0, warmup_seconds=0)
            tritonclient_load(port, pixels, args.clients, 1.0)
            for _ in range(ROUNDS):
                share = args.seconds / ROUNDS
                results["native"].add(load(HOST, port, native, args.clients, share, warmup_seconds=0))
                results["tritonclient"].add(tritonclient_load(port, pixels, args.clients, share))
                results["oip bytes"].add(load(HOST, port, oip, args.clients, share, warmup_seconds=0))

    print(f"\nresnet18 @ 128 px, {args.clients} clients, max batch {args.batch}")
    print(describe("native API, JPEG", results["native"]))
    print(describe("OIP via tritonclient, UINT8 binary", results["tritonclient"]))
    print(describe("OIP request bytes, load generator", results["oip bytes"]))
    native_rate = results["native"].rate
    print(f"  tritonclient / native        {results['tritonclient'].rate / native_rate:5.2f}   (target >= 1.0)")
    print(f"  OIP bytes / native           {results['oip bytes'].rate / native_rate:5.2f}")


if __name__ == "__main__":
    main()
