"""Workloads and the interleaved measurement: every figure the median of slices taken in turn with its rivals.

A workload is one model and one request body, sent to each of the servers it
is compared on. For each client count the bench takes ``rounds`` rounds; in
each round every contender (each server, and the in-process ceiling that
client count is compared with) gets one slice of ``seconds``, in turn: A, B,
C, A, B, C, ... so a neighbour's load or the machine's drift weighs on all
alike. A figure is the median over its slices; a ratio is the median over
rounds of the two slices' ratio in the same round. Then, for workloads that
have one, the open loop: at 50% and 80% of the highest closed-loop throughput
of the service with default settings, in rounds with one-client slices on the
same service.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadtests.bench.ceilings import Ceilings
from loadtests.bench.wrk_client import Wrk
from loadtests.benchmark import HOST
from loadtests.loadgen import LoadResult, build_request, load, open_loop

# The service with default settings, and with batching off; the course-style handler; the bare endpoint; the
# bare endpoint that also decodes the body as the service does (loadtests.decode_app), a ceiling for any service.
ON, OFF, COURSE, BARE, DECODE = "service", "batching off", "course handler", "bare Starlette", "bare + decode"


@dataclass
class Workload:
    """One model and body; ``servers`` maps a contender's name to the server (from ``servers.running``) it is."""

    name: str
    model: str
    body: bytes
    content_type: str
    servers: dict[str, str]
    ceilings: Ceilings
    open_loop: bool = True
    many_rows: bool = False  # the ceiling is in-process rows/s, not the pipeline limit
    results: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """How long to measure: client counts, rounds, seconds per slice, open-loop shares and connections."""

    clients: tuple[int, ...] = (1, 8, 32, 64)
    rounds: int = 3
    seconds: float = 2.0
    open_loop_shares: tuple[float, ...] = (0.5, 0.8)
    open_loop_connections: int = 64
    limit_clients: int = 32  # the client count the throughput ceilings are interleaved with
    wrk: Wrk | None = None  # closed-loop slices by wrk instead of loadtests.loadgen


def slice_figures(result: LoadResult) -> dict[str, float]:
    return {
        "rate": result.rate,
        "p50_ms": result.percentile(50),
        "p95_ms": result.percentile(95),
        "p99_ms": result.percentile(99),
        "requests": result.requests,
        "errors": result.errors,
    }


