"""The entry points of the spawned processes: a worker (the whole API on the shared socket) and the control process."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys

import uvicorn

from service.settings import ServiceSettings

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
FORWARD_TIMEOUT_S = 30.0


def _detach(name: str, comm: str, settings: ServiceSettings) -> None:
    """Own process group (a terminal's Ctrl-C reaches the supervisor only, which stops the group in order);
    gone when the supervisor is gone, even killed; named ``comm`` in ps and /proc/<pid>/comm."""
    os.setpgrp()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        libc.prctl(PR_SET_NAME, comm.encode()[:15])
    except (OSError, AttributeError):  # not Linux: the supervisor's SIGTERM still stops it
        pass
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s [{name}]: %(message)s",
        stream=sys.stderr,
    )


def run_worker(settings: ServiceSettings, sock: socket.socket, role: object) -> None:
    from service.app import create_app
    from service.http.connections import server_config
    from service.parallel.forward import ForwardToControl
    from service.parallel.roles import WorkerRole

    assert isinstance(role, WorkerRole)
    _detach(f"worker {role.index}", f"serving-w{role.index}", settings)
    inner = create_app(settings, role=role)
    rollout = inner.state.components.rollout
    app = ForwardToControl(inner, role.group.control_socket, FORWARD_TIMEOUT_S, role.rollout_generation, rollout)
    uvicorn.Server(server_config(app, settings)).run(sockets=[sock])


def run_control(settings: ServiceSettings, role: object) -> None:
    from service.app import create_app
    from service.http.connections import server_config
    from service.parallel.roles import ControlRole

    assert isinstance(role, ControlRole)
    _detach("control", "serving-control", settings)
    app = create_app(settings, role=role)
    uvicorn.Server(server_config(app, settings, uds=role.group.control_socket)).run()
