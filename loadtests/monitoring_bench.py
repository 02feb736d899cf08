"""What monitoring costs: the service with monitoring and the SQLite prediction log on, against both off.

    python -m loadtests.monitoring_bench [--seconds 10] [--clients 32] [--skip-resnet] [--skip-digits]

For the digits example (PNG input; a tiny model, so the per-request overhead
shows most) and an untrained resnet18 at 128 px (JPEG input), two services
run side by side, one with ``SERVING_MONITORING`` and ``SERVING_PREDICTION_LOG``
on (every request logged to a SQLite file), one with both off, and take the
same closed-loop load in alternating slices. Prints throughput, latency and
the on/off ratio against the targets (digits >= 0.9, resnet18 >= 0.95), and
what the log wrote and dropped; asserts nothing. A third service measures a
floor: monitoring on but its queue one observation long and the log off, so
it pays for the request path (out-of-domain flags in every response, the
graph's monitoring columns) and next to nothing for the drift windows and the
log that run in the background.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import urllib.request
from pathlib import Path

from loadtests.benchmark import (
    HOST,
    _digits_png,
    alternating_loads,
    build_resnet_bundle,
    describe,
    digits_bundle_repo,
    sample_jpeg,
    service_server,
)
from loadtests.loadgen import build_request

TARGETS = {"digits": 0.9, "resnet18": 0.95}


def compare(name: str, repo: Path, body: bytes, content_type: str, work: Path, args: argparse.Namespace) -> None:
    log = work / f"{name}-predictions.sqlite"
    on_env = {"SERVING_MONITORING": "true", "SERVING_PREDICTION_LOG": "true", "SERVING_PREDICTION_LOG_PATH": str(log)}
    off_env = {"SERVING_MONITORING": "false", "SERVING_PREDICTION_LOG": "false"}
    # The request path alone: every response still gets its out-of-domain flags, but the monitor's queue holds
    # one observation, so nearly all are dropped before the worker sees them, and nothing is logged.
    path_env = {"SERVING_MONITORING": "true", "SERVING_PREDICTION_LOG": "false", "SERVING_MONITOR_QUEUE_SIZE": "1"}
    path = f"/v1/models/{name}/predict"
    with (
        service_server(repo, on_env) as on_port,
        service_server(repo, off_env) as off_port,
        service_server(repo, path_env) as path_port,
    ):
        loads = alternating_loads(
            {
                "on": (on_port, build_request(HOST, on_port, path, body, content_type)),
                "off": (off_port, build_request(HOST, off_port, path, body, content_type)),
                "path": (path_port, build_request(HOST, path_port, path, body, content_type)),
            },
            args.clients,
            args.seconds,
        )
        with urllib.request.urlopen(f"http://{HOST}:{on_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
    on, off, request_path = loads["on"], loads["off"], loads["path"]
    print(f"\n{name}, {args.clients} clients")
    print(describe("monitoring + SQLite log on", on))
    print(describe("monitoring and log off", off))
    print(describe("request path only (flags, no worker, no log)", request_path))
    print(f"  on / off   {on.rate / off.rate:5.3f}   (target >= {TARGETS[name]})")
    print(
        f"  floor: request path only / off {request_path.rate / off.rate:5.3f} (each response's out-of-domain flags "
        "and the graph's monitoring columns, with the drift windows and the log free)"
    )
    print(
        f"  log: {_sample(metrics, 'serving_prediction_log_written_total'):.0f} written, "
        f"{_sample(metrics, 'serving_prediction_log_dropped_total'):.0f} dropped, "
        f"{_sample(metrics, 'serving_monitor_dropped_total'):.0f} observations dropped"
    )


def _sample(metrics: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", metrics, re.MULTILINE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per service and model")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_digits:
            compare("digits", digits_bundle_repo(work), _digits_png(), "image/png", work, args)
        if not args.skip_resnet:
            repo = work / "repo"
            build_resnet_bundle(repo)
            compare("resnet18", repo, sample_jpeg(), "image/jpeg", work, args)


if __name__ == "__main__":
    main()
