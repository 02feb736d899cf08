"""``python -m loadtests.bench [--quick] [--provider cpu|cuda] [--out DIR] [--seconds S] [--workloads ...]``.

Builds what it needs, starts the service (``python -m service``, default
settings) and its rivals, measures every workload with every ceiling
interleaved with the loads it is compared with, prints a table and one
PASS/FAIL line per target of issue 14, and writes ``DIR/bench.json`` and
``DIR/bench.png``. Asserts nothing: the exit status is 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bundle.manifest import read_manifest
from loadtests.bench import servers
from loadtests.bench.bundles import EXAMPLES, build_repo, digits_body, jpeg_body, rows_body
from loadtests.bench.ceilings import Ceilings
from loadtests.bench.report import machine, table, targets, write_json, write_plot
from loadtests.bench.workloads import BARE, COURSE, DECODE, OFF, ON, Plan, Workload, run_workload
from loadtests.bench.wrk_client import Wrk

DEFAULT_WORKLOADS = ("resnet18", "digits", "penguins-1row", "penguins-1000rows")
CHOICES = (*DEFAULT_WORKLOADS, "diamonds-1row", "diamonds-1000rows")
MANY_ROWS = 1000
QUICK_MANY_ROWS = 20  # --quick: batching off runs a row at a time, and a slice waits for every request it sent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke: tiny models and slices, 1 and 32 clients")
    parser.add_argument(
        "--provider",
        choices=("cpu", "cuda"),
        help="SERVING_PROVIDER for every session "
        "(default: the service's own default); cuda measures resnet18 at 224 px",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="where bench.json and bench.png go")
    parser.add_argument("--seconds", type=float, help="seconds per slice (default 2; --quick 0.05)")
    parser.add_argument("--rounds", type=int, default=3, help="slices per figure (at least 3)")
    parser.add_argument("--clients", help="client counts, comma-separated (default 1,8,32,64; --quick 1,32)")
    parser.add_argument(
        "--client",
        choices=("python", "wrk"),
        default="python",
        help="closed-loop client: loadtests.loadgen (default) or wrk, when on PATH",
    )
    parser.add_argument(
        "--workloads", help=f"comma-separated, of: {', '.join(CHOICES)} (default: {', '.join(DEFAULT_WORKLOADS)})"
    )
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3: every figure is the median of at least three slices")
    args.workloads = args.workloads.split(",") if args.workloads else list(DEFAULT_WORKLOADS)
    unknown = [w for w in args.workloads if w not in CHOICES]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {', '.join(CHOICES)}")
    if args.provider == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            parser.error("--provider cuda: this ONNX Runtime has no CUDA provider (install the gpu extra)")
    if args.client == "wrk":
        from loadtests.bench.wrk_client import available

        if not available():
            parser.error("--client wrk: wrk is not on PATH (apt-get install wrk)")
    return args


def plan_for(args: argparse.Namespace) -> Plan:
    default = (1, 32) if args.quick else (1, 8, 32, 64)
    clients = tuple(int(n) for n in args.clients.split(",")) if args.clients else default
    seconds = args.seconds or (0.05 if args.quick else 2.0)
    connections = min(max(clients), 16) if args.quick else max(clients)
    return Plan(clients=clients, rounds=args.rounds, seconds=seconds, open_loop_connections=connections)


def latest(repo: Path, name: str) -> Path:
    return max((p for p in (repo / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_for(args)
    started = time.perf_counter()
    cuda = args.provider == "cuda"
    resnet_px = 32 if args.quick else (224 if cuda else 128)
    resnet = f"resnet18@{resnet_px}"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    wanted = args.workloads
    examples = [e for e in EXAMPLES if any(w == e or w.startswith(f"{e}-") for w in wanted)]
    provider_env = {"SERVING_PROVIDER": args.provider} if args.provider else {}

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        log = lambda text: print(f"[{time.perf_counter() - started:6.1f} s] {text}", flush=True)  # noqa: E731
        if args.client == "wrk":
            plan.wrk = Wrk(work)
        log("building the models ...")
        repo = build_repo(
            work / "models", examples, resnet_px if "resnet18" in wanted else 0, args.quick, args.out / "cache"
        )
        specs = [
            servers.service("service", repo, provider_env),
            servers.service("batching-off", repo, {**provider_env, "SERVING_MAX_BATCH_SIZE": "1"}),
            servers.course(repo, args.provider or "cpu"),
            servers.bare(),
            servers.decode(repo),
        ]
        row_models = sorted({w.split("-")[0] for w in wanted if w.endswith("-1000rows")})
        if row_models:
            # Requests of 1,000 rows exceed the default request limits (items, cells, queue): raise only those.
            columns = max(len(read_manifest(latest(repo, m)).tabular.raw_columns) for m in row_models)
            rows_env = {
                **provider_env,
                "SERVING_MODEL_NAMES": ",".join(row_models),
                "SERVING_MAX_ITEMS_PER_REQUEST": str(MANY_ROWS),
                "SERVING_MAX_CELLS_PER_REQUEST": str(MANY_ROWS * columns),
                "SERVING_MAX_QUEUE_SIZE": str(MANY_ROWS * (max(plan.clients) + 1)),
            }
            specs += [
                servers.service("rows-service", repo, rows_env),
                servers.service("rows-batching-off", repo, {**rows_env, "SERVING_MAX_BATCH_SIZE": "1"}),
            ]
        many_rows = QUICK_MANY_ROWS if args.quick else MANY_ROWS
        workloads = make_workloads(wanted, repo, resnet, args.provider, many_rows)
        log(f"starting {len(specs)} servers ...")
        results = {}
        with servers.running(specs, work) as ports:
            for workload in workloads:
                log(f"measuring {workload.name} ...")
                run_workload(workload, ports, plan, log)
                results[workload.name] = workload.results
        provider = workloads[0].ceilings.provider if workloads else "cpu"

    document = {
        "machine": machine(provider),
        "run": {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": args.quick,
            "provider_setting": args.provider or "service default",
            "plan": {k: v for k, v in plan.__dict__.items() if k != "wrk"},
            "server_overrides": {
                "all": ["SERVING_WATCH_INTERVAL_S=0", "SERVING_LOG_LEVEL=warning"],
                "batching off": ["SERVING_MAX_BATCH_SIZE=1"],
                "1000-row requests": [
                    "SERVING_MAX_ITEMS_PER_REQUEST",
                    "SERVING_MAX_CELLS_PER_REQUEST",
                    "SERVING_MAX_QUEUE_SIZE",
                ],
            },
            "client": "wrk, 1 thread (closed loop); loadtests.loadgen (open loop)"
            if plan.wrk
            else "loadtests.loadgen (Python, asyncio)",
        },
        "workloads": results,
    }
    found = targets(results, resnet, cuda, plan.limit_clients)
    document["targets"] = [
        {"name": t.name, "figure": t.figure, "threshold": t.threshold, "at_least": t.at_least, "passed": t.passed}
        for t in found
    ]
    m = document["machine"]
    title = (
        f"{m['cpu_model']}, {m['cpu_quota']} of {m['logical_cpus']} CPUs, ONNX Runtime {m['onnxruntime']} "
        f"({m['provider']}); {plan.rounds} slices of {plan.seconds:g} s per figure"
    )
    print(f"\nmachine: {title}")
    print(table(results))
    caveat = " -- quick run: tiny models and slices, figures are not meaningful" if args.quick else ""
    print(f"\ntargets (issue 14){caveat}")
    for target in found:
        print("  " + target.line())
    document["run"]["seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out / "bench.json", document)
    write_plot(args.out / "bench.png", results, title)
    print(f"\nwrote {args.out / 'bench.json'} and {args.out / 'bench.png'} in {document['run']['seconds']:.0f} s")
    return 0


def make_workloads(
    wanted: list[str], repo: Path, resnet: str, provider: str | None, many_rows: int = MANY_ROWS
) -> list[Workload]:
    """The workloads asked for, in a fixed order, each with its in-process ceilings."""
    from service.settings import ServiceSettings

    session_provider = provider or ServiceSettings().provider
    made = []
    for name in CHOICES:
        if name not in wanted:
            continue
        if name == "resnet18":
            body, media, model = jpeg_body(), "image/jpeg", "resnet18"
            contenders = {ON: "service", OFF: "batching-off", COURSE: "course"}
            label = resnet
        elif name == "digits":
            body, media, model = digits_body(), "image/png", "digits"
            contenders = {ON: "service", OFF: "batching-off", COURSE: "course", BARE: "bare", DECODE: "decode"}
            label = name
        else:
            model, size = name.split("-")
            n = many_rows if size == "1000rows" else 1
            columns = list(read_manifest(latest(repo, model)).tabular.raw_columns)
            body, media = rows_body(model, columns, n), "application/json"
            if n == 1:
                contenders = {ON: "service", OFF: "batching-off", COURSE: "course", BARE: "bare", DECODE: "decode"}
            else:
                contenders = {ON: "rows-service", OFF: "rows-batching-off", COURSE: "course"}
            label = name
        ceilings = Ceilings(latest(repo, model), body, media, session_provider)
        made.append(
            Workload(
                label,
                model,
                body,
                media,
                contenders,
                ceilings,
                open_loop=not name.endswith("1000rows"),
                many_rows=name.endswith("1000rows"),
            )
        )
    return made


if __name__ == "__main__":
    raise SystemExit(main())
