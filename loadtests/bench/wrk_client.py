"""``--client wrk``: closed-loop slices driven by wrk (an independent C client) instead of the Python load generator.

wrk keeps ``clients`` keep-alive connections busy from one thread and spends
far less CPU per request than Python, which matters when the client shares
two cores with the server. It must be on PATH (``apt-get install wrk``); its
durations are whole seconds, so slices are rounded up to at least one second.
The open loop stays with ``loadtests.loadgen`` (wrk has no constant-rate mode).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SCRIPT = r"""
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "errors": %d, "seconds": %f, "p50_ms": %f, "p95_ms": %f, "p99_ms": %f}\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


class Wrk:
    """Runs wrk against one URL with one body; each call is one slice."""

    def __init__(self, work: Path) -> None:
        if not available():
            raise RuntimeError("--client wrk needs wrk on PATH (apt-get install wrk)")
        self.folder = Path(tempfile.mkdtemp(prefix="wrk-", dir=work))
        self.script = self.folder / "post.lua"
        self.script.write_text(SCRIPT)
        self._bodies: dict[bytes, Path] = {}

    def _body_file(self, body: bytes) -> Path:
        if body not in self._bodies:
            path = self.folder / f"body-{len(self._bodies)}"
            path.write_bytes(body)
            self._bodies[body] = path
        return self._bodies[body]

    def slice(self, url: str, body: bytes, content_type: str, clients: int, seconds: float) -> dict[str, float]:
        """Closed-loop figures for one slice: rate, p50/p95/p99 ms, requests, errors."""
        env = {**os.environ, "BENCH_BODY": str(self._body_file(body)), "BENCH_CONTENT_TYPE": content_type}
        duration = f"{max(1, math.ceil(seconds))}s"
        command = ["wrk", "-t", "1", "-c", str(clients), "-d", duration, "--timeout", "30s", "-s", str(self.script)]
        command.append(url)
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        line = next(line for line in done.stdout.splitlines() if line.startswith("BENCH "))
        figures = json.loads(line[len("BENCH ") :])
        figures["rate"] = figures["requests"] / figures["seconds"]
        return figures
