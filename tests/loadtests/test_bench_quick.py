"""``python -m loadtests.bench --quick``: the CI smoke run of the benchmark harness, and its open-loop client.

The quick run trains tiny example models and measures in slices of 0.05 s, so
its figures mean nothing; what it guards is that every code path
of the harness (building, serving, closed and open loop, ceilings, targets,
JSON and plot) still runs end to end.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from loadtests.loadgen import build_request, run_open_loop

ROOT = Path(__file__).resolve().parents[2]


def test_the_quick_bench_writes_every_section_and_a_plot(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads((tmp_path / "bench.json").read_text())
    assert {"machine", "run", "workloads", "targets"} <= set(document)
    assert document["machine"]["cpu_model"] and document["machine"]["onnxruntime"]
    workloads = document["workloads"]
    assert set(workloads) == {"resnet18@32", "digits", "penguins-1row", "penguins-1000rows"}
    for name, workload in workloads.items():
        assert {"closed_loop", "ceilings", "ratios"} <= set(workload), name
        for contender, by_clients in workload["closed_loop"].items():
            for figures in by_clients.values():
                assert figures["errors"] == 0, (name, contender, figures)
                assert len(figures["slices"]) >= 3 and figures["rate"] > 0
    assert set(workloads["resnet18@32"]["ceilings"]) == {"single_item_ms", "limit"}
    sweep = workloads["resnet18@32"]["ceilings"]["limit"]["ort_items_per_s"]
    assert [int(batch) for batch in sweep] == [1, 2, 4, 8, 16, 32, 64]
    assert set(workloads["digits"]["open_loop"]["rates"]) == {"50%", "80%"}
    # The floors: the bare endpoint that also decodes, and the bare endpoint under the same open loop.
    assert "bare + decode/bare Starlette" in workloads["digits"]["ratios"]
    assert "bare + decode/bare Starlette" in workloads["penguins-1row"]["ratios"]
    assert set(workloads["digits"]["open_loop"]["bare_rates"]) == {"50%", "80%"}
    assert "rows_per_s" in workloads["penguins-1000rows"]["ceilings"]
    assert all(t["passed"] is not None for t in document["targets"])  # every CPU target was measured
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PASS" in done.stdout or "FAIL" in done.stdout


async def _slow_server(delay_s: float) -> tuple[asyncio.AbstractServer, int]:
    """Answers each request ``delay_s`` after it arrives, one at a time per connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                length = int(next(line.split(b":")[1] for line in lines if line.startswith(b"content-length")))
                await reader.readexactly(length)
                await asyncio.sleep(delay_s)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_open_loop_latency_counts_from_the_intended_send_time() -> None:
    # One connection, answers take 20 ms, requests due every 10 ms: they queue in the client, and the
    # latency of the last ones must show that wait, not just the 20 ms each spends on the wire.
    async def scenario() -> tuple[list[float], float]:
        server, port = await _slow_server(0.02)
        request = build_request("127.0.0.1", port, "/", b"x", "text/plain")
        started = time.perf_counter()
        result = await run_open_loop("127.0.0.1", port, request, rate=100, seconds=0.3, connections=1)
        server.close()
        return result.latencies_ms, time.perf_counter() - started

    latencies, elapsed = asyncio.run(scenario())
    assert len(latencies) == 30
    assert min(latencies) >= 19
    assert max(latencies) > 250  # the 30th was due at 290 ms and answered at about 600 ms
    assert elapsed > 0.55


def test_a_closed_loop_of_several_requests_sends_them_in_turn_on_every_connection() -> None:
    # The rollout bench's floor walks a list of pinned requests: each connection sends them in order, from its own
    # offset.
    from loadtests.loadgen import run_load

    seen: dict[int, list[bytes]] = {}

    async def scenario() -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            paths = seen.setdefault(id(writer), [])
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    paths.append(head.split(b" ", 2)[1])
                    length = int(
                        next(
                            line.split(b":")[1]
                            for line in head.lower().split(b"\r\n")
                            if line.startswith(b"content-length")
                        )
                    )
                    await reader.readexactly(length)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        requests = [build_request("127.0.0.1", port, path, b"x", "text/plain") for path in ("/a", "/b")]
        result = await run_load(
            "127.0.0.1", port, requests, concurrency=4, seconds=0.2, max_requests=40, warmup_seconds=0
        )
        server.close()
        return result.requests

    assert asyncio.run(scenario()) == 40
    assert len(seen) == 4
    for paths in seen.values():
        assert all(a != b for a, b in zip(paths, paths[1:]))  # /a, /b, /a, ... or /b, /a, ...
    firsts = sorted(paths[0] for paths in seen.values())
    assert firsts == [b"/a", b"/a", b"/b", b"/b"]  # client i starts with request i % 2


def test_the_rollout_floor_pins_the_policy_share_of_requests_to_the_candidate_at_random() -> None:
    from loadtests.rollout_bench import pinned_at_random

    sequence = pinned_at_random(b"stable", b"candidate", 10.0)
    assert sequence == pinned_at_random(b"stable", b"candidate", 10.0)  # one fixed sequence: runs compare
    assert abs(sequence.count(b"candidate") / len(sequence) - 0.10) < 0.02
    runs = [len(run) for run in "".join("c" if r == b"candidate" else "s" for r in sequence).split("c") if run]
    assert max(runs) > 20  # not in turn: stretches of stable as random draws give them
    assert pinned_at_random(b"stable", b"candidate", 50.0).count(b"candidate") in range(1900, 2200)
