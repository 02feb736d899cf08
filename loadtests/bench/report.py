"""What the bench prints and writes: the machine, a table per workload, the targets of issue 14, JSON and a plot."""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.bench.workloads import BARE, COURSE, DECODE, OFF, ON


def machine(provider: str) -> dict[str, Any]:
    """Cores, CPU model, ONNX Runtime version and the provider the sessions run on."""
    import onnxruntime as ort

    from service.models.runtime import cpu_quota

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "cpu_quota": cpu_quota(),
        "onnxruntime": ort.__version__,
        "ort_providers_available": ort.get_available_providers(),
        "provider": provider,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@dataclass
class Target:
    name: str
    figure: float | None  # None: not measured in this run
    threshold: float
    at_least: bool  # figure >= threshold passes (else figure <= threshold)
    unit: str = "x"
    floor: str = ""  # what the same machine and client give an endpoint that does less, for context

    @property
    def passed(self) -> bool | None:
        if self.figure is None:
            return None
        return self.figure >= self.threshold if self.at_least else self.figure <= self.threshold

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]
        sign = ">=" if self.at_least else "<="
        shown = "not measured" if self.figure is None else f"{self.figure:.3f}{self.unit}"
        line = f"{verdict}  {self.name}: {shown} (target {sign} {self.threshold:g}{self.unit})"
        return f"{line}; {self.floor}" if self.floor else line


def _slices(results: dict[str, Any], workload: str, contender: str, clients: int, key: str) -> list[float] | None:
    try:
        return [s[key] for s in results[workload]["closed_loop"][contender][clients]["slices"]]
    except KeyError:
        return None


def _paired(a: list[float] | None, b: list[float] | None, op: str) -> float | None:
    if not a or not b:
        return None
    pairs = list(zip(a, b))
    return statistics.median(x / y if op == "/" else x - y for x, y in pairs)


def targets(results: dict[str, Any], resnet: str, cuda: bool, at: int = 32) -> list[Target]:
    """One line per target of issue 14, each a same-round ratio or difference, median over rounds."""
    w = results
    ratio = lambda name, key: w.get(name, {}).get("ratios", {}).get(key)  # noqa: E731
    single = w.get(resnet, {}).get("ceilings", {}).get("single_item_ms", {}).get("slices")
    found = [
        Target(f"{resnet} {at} clients: service / pipeline limit", ratio(resnet, "service/pipeline_limit"), 0.95, True),
        Target(f"{resnet} {at} clients: service / course handler", ratio(resnet, f"service/{COURSE}"), 1.25, True),
        Target(f"{resnet} {at} clients: batching on / off", ratio(resnet, f"service/{OFF}"), 1.3, True),
        Target(
            f"{resnet} one client: median - pipeline single item",
            _paired(_slices(w, resnet, ON, 1, "p50_ms"), single, "-"),
            1.5,
            False,
            " ms",
        ),
        Target(
            "digits one client: median - course handler median",
            _paired(_slices(w, "digits", ON, 1, "p50_ms"), _slices(w, "digits", COURSE, 1, "p50_ms"), "-"),
            0.15,
            False,
            " ms",
        ),
        Target(
            f"digits {at} clients: service / bare Starlette",
            ratio("digits", f"service/{BARE}"),
            0.5,
            True,
            floor=_decode_floor(ratio("digits", f"{DECODE}/{BARE}")),
        ),
    ]
    for name in sorted(w):
        if name.endswith("-1row"):
            found.append(
                Target(
                    f"{name} {at} clients: service / bare Starlette",
                    ratio(name, f"service/{BARE}"),
                    0.5,
                    True,
                    floor=_decode_floor(ratio(name, f"{DECODE}/{BARE}")),
                )
            )
        if name.endswith("-1000rows"):
            found.append(
                Target(
                    f"{name} {at} clients: service rows/s / in-process rows/s",
                    ratio(name, "service rows/in-process rows"),
                    0.8,
                    True,
                )
            )
    for name in sorted(w):
        loop = w[name].get("open_loop")
        if loop and "80%" in loop["rates"]:
            p99 = [s["p99_ms"] for s in loop["rates"]["80%"]["slices"]]
            p50 = [s["p50_ms"] for s in loop["one_client"]["slices"]]
            floor = ""
            bare = _paired([s["p99_ms"] for s in loop.get("bare_rates", {}).get("80%", {}).get("slices", [])], p50, "/")
            if bare is not None:
                floor = f"the bare endpoint at the same rate: {bare:.1f}x (its p99 / this one-client p50)"
            found.append(
                Target(f"{name} open loop at 80%: p99 / one-client p50", _paired(p99, p50, "/"), 4, False, floor=floor)
            )
    if cuda:
        limits = w.get(resnet, {}).get("ceilings", {}).get("limit", {}).get("slices")
        raw = [max(s["ort_items_per_s"].values()) for s in limits] if limits else None
        found.append(
            Target(
                f"GPU {resnet} {at} clients: service / raw CUDA ORT best batch",
                _paired(_slices(w, resnet, ON, at, "rate"), raw, "/"),
                0.8,
                True,
            )
        )
    return found


