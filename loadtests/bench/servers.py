"""The processes under test: the service (``python -m service``), the course-style handler, the bare endpoint
and the bare endpoint that also decodes.

All are started at once and waited for together (each service warms up its
models), each on its own free port, with the bench's work folder as its
working directory so the service's SQLite files (state, prediction log) land
there and not in the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.benchmark import HOST, ROOT, free_port
from service.models.runtime import cpu_quota


@dataclass
class ServerSpec:
    """How to start one server: ``python <args> --port P`` with ``env``, ready when ``ready_path`` answers 200."""

    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str | None = None  # None: ready once it accepts connections


def service(name: str, repo: Path, env: dict[str, str] | None = None) -> ServerSpec:
    """``python -m service`` with its defaults; only repository watching is off and logs are quiet, plus ``env``."""
    base = {"SERVING_WATCH_INTERVAL_S": "0", "SERVING_LOG_LEVEL": "warning"}
    args = ["-m", "service", "--models", str(repo), "--host", HOST]
    return ServerSpec(name, args, {**base, **(env or {})}, "/readyz")


def _uvicorn(app: str) -> list[str]:
    # The options python -m service gives uvicorn (service.http.connections.server_config): httptools, no access log,
    # and as many processes as the service runs by default (SERVING_WORKERS: the CPU quota), so that the
    # comparison is process for process.
    workers = str(cpu_quota())
    return [
        *("-m", "uvicorn", app, "--host", HOST, "--http", "httptools", "--no-access-log", "--log-level", "warning"),
        *("--workers", workers),
    ]


def bare() -> ServerSpec:
    return ServerSpec("bare", _uvicorn("loadtests.bare_app:app"))


def decode(repo: Path) -> ServerSpec:
    """The bare endpoint plus the service's own decoding of the body (``loadtests.decode_app``)."""
    return ServerSpec("decode", _uvicorn("loadtests.decode_app:app"), {"DECODE_MODELS": str(repo)})


def course(repo: Path, provider: str) -> ServerSpec:
    env = {"COURSE_MODELS": str(repo), "COURSE_PROVIDER": "cuda" if provider == "cuda" else "cpu"}
    return ServerSpec("course", _uvicorn("loadtests.course_app:app"), env)


@contextmanager
def running(specs: list[ServerSpec], work: Path, timeout: float = 300) -> Iterator[dict[str, int]]:
    """Start every server, wait until all are ready, yield ``{name: port}``; stop them all afterwards."""
    pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with ExitStack() as stack:
        started: list[tuple[ServerSpec, int, subprocess.Popen[bytes], Path]] = []
        for spec in specs:
            port = free_port()
            log = work / f"{spec.name}.log"
            proc = subprocess.Popen(
                [sys.executable, *spec.args, "--port", str(port)],
                cwd=work,
                env={**os.environ, "PYTHONPATH": pythonpath, **spec.env},
                stdout=subprocess.DEVNULL,
                stderr=stack.enter_context(log.open("wb")),
            )
            stack.callback(_stop, proc)
            started.append((spec, port, proc, log))
        deadline = time.monotonic() + timeout
        for spec, port, proc, log in started:
            _wait_ready(spec, port, proc, log, deadline)
        yield {spec.name: port for spec, port, _, _ in started}


def _wait_ready(spec: ServerSpec, port: int, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{spec.name} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if spec.ready_path is None:
                with urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=2):
                    return
            with urllib.request.urlopen(f"http://{HOST}:{port}{spec.ready_path}", timeout=2) as answer:
                if answer.status == 200:
                    return
        except urllib.error.HTTPError:
            if spec.ready_path is None:
                return  # it answers (404 on /): it is up
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{spec.name} did not become ready: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
