"""Worker processes against one process: digits PNG under wrk, alternating rounds, default settings.

    python -m loadtests.workers_bench --models DIR [--rounds 5] [--seconds 5] [--clients 32]

Contenders: ``SERVING_WORKERS=1`` (one process, as before), the default worker count with monitoring on,
and with monitoring off. Every round runs each contender once in turn (so load from anything else on the
machine falls on all of them alike); the ratios are medians of the per-round ratios. One client
(``wrk -c 1``) on each for the p50, in the same rounds. Then an open loop (``loadtests.loadgen``, constant
arrival rate at 80% of each one's closed-loop rate) for the p99. Prints a JSON document;
docs/performance.md keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from loadtests.bench.bundles import digits_body
from loadtests.bench.servers import running, service
from loadtests.bench.wrk_client import Wrk
from loadtests.benchmark import HOST
from loadtests.loadgen import build_request, open_loop
from service.models.runtime import cpu_quota


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.workers_bench", description=__doc__)
    parser.add_argument("--models", type=Path, required=True, help="a repository holding the digits example")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--open-rounds", type=int, default=3, help="open-loop slices per contender (0: none)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="workers-bench-"))
    workers = cpu_quota()
    specs = [
        service("one", args.models, {"SERVING_WORKERS": "1"}),
        service("workers", args.models),  # the default: the CPU quota
        service("workers_off", args.models, {"SERVING_MONITORING": "false"}),
    ]
    body, wrk = digits_body(), Wrk(work)
    rates: dict[str, list[float]] = {spec.name: [] for spec in specs}
    p50: dict[str, list[float]] = {spec.name: [] for spec in specs}
    open_p99: dict[str, list[float]] = {"one": [], "workers": []}
    with running(specs, work) as ports:

        def url(name: str) -> str:
            return f"http://{HOST}:{ports[name]}/v1/models/digits/predict"

        for name in ports:  # warm-up
            wrk.slice(url(name), body, "image/png", args.clients, 1)
        for _ in range(args.rounds):
            for name in ports:
                rates[name].append(wrk.slice(url(name), body, "image/png", args.clients, args.seconds)["rate"])
            for name in ports:
                p50[name].append(wrk.slice(url(name), body, "image/png", 1, max(1.0, args.seconds / 2))["p50_ms"])
        for _ in range(args.open_rounds):  # constant arrival rate at 80% of each one's own closed-loop rate
            for name in ("one", "workers"):
                rate = 0.8 * statistics.median(rates[name])
                request = build_request(HOST, ports[name], "/v1/models/digits/predict", body, "image/png")
                result = open_loop(HOST, ports[name], request, rate, args.seconds)
                open_p99[name].append(result.percentile(99))
    per_round = list(zip(rates["one"], rates["workers"], rates["workers_off"]))
    result = {
        "workers": workers,
        "clients": args.clients,
        "rates": rates,
        "p50_ms_one_client": p50,
        "workers_vs_one": statistics.median(w / o for o, w, _ in per_round),
        "monitoring_on_vs_off": statistics.median(w / f for _, w, f in per_round),
        "p50_delta_ms": statistics.median(w - o for o, w in zip(p50["one"], p50["workers"])),
        "open_loop_p99_ms_at_80pct": open_p99,
        "open_loop_p99_over_p50": {
            name: statistics.median(values) / statistics.median(p50[name])
            for name, values in open_p99.items()
            if values
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