def _decode_floor(ratio: float | None) -> str:
    return "" if ratio is None else f"bare + decode alone (no model): {ratio:.3f}x"


def table(results: dict[str, Any]) -> str:
    """Per workload: req/s and p50/p99 per contender and client count, the ceilings, the open loop."""
    lines: list[str] = []
    for name, r in results.items():
        closed = r["closed_loop"]
        contenders = list(closed)
        lines.append(
            f"\n{name}  ({r['content_type']}, {r['body_bytes']} bytes, {r['items_per_request']} item(s) "
            "per request; req/s  p50/p99 ms)"
        )
        lines.append(f"  {'clients':>7}  " + "  ".join(f"{c:>26}" for c in contenders))
        for clients in next(iter(closed.values())):
            cells = []
            for c in contenders:
                f = closed[c][clients]
                err = f" e{f['errors']}" if f["errors"] else ""
                cells.append(f"{f['rate']:>8.1f} {f['p50_ms']:>7.2f}/{f['p99_ms']:<7.2f}{err:>3}")
            lines.append(f"  {clients:>7}  " + "  ".join(f"{cell:>26}" for cell in cells))
        ceilings = r["ceilings"]
        if "limit" in ceilings:
            limit = ceilings["limit"]
            sweep = ", ".join(f"b{b} {v:.0f}" for b, v in limit["ort_items_per_s"].items())
            lines.append(f"  ONNX Runtime items/s: {sweep}")
            lines.append(
                f"  decode + preprocessing {limit['decode_ms_per_item']:.3f} ms/item; inference "
                f"{limit['infer_ms_per_item']:.3f} ms/item at best batch "
                f"{limit['best_batch']:.0f}"
            )
            lines.append(f"  pipeline limit {limit['pipeline_limit']:.1f} items/s (serial {limit['serial_limit']:.1f})")
        if "single_item_ms" in ceilings:
            lines.append(f"  pipeline single item {ceilings['single_item_ms']['median']:.3f} ms")
        if "rows_per_s" in ceilings:
            lines.append(
                f"  in-process rows/s {ceilings['rows_per_s']['median']:.0f}; service "
                f"{r['ratios'].get('service rows/in-process rows', float('nan')):.2f} of it"
            )
        for key, value in r["ratios"].items():
            lines.append(f"  {key}: {value:.3f}")
        loop = r.get("open_loop")
        if loop:
            one = loop["one_client"]
            lines.append(f"  open loop (capacity {loop['capacity']:.0f}/s; one client p50 {one['p50_ms']:.2f} ms):")
            for share, f in loop["rates"].items():
                lines.append(
                    f"    {share}: offered {f['offered']:.0f}/s, served {f['rate']:.0f}/s, "
                    f"p50 {f['p50_ms']:.2f} p95 {f['p95_ms']:.2f} p99 {f['p99_ms']:.2f} ms, "
                    f"errors {f['errors']}"
                )
            for share, f in loop.get("bare_rates", {}).items():
                lines.append(
                    f"    {share} to the bare endpoint: served {f['rate']:.0f}/s, p50 {f['p50_ms']:.2f} "
                    f"p99 {f['p99_ms']:.2f} ms"
                )
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str))


def write_plot(path: Path, results: dict[str, Any], title: str) -> None:
    """Throughput against clients (ceilings dashed) and p50/p99 latency against clients, one column per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 7.5), squeeze=False)
    for col, name in enumerate(names):
        r = results[name]
        top, bottom = axes[0][col], axes[1][col]
        for i, (contender, by_clients) in enumerate(r["closed_loop"].items()):
            clients = list(by_clients)
            colour = f"C{i}"
            top.plot(clients, [by_clients[c]["rate"] for c in clients], "o-", color=colour, label=contender)
            for key, style in (("p50_ms", "o-"), ("p99_ms", "x--")):
                values = [by_clients[c][key] for c in clients]
                bottom.plot(clients, values, style, color=colour, label=f"{contender} {key[:3]}")
        ceilings = r["ceilings"]
        items = r["items_per_request"]
        if "limit" in ceilings:
            top.axhline(ceilings["limit"]["pipeline_limit"] / items, color="k", ls="--", lw=1, label="pipeline limit")
        if "rows_per_s" in ceilings:
            top.axhline(ceilings["rows_per_s"]["median"] / items, color="k", ls="--", lw=1, label="in-process")
        top.set_title(name)
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks(clients, [str(c) for c in clients])
            ax.minorticks_off()
        top.set_ylabel("requests/s")
        top.set_ylim(bottom=0)
        bottom.set_yscale("log")
        bottom.set_xlabel("concurrent clients")
        bottom.set_ylabel("latency ms")
        top.legend(fontsize=7)
        bottom.legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
