"""The supervisor: one listening socket, N workers and one control process; restarts whoever dies.

It binds the socket before any worker starts, so every worker accepts on the same one (the kernel shares
the connections out). On SIGTERM or SIGINT it stops the workers first (each drains its in-flight requests,
``graceful_shutdown_s``), then the control process (which folds in what the workers sent last).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, multiprocess

from service.parallel.group import CONTROL, ProcessGroup, worker_name
from service.parallel.processes import run_control, run_worker
from service.parallel.roles import ControlRole, WorkerRole
from service.settings import ServiceSettings

log = logging.getLogger("service.parallel")

RESTART_BACKOFF_S = 1.0  # a process that keeps dying is restarted at most this often
POLL_S = 0.1
CHANNEL_BATCHES = 256  # batches of messages waiting for the control process (each worker sends ~50 a second)


def divided(settings: ServiceSettings, workers: int, quota: int) -> ServiceSettings:
    """Each worker's settings: ONNX Runtime and decoding threads divided so that workers x threads fits the quota."""
    share = max(1, quota // workers)
    return settings.model_copy(
        update={
            "workers": workers,
            "intra_op_threads": settings.intra_op_threads or share,
            "preprocess_threads": settings.preprocess_threads or share,
        }
    )


class Supervisor:
    def __init__(self, settings: ServiceSettings, workers: int, quota: int) -> None:
        self.settings = divided(settings, workers, quota)
        self.control_settings = self.settings.model_copy(update={"intra_op_threads": 1, "preprocess_threads": 1})
        self.workers = workers
        self.context = multiprocessing.get_context("spawn")
        self.run_dir = Path(tempfile.mkdtemp(prefix="serving-run-"))
        self.group = ProcessGroup(self.run_dir, workers)
        self.channel = self.context.Queue(CHANNEL_BATCHES)
        self.sent = self.context.Array("Q", workers, lock=False)
        self.rollout_generation = self.context.Value("Q", 0)
        registry = CollectorRegistry()
        self.restarts = Counter(
            "serving_worker_restarts", "Worker or control processes restarted after dying.", registry=registry
        )
        Gauge("serving_workers", "Worker processes per replica.", multiprocess_mode="max", registry=registry).set(
            workers
        )
        self.processes: dict[str, BaseProcess] = {}
        self.started_at: dict[str, float] = {}
        self.stopping = False
        self.started_once: set[str] = set()
        self.exit_code = 0

    def run(self) -> int:
        config = uvicorn.Config("service.app:create_app", host=self.settings.host, port=self.settings.port)
        self.sock = config.bind_socket()
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("%d workers and one control process on %s:%d", self.workers, self.settings.host, self.settings.port)
        try:
            self._start(CONTROL)
            for i in range(self.workers):
                self._start(worker_name(i))
            while not self.stopping:
                time.sleep(POLL_S)
                self._restart_dead()
            self._shutdown()
        finally:
            self.sock.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)
            folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
        return self.exit_code

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _start(self, member: str) -> None:
        if member == CONTROL:
            role: object = ControlRole(self.group, self.channel, self.sent, self.rollout_generation)
            process = self.context.Process(target=run_control, args=(self.control_settings, role), name=member)
        else:
            index = int(member.split("-")[1])
            capacity = self.settings.monitor_queue_size
            role = WorkerRole(index, self.group, self.channel, self.sent, self.rollout_generation, capacity)
            process = self.context.Process(target=run_worker, args=(self.settings, self.sock, role), name=member)
        process.start()
        self.processes[member] = process
        self.started_at[member] = time.monotonic()

    def _restart_dead(self) -> None:
        for member, process in list(self.processes.items()):
            if process.is_alive():
                if member not in self.started_once and self.group.has_started(member):
                    self.started_once.add(member)
                continue
            if self.stopping:
                continue
            if member not in self.started_once:
                if not self.group.has_started(member):
                    # it died before it ever started: a configuration it cannot start with; as one process
                    # would, stop (a death after starting leaves its marker behind, so a worker killed before
                    # this loop saw it start still counts as started)
                    log.error("%s exited with %s before it started; stopping", member, process.exitcode)
                    self.exit_code = 1
                    self.stopping = True
                    return
                self.started_once.add(member)
            self.group.stopped(member)  # readiness drops at once, not only when the replacement starts
            if time.monotonic() - self.started_at[member] < RESTART_BACKOFF_S:
                continue
            log.error("%s (pid %s) exited with %s; restarting it", member, process.pid, process.exitcode)
            self._forget(member, process)
            self.restarts.inc()
            self._start(member)

    def _forget(self, member: str, process: BaseProcess) -> None:
        self.group.stopped(member)
        if process.pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(process.pid)

    def _shutdown(self) -> None:
        """Workers first (each drains), then the control process."""
        log.info("stopping: draining the workers")
        workers = [p for m, p in self.processes.items() if m != CONTROL]
        self._terminate(workers, self.settings.graceful_shutdown_s + 5.0)
        self._terminate([self.processes[CONTROL]], 15.0)

    def _terminate(self, processes: list[BaseProcess], timeout_s: float) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("%s did not stop in %.0f s; killing it", process.name, timeout_s)
                process.kill()
                process.join(5.0)