def summarize(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each numeric figure over slices (``errors`` and ``requests`` summed), plus the slices."""
    summary: dict[str, Any] = {}
    for key, value in slices[0].items():
        values = [s[key] for s in slices]
        if key in ("requests", "errors"):
            summary[key] = sum(values)
        elif isinstance(value, dict):
            summary[key] = {k: statistics.median(v[k] for v in values) for k in value}
        elif isinstance(value, (int, float)):
            summary[key] = statistics.median(values)
    summary["slices"] = slices
    return summary


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a/b, each pair measured in the same round."""
    return statistics.median(x / y for x, y in zip(a, b) if y)


def run_workload(workload: Workload, ports: dict[str, int], plan: Plan, log: Callable[[str], None] = print) -> None:
    """Measure ``workload`` per ``plan``; figures go to ``workload.results``."""
    path = f"/v1/models/{workload.model}/predict"
    requests = {
        contender: (ports[server], build_request(HOST, ports[server], path, workload.body, workload.content_type))
        for contender, server in workload.servers.items()
    }
    for contender, (port, request) in requests.items():  # every server answers 200 before anything is timed
        check = load(HOST, port, request, 1, 0.05, max_requests=3, warmup_seconds=0)
        if check.errors:
            raise RuntimeError(f"{workload.name}: {contender} answered {check.statuses}")
    ceilings = workload.ceilings
    closed: dict[str, dict[int, Any]] = {contender: {} for contender in requests}
    ceiling: dict[str, Any] = {}
    for clients in plan.clients:
        slices: dict[str, list[dict[str, Any]]] = {contender: [] for contender in requests}
        extra_name, extra = _ceiling_for(workload, clients, plan)
        extra_slices: list[Any] = []
        for port, request in requests.values():
            load(HOST, port, request, clients, min(1.0, plan.seconds / 2), warmup_seconds=0)
        for _ in range(plan.rounds):
            for contender, (port, request) in requests.items():
                if plan.wrk is not None:
                    url = f"http://{HOST}:{port}{path}"
                    figures = plan.wrk.slice(url, workload.body, workload.content_type, clients, plan.seconds)
                else:
                    figures = slice_figures(load(HOST, port, request, clients, plan.seconds, warmup_seconds=0))
                slices[contender].append(figures)
            if extra is not None:
                extra_slices.append(extra(plan.seconds))
        for contender in requests:
            closed[contender][clients] = summarize(slices[contender])
        if extra is not None:
            if isinstance(extra_slices[0], dict):
                ceiling[extra_name] = summarize(extra_slices)
            else:
                ceiling[extra_name] = {"median": statistics.median(extra_slices), "slices": extra_slices}
        log(
            f"{workload.name}: {clients} clients: "
            + ", ".join(f"{c} {closed[c][clients]['rate']:.0f}/s" for c in requests)
        )
    workload.results = {
        "model": workload.model,
        "content_type": workload.content_type,
        "body_bytes": len(workload.body),
        "items_per_request": ceilings.items_per_request,
        "closed_loop": closed,
        "ceilings": ceiling,
        "ratios": _ratios(closed, ceiling, plan, ceilings.items_per_request),
    }
    if workload.open_loop:
        workload.results["open_loop"] = run_open_loop(workload, requests[ON], closed[ON], plan, log, requests.get(BARE))


def _ceiling_for(workload: Workload, clients: int, plan: Plan) -> tuple[str, Callable[[float], Any] | None]:
    """The in-process figure a client count is compared with, and the method measuring one slice of it."""
    ceilings = workload.ceilings
    if clients == 1 and not workload.many_rows:
        return "single_item_ms", ceilings.single_item_ms
    if clients == plan.limit_clients:
        return ("rows_per_s", ceilings.rows_per_s) if workload.many_rows else ("limit", ceilings.limit_slice)
    return "", None


def _ratios(closed: dict[str, dict[int, Any]], ceiling: dict[str, Any], plan: Plan, items: int) -> dict[str, float]:
    """Same-round ratios at the limit client count: the service against each rival and ceiling."""
    at = plan.limit_clients
    if at not in closed[ON]:
        return {}
    rates = {c: [s["rate"] for s in closed[c][at]["slices"]] for c in closed}
    ratios = {f"service/{c}": paired_ratio(rates[ON], rates[c]) for c in closed if c != ON}
    if DECODE in rates and BARE in rates:  # the ceiling itself, against the bare endpoint
        ratios[f"{DECODE}/{BARE}"] = paired_ratio(rates[DECODE], rates[BARE])
    if "limit" in ceiling:
        for key in ("pipeline_limit", "serial_limit"):
            ratios[f"service/{key}"] = paired_ratio(rates[ON], [s[key] for s in ceiling["limit"]["slices"]])
    if "rows_per_s" in ceiling:
        ratios["service rows/in-process rows"] = paired_ratio(
            [r * items for r in rates[ON]], ceiling["rows_per_s"]["slices"]
        )
    return ratios


def run_open_loop(
    workload: Workload,
    target: tuple[int, bytes],
    closed: dict[int, Any],
    plan: Plan,
    log: Callable[[str], None],
    bare: tuple[int, bytes] | None = None,
) -> dict[str, Any]:
    """Constant arrival rates at shares of the service's best closed-loop rate, with one-client slices between.

    With ``bare`` (the bare endpoint), the same rates are also sent to it in the same rounds: an endpoint
    that does almost nothing shows what the client and the machine add to the percentiles by themselves."""
    port, request = target
    capacity = max(figures["rate"] for figures in closed.values())
    shares = [f"{share:.0%}" for share in plan.open_loop_shares]
    slices: dict[str, list[dict[str, Any]]] = {share: [] for share in shares}
    bare_slices: dict[str, list[dict[str, Any]]] = {share: [] for share in shares}
    one_client: list[dict[str, Any]] = []
    for _ in range(plan.rounds):
        for name, share in zip(shares, plan.open_loop_shares):
            result = open_loop(HOST, port, request, share * capacity, plan.seconds, plan.open_loop_connections)
            slices[name].append({**slice_figures(result), "offered": share * capacity})
            if bare is not None:
                result = open_loop(HOST, *bare, share * capacity, plan.seconds, plan.open_loop_connections)
                bare_slices[name].append({**slice_figures(result), "offered": share * capacity})
        one_client.append(slice_figures(load(HOST, port, request, 1, plan.seconds, warmup_seconds=0)))
    summary = {share: summarize(s) for share, s in slices.items()}
    log(
        f"{workload.name}: open loop at "
        + ", ".join(f"{share} ({s['offered']:.0f}/s) p99 {s['p99_ms']:.1f} ms" for share, s in summary.items())
    )
    found = {"capacity": capacity, "rates": summary, "one_client": summarize(one_client)}
    if bare is not None:
        found["bare_rates"] = {share: summarize(s) for share, s in bare_slices.items()}
    return found
