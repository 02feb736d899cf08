"""A store that hangs cannot hold threads: every call gives up within its timeout, and the store says it is down.

The servers here are real sockets owned by the test: one that accepts connections and never says a word, and a
forwarder to the local PostgreSQL that can go silent mid-conversation (both ends stay open, nothing moves).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from bundle.store import PostgresStore, StoreUnavailable


class SilentServer:
    """Accepts every connection on 127.0.0.1 and never answers (nor closes) any of them."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


class FreezingForwarder:
    """127.0.0.1:<port> -> the local PostgreSQL; after ``freeze()`` bytes stop moving both ways, sockets stay open."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target_port = target_port
        self.frozen = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.frozen.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.frozen.is_set():
                    time.sleep(0.05)  # hold the bytes: the peer waits for an answer that never comes
                target.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_calls_against_a_server_that_never_answers_all_fail_fast_instead_of_queueing(
    silent_server: SilentServer,
) -> None:
    """12 callers at once (feedback posts, a drift read, the rollout tick): none waits much past one timeout."""
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{silent_server.port}/state", timeout_s=1.0)
    outcomes: list[tuple[str, float]] = []

    def call() -> None:
        started = time.monotonic()
        try:
            store.query("SELECT 1")
            outcomes.append(("answered", time.monotonic() - started))
        except StoreUnavailable:
            outcomes.append(("unavailable", time.monotonic() - started))

    threads = [threading.Thread(target=call) for _ in range(12)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    took = time.monotonic() - started
    assert [what for what, _ in outcomes] == ["unavailable"] * 12
    # libpq waits at least 2 s for a connection; the 11 others gave up on the lock after the 1 s timeout
    assert took < 4.0, f"12 calls took {took:.1f} s: they queued behind the hung connection"
    assert sorted(seconds for _, seconds in outcomes)[-2] < 1.5
    assert not store.healthy and not store.up() and store.last_error


def test_a_server_that_goes_silent_mid_call_is_cut_off_at_the_timeout_and_reported_down_meanwhile(
    postgres_url: str,
) -> None:
    forwarder = FreezingForwarder()
    try:
        store = PostgresStore(postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{forwarder.port}"), timeout_s=1.5)
        assert store.ping() and store.up()
        forwarder.freeze()
        failure: list[BaseException] = []
        caller = threading.Thread(target=lambda: _record_failure(store, failure))
        started = time.monotonic()
        caller.start()
        time.sleep(1.2)  # past the stall limit (1 s), before the timeout (1.5 s)
        assert caller.is_alive() and store.healthy  # the call has not failed yet...
        assert store.up() is False and store.describe()["healthy"] is False  # ...but the store is reported down
        caller.join(timeout=10)
        took = time.monotonic() - started
        assert not caller.is_alive(), "the call is still waiting on a silent server"
        assert took < 3.0 and isinstance(failure[0], StoreUnavailable)
        assert "no answer within 1.5 s" in str(failure[0])
    finally:
        forwarder.close()


def _record_failure(store: PostgresStore, failure: list[BaseException]) -> None:
    try:
        store.query("SELECT 1")
    except BaseException as exc:  # the test asserts what it was
        failure.append(exc)
