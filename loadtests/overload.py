"""Overload benchmark: goodput and tail latency of successful requests, from below saturation to 4x beyond it.

    python -m loadtests.overload [--seconds 5] [--levels 16,32,64,128,256] [--models REPO]

Serves the digits example with default settings (``python -m service``),
drives it with the closed-loop load generator at each client count, finds
the peak of successful (200) requests per second and the smallest client
count that reaches 95% of it (saturation), then runs 4x that many clients.
Clients retry at once after a 503, the harshest case for cheap refusals.
Prints the figures and the two goals (goodput at 4x >= 0.8 of peak; p99 of
successful requests within the deadline); asserts nothing.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

from loadtests.benchmark import HOST, _digits_png, digits_bundle_repo, service_server
from loadtests.loadgen import LoadResult, build_request, load


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def row(clients: int, result: LoadResult) -> tuple[float, float]:
    ok = result.statuses.get(200, 0) / result.seconds
    p99 = percentile(result.ok_latencies_ms, 99)
    others = {s: n for s, n in sorted(result.statuses.items()) if s != 200}
    print(
        f"{clients:>7} {ok:>10.0f} {result.rate:>10.0f} {percentile(result.ok_latencies_ms, 50):>9.1f} "
        f"{p99:>9.1f}  {others}",
        flush=True,
    )
    return ok, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per client count")
    parser.add_argument("--levels", default="16,32,64,128,256", help="client counts to find the peak")
    parser.add_argument("--models", type=Path, help="a repository holding digits (default: build the example)")
    parser.add_argument("--deadline-s", type=float, default=30.0, help="SERVING_REQUEST_TIMEOUT_S of the service")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))  # 4x clients need as many sockets

    with tempfile.TemporaryDirectory() as tmp:
        repo = args.models or digits_bundle_repo(Path(tmp))
        body = _digits_png()
        env = {"SERVING_REQUEST_TIMEOUT_S": str(args.deadline_s)}
        with service_server(repo, env) as port:
            request = build_request(HOST, port, "/v1/models/digits/predict", body, "image/png")
            print(f"{'clients':>7} {'ok/s':>10} {'all/s':>10} {'p50 ok ms':>9} {'p99 ok ms':>9}  other statuses")
            goodput = {n: row(n, load(HOST, port, request, n, args.seconds))[0] for n in levels}
            peak = max(goodput.values())
            saturating = min(n for n, ok in goodput.items() if ok >= 0.95 * peak)
            flood = 4 * saturating
            ok, p99 = row(flood, load(HOST, port, request, flood, args.seconds))
    print(
        f"\npeak goodput {peak:.0f}/s; saturation at {saturating} clients; at {flood} clients {ok:.0f}/s = "
        f"{ok / peak:.2f} of peak (goal >= 0.80); p99 of successes {p99:.0f} ms "
        f"(deadline {args.deadline_s * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
