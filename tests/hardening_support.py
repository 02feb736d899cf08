"""What every hardening test checks besides its attack: a well-behaved client kept being served meanwhile."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx

from tests.conftest import gradient_image


class WellBehavedClient:
    """A thread that keeps asking ``/healthz`` and one small prediction, recording every status and latency.

    ``with WellBehavedClient(url, "digits") as client: ...attack...``, then
    ``client.assert_served(max_latency_s)``.
    """

    def __init__(self, url: str, model: str | None, interval_s: float = 0.05, timeout_s: float = 10.0) -> None:
        self.url = url
        self.model = model
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.results: list[tuple[str, int, float]] = []  # (what, status or -1 on error, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WellBehavedClient:
        self._thread.start()
        time.sleep(self.interval_s * 2)
        return self

    def __exit__(self, *exc: Any) -> None:
        deadline = time.monotonic() + self.timeout_s
        while len(self.results) < 2 and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)  # at least one whole round, however quick the attack was
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 5)

    def _run(self) -> None:
        image = gradient_image(7)
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as http:
            while not self._stop.is_set():
                self._timed("healthz", lambda: http.get("/healthz"))
                if self.model is not None:
                    self._timed(
                        "predict",
                        lambda: http.post(
                            f"/v1/models/{self.model}/predict", content=image, headers={"Content-Type": "image/png"}
                        ),
                    )
                self._stop.wait(self.interval_s)

    def _timed(self, what: str, call: Any) -> None:
        started = time.perf_counter()
        try:
            status = call().status_code
        except httpx.HTTPError:
            status = -1
        self.results.append((what, status, time.perf_counter() - started))

    def assert_served(self, max_latency_s: float = 2.0) -> None:
        assert self.results, "the well-behaved client sent nothing"
        failed = [r for r in self.results if r[1] != 200]
        assert not failed, f"the well-behaved client was refused or failed: {failed[:5]}"
        slowest = max(r[2] for r in self.results)
        assert slowest < max_latency_s, f"the well-behaved client waited {slowest:.2f} s (limit {max_latency_s} s)"


def raw_connection(port: int, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response read off a raw socket (to its Content-Length or the close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole response head: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (TimeoutError, ConnectionResetError):
        return False
