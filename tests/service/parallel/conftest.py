"""``python -m service`` as users run it, with several worker processes, on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[3]


class ServiceGroup:
    """A started ``python -m service`` (supervisor, workers, control process); ``SERVING_*`` from ``env``."""

    def __init__(self, repo: Path, log: Path, workers: int = 2, **env: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        values = {
            "SERVING_WORKERS": str(workers),
            "SERVING_WATCH_INTERVAL_S": "0",
            "SERVING_MAX_BATCH_SIZE": "8",
            "SERVING_PREDICTION_LOG": "false",
            **{f"SERVING_{k.upper()}": str(v) for k, v in env.items()},
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "--models", str(repo), "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, **values, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 90.0) -> ServiceGroup:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "never ready:\n" + self.log.read_text()
            time.sleep(0.05)

    def children(self) -> dict[str, int]:
        """Each process of the group by name (serving-w0, serving-w1, ..., serving-control) -> pid."""
        pids = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        named = {}
        for pid in pids:
            try:
                named[Path(f"/proc/{pid}/comm").read_text().strip()] = int(pid)
            except OSError:
                pass
        return {name: pid for name, pid in named.items() if name.startswith("serving-")}

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture
def service_group(tmp_path: Path) -> Iterator[Callable[..., ServiceGroup]]:
    """``service_group(repo, workers=2, **settings)`` -> a ready ServiceGroup, stopped at the end of the test."""
    groups: list[ServiceGroup] = []

    def start(repo: Path, workers: int = 2, **env: Any) -> ServiceGroup:
        group = ServiceGroup(repo, tmp_path / f"service-{len(groups)}.log", workers, **env)
        groups.append(group)
        return group.wait_ready()

    yield start
    for group in groups:
        group.stop()
