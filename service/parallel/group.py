"""The process group's shared run folder: who has started, so that any worker's ``/readyz`` speaks for all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

CONTROL = "control"


class ProcessGroup:
    """``workers`` workers and one control process; each marks itself started with a file in ``run_dir``."""

    def __init__(self, run_dir: Path, workers: int) -> None:
        self.run_dir = run_dir
        self.workers = workers

    @property
    def control_socket(self) -> str:
        return str(self.run_dir / "control.sock")

    def _marker(self, member: str) -> Path:
        return self.run_dir / f"{member}.started"

    def started(self, member: str) -> None:
        self._marker(member).write_text(str(os.getpid()))

    def stopped(self, member: str) -> None:
        self._marker(member).unlink(missing_ok=True)

    def has_started(self, member: str) -> bool:
        return self._marker(member).exists()

    def problems(self) -> list[str]:
        """What keeps the group from being ready: members not started (yet, or again after a restart)."""
        waiting = [m for m in [CONTROL, *(worker_name(i) for i in range(self.workers))] if not self._marker(m).exists()]
        return [f"waiting for {', '.join(waiting)} to start"] if waiting else []


def worker_name(index: int) -> str:
    return f"worker-{index}"


def use_multiprocess_metrics() -> Path:
    """A fresh folder for prometheus-client's multiprocess files, in the environment every child inherits.
    Call it before anything imports prometheus-client: the library picks its value store at import."""
    folder = Path(tempfile.mkdtemp(prefix="serving-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder
