"""What a rollout costs the digits example: a canary split, and shadowing every request.

    python -m loadtests.rollout_bench [--seconds 8] [--clients 32] [--work DIR]

Builds the digits example once (``python -m training examples digits``) and
serves it twice over (v1 stable, v2 candidate: the same model copied, so
only the rollout machinery differs), then measures, alternating the servers
in slices so background load hits each alike:

1. throughput at 32 clients with a canary policy (``--share`` of keys on the
   candidate, guardrails judging) against no policy (target >= 0.95); at 100 %
   one version serves, so this is the routing's own cost; at 50 % it also pays
   for splitting batches over two versions, and a third load measures that
   floor: the no-policy server taking requests pinned to the candidate at
   random with the policy's share, as the hash routes keys (no routing, no
   guardrails);
2. the stable answer's p50 with shadow at 100 % against stage ``off``, at
   1 client and at 32 clients (target: at most 10 % more).

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtests.benchmark import HOST, ROOT, _digits_png, alternating_loads, describe, service_server
from loadtests.loadgen import build_request

PATH = "/v1/models/digits/predict"
POLICY = """
models:
  digits:
    stable: {stable}
    candidate: {candidate}
    stage: {stage}
    shadow: {{percent: 100}}
    steps:
      - {{regions: {{"*": {share}}}}}
    start: 2020-01-01T00:00:00Z
    guardrails: {{min_requests: 200, max_error_rate: 0.5, max_p99_ms: 10000}}
"""


def two_version_repo(work: Path) -> tuple[Path, int, int]:
    """The digits example as version n, and a copy of it as version n + 1."""
    repo = work / "models"
    if not any((repo / "digits").glob("*/manifest.json")):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "training",
                "examples",
                "digits",
                "--out",
                str(repo),
                "--data-dir",
                str(work / "data"),
            ],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    versions = sorted(int(p.name) for p in (repo / "digits").iterdir() if p.name.isdigit())
    stable = versions[0]
    candidate = stable + 1
    target = repo / "digits" / str(candidate)
    if not target.exists():
        shutil.copytree(repo / "digits" / str(stable), target)
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["version"] = candidate
        (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return repo, stable, candidate


def pinned_at_random(stable: bytes, candidate: bytes, share: float, length: int = 4096) -> list[bytes]:
    """A fixed random sequence of the two pinned requests, ``share`` percent of them the candidate's.

    Each client of the closed loop walks it from its own offset, so the versions get requests as the hash
    routes random keys: batches of each version form at random. (Pinning them in turn would not do: clients
    answered together move to the other version together, keeping both versions' batches full.)"""
    rng = random.Random(0)
    return [candidate if rng.random() * 100 < share else stable for _ in range(length)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per server and load")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--share",
        type=float,
        default=50.0,
        help="canary share of keys, percent (100: routing "
        "cost alone, one version serving; 50: also the cost of splitting batches over two versions)",
    )
    parser.add_argument("--skip-shadow", action="store_true")
    parser.add_argument("--work", type=Path, help="reuse this folder for the built example (default: a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    repo, stable, candidate = two_version_repo(work)
    png = _digits_png()

    def policy(name: str, stage: str) -> dict[str, str]:
        path = work / f"{name}.yaml"
        path.write_text(POLICY.format(stable=stable, candidate=candidate, stage=stage, share=args.share))
        return {"SERVING_ROLLOUT": str(path), "SERVING_STATE_PATH": str(work / f"{name}.sqlite")}

    with service_server(repo, {}) as plain, service_server(repo, policy("canary", "canary")) as canary:
        request = lambda port: (port, build_request(HOST, port, PATH, png, "image/png"))  # noqa: E731
        print(
            f"digits, PNG input, {args.clients} clients: no policy vs canary ({args.share:g} % of keys on v{candidate})"
        )
        targets = {"none": request(plain), "canary": request(canary)}
        split = 0 < args.share < 100
        if split:  # the same two versions, requests pinned at random with the policy's share: no routing, no guardrails
            pinned = {
                v: build_request(HOST, plain, f"/v1/models/digits/versions/{v}/predict", png, "image/png")
                for v in (stable, candidate)
            }
            targets["pinned"] = (plain, pinned_at_random(pinned[stable], pinned[candidate], args.share))
        results = alternating_loads(targets, args.clients, args.seconds)
        print(describe("no policy", results["none"]))
        print(describe("canary policy", results["canary"]))
        if split:
            print(describe("no policy, requests pinned to the versions at random", results["pinned"]))
        print(f"  canary / none throughput: {results['canary'].rate / results['none'].rate:.3f} (target >= 0.95)")
        if split:
            print(
                f"  floor: pinned at random / none {results['pinned'].rate / results['none'].rate:.3f} (two versions "
                "sharing the traffic as routing shares it, without any rollout machinery: each runs its own batches)"
            )
            own = results["canary"].rate / results["pinned"].rate
            print(f"  canary / floor {own:.3f} (the rollout machinery's own cost: routing, guardrail windows, gauges)")

    if args.skip_shadow:
        return
    with service_server(repo, policy("off", "off")) as off, service_server(repo, policy("shadow", "shadow")) as shadow:
        request = lambda port: (port, build_request(HOST, port, PATH, png, "image/png"))  # noqa: E731
        for clients in (1, args.clients):
            print(f"\ndigits, stable's answer with shadow 100 % vs stage off, {clients} client(s)")
            results = alternating_loads({"off": request(off), "shadow": request(shadow)}, clients, args.seconds)
            print(describe("stage off", results["off"]))
            print(describe("shadow 100 %", results["shadow"]))
            ratio = results["shadow"].median_ms / results["off"].median_ms
            print(f"  shadow / off p50: {ratio:.3f} (target <= 1.10)")
        import urllib.request

        with urllib.request.urlopen(f"http://{HOST}:{shadow}/metrics") as response:
            text = response.read().decode()
        shed = sum(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith("serving_shadow_shed_total")
        )
        compared = sum(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith("serving_shadow_comparisons_total")
        )
        print(f"  shadow runs compared {compared:.0f}, shed {shed:.0f}")


if __name__ == "__main__":
    main()
