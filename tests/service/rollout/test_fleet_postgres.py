"""Two real service processes sharing one PostgreSQL database: fleet-wide decisions, and a store that goes away.

The store is reached through a TCP forwarder that the test owns, so "PostgreSQL
went down" is real for the services (connections cut, new ones refused)
without touching the machine's shared server.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, gradient_image, metric_value

pytestmark = [pytest.mark.live_server, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "fleet-token"
POLL_S = 0.5
POLICY = """
models:
  digits:
    stable: 1
    candidate: 2
    stage: canary
    steps:
      - {regions: {"*": 100}}
    start: 2020-01-01T00:00:00Z
"""


class TcpForwarder:
    """127.0.0.1:<port> -> 127.0.0.1:5432, in its own thread and event loop; ``stop`` cuts every connection."""

    def __init__(self, target_port: int = 5432) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def start(self) -> TcpForwarder:
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._stop())

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port, reuse_address=True)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)


class ServiceProcess:
    """``python -m service`` on a free port."""

    def __init__(self, models: Path, rollout: Path, state_url: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "SERVING_MODELS": str(models),
            "SERVING_PORT": str(self.port),
            "SERVING_HOST": "127.0.0.1",
            "SERVING_ROLLOUT": str(rollout),
            "SERVING_STATE_URL": state_url,
            "SERVING_ADMIN_TOKEN": TOKEN,
            "SERVING_ROLLOUT_POLL_S": str(POLL_S),
            "SERVING_ROLLOUT_TICK_S": "0.1",
            "SERVING_WATCH_INTERVAL_S": "0",
            "SERVING_INTRA_OP_THREADS": "1",
            "SERVING_PREPROCESS_THREADS": "1",
            "SERVING_MAX_BATCH_SIZE": "4",
            "SERVING_LOG_LEVEL": "warning",
        }
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited: {self.log.read_text()}")
            try:
                if request(self.url + "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the service did not become ready: {self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.process.kill()


def request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def version_for(service: ServiceProcess, key: str) -> str:
    status, headers, body = request(
        service.url + "/v1/models/digits/predict",
        "POST",
        gradient_image(1),
        {"Content-Type": "image/png", "X-Request-Key": key, "X-Region": "marin"},
    )
    assert status == 200, body
    return headers["x-model-version"]


def admin(service: ServiceProcess, action: str) -> int:
    return request(
        f"{service.url}/v1/rollouts/digits/{action}",
        "POST",
        b'{"reason": "fleet test"}',
        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )[0]


def wait_until(check: Callable[[], bool], timeout_s: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
def fleet(postgres_url: str, make_repo: Callable[..., Path], tmp_path: Path) -> Iterator[Any]:
    repo = make_repo(("digits", 1), ("digits", 2))
    rollout = tmp_path / "rollout.yaml"
    rollout.write_text(POLICY)
    forwarder = TcpForwarder().start()
    state_url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{forwarder.port}")
    services = [ServiceProcess(repo, rollout, state_url, tmp_path / f"service-{i}.log") for i in range(2)]
    try:
        for service in services:
            service.wait_ready()
        yield forwarder, services
    finally:
        for service in services:
            service.stop()
        forwarder.close()


def test_two_processes_on_one_postgres_obey_each_other_and_survive_the_store_going_down(fleet: Any) -> None:
    forwarder, (a, b) = fleet
    assert version_for(a, "user-1") == version_for(b, "user-1") == "2"

    # a rollback on one replica is obeyed by the other within the poll interval
    assert admin(a, "rollback") == 200
    assert version_for(a, "user-1") == "1"
    # fresh connections, so that every worker process of b is asked (SERVING_WORKERS)
    took = wait_until(lambda: all(version_for(b, "user-1") == "1" for _ in range(6)), timeout_s=POLL_S + 2.0)
    assert took <= POLL_S + 1.0, f"the other replica took {took:.2f} s"

    # the store goes away: predictions keep succeeding on the last known state, and it is reported
    forwarder.stop()
    for service in (a, b):
        assert all(version_for(service, f"user-{i}") == "1" for i in range(20))
    wait_until(lambda: b"serving_state_store_up 0.0" in request(b.url + "/metrics")[2], timeout_s=10)

    # each worker process of b reports what its own last poll found: within one poll interval
    def degraded() -> bool:  # still ready, on the last known state, and saying so
        status, _, body = request(b.url + "/readyz")
        return status == 200 and b'"healthy":false' in body and b"last known rollout state" in body

    # fresh connections: every worker process of b, each after its own next poll
    wait_until(lambda: all(degraded() for _ in range(6)), timeout_s=POLL_S + 3.0)
    assert admin(a, "promote") == 503  # a change that could not reach the fleet is refused, not half-made

    # the store returns: both catch up, and a change made on either reaches the other
    forwarder.start()
    wait_until(lambda: b"serving_state_store_up 1.0" in request(b.url + "/metrics")[2], timeout_s=10)
    assert admin(a, "promote") == 200
    wait_until(lambda: version_for(b, "user-1") == "2", timeout_s=POLL_S + 2.0)
    history = request(b.url + "/v1/rollouts/digits/history")
    import json

    actions = [entry["action"] for entry in json.loads(history[2])["history"]]
    assert actions[:2] == ["promote", "rollback"]
    assert (
        metric_value(request(b.url + "/metrics")[2].decode(), "serving_rollout_stage", model="digits", stage="promoted")
        == 1
    )


def test_an_automatic_rollback_while_the_store_is_down_is_applied_at_once_and_written_when_it_returns(
    postgres_url: str, tmp_path: Path
) -> None:
    import torch

    from tests.bundle_factory import _handmade_image_bundle
    from tests.service.rollout.test_rollout_service import (
        ADMIN,
        FAST,
        canary,
        predict,
        rollout_of,
        serve,
        wait_for,
        write_policy,
    )

    torch.set_num_threads(1)
    repo = tmp_path / "models"
    _handmade_image_bundle(repo, "digits", 1, seed=1)
    _handmade_image_bundle(repo, "digits", 5, seed=1, fails_on_real_input=True)
    policy_file = write_policy(
        tmp_path / "rollout.yaml", canary(5, '{"*": 50}', "{min_requests: 10, max_error_rate: 0.05}")
    )
    forwarder = TcpForwarder().start()
    state_url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{forwarder.port}")
    try:
        with serve(repo, rollout=policy_file, state_url=state_url) as client:
            assert rollout_of(client)["stage"] == "canary"
            forwarder.stop()
            for i in range(200):
                predict(client, f"user-{i}", seed=i)
                if rollout_of(client)["stage"] == "rolled_back":
                    break
            listing = client.get("/v1/rollouts").json()
            assert listing["models"]["digits"]["stage"] == "rolled_back"  # obeyed here at once
            assert listing["state_store"]["healthy"] is False and listing["state_store"]["pending_writes"] >= 1
            assert {predict(client, f"k{i}").headers["X-Model-Version"] for i in range(10)} == {"1"}
            forwarder.start()
            wait_for(lambda: client.get("/v1/rollouts").json()["state_store"]["pending_writes"] == 0, timeout_s=10)
            history = client.get("/v1/rollouts/digits/history", headers=ADMIN).json()["history"]
            assert history[0]["action"] == "rollback" and history[0]["reason"].startswith("error_rate")
        # another replica starting now reads the rollback from the store
        with serve(repo, rollout=policy_file, state_url=state_url, **FAST) as other:
            assert rollout_of(other)["stage"] == "rolled_back"
    finally:
        forwarder.close()


def put_policy(service: ServiceProcess, policy: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any]]:
    import json

    status, _, body = request(
        f"{service.url}/v1/rollouts/digits",
        "PUT",
        json.dumps(policy).encode(),
        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **headers},
    )
    return status, json.loads(body)


def state_of(service: ServiceProcess) -> dict[str, Any]:
    import json

    return json.loads(request(f"{service.url}/v1/rollouts/digits")[2])


def test_a_put_on_one_replica_and_a_rollback_on_another_end_in_one_state_and_both_are_audited(fleet: Any) -> None:
    """The rollback, made from the second replica's stale copy, lands on top of the new plan instead of erasing it;
    a change that no longer applies (a canary PUT from a copy that has not seen the rollback) is refused, 409."""
    import json

    _, (a, b) = fleet
    new_plan = {
        "stable": 1,
        "candidate": 2,
        "stage": "canary",
        "start": "2020-01-01T00:00:00Z",
        "steps": [{"regions": {"campsite-1": 100}}],
        "reason": "one campsite only",
    }
    status, written = put_policy(a, new_plan)
    assert status == 200 and written["revision"] == 1  # the first decision over the file's plan
    assert admin(b, "rollback") == 200  # within milliseconds: b has not polled since the PUT

    def converged() -> bool:
        states = [state_of(service) for service in (a, b)]
        return all(s["revision"] == 2 for s in states)

    wait_until(converged, timeout_s=POLL_S + 3.0)
    for service in (a, b):
        state = state_of(service)
        assert state["stage"] == "rolled_back"
        assert state["policy"]["steps"] == [{"regions": {"campsite-1": 100.0}, "hold": None}]  # the PUT's plan kept

    stale = put_policy(b, {**new_plan, "steps": [{"regions": {"*": 100}}]}, **{"If-Match": '"1"'})
    assert stale[0] == 409 and stale[1]["error"]["code"] == "conflict"
    assert "revision 2" in stale[1]["error"]["message"]
    history = json.loads(request(b.url + "/v1/rollouts/digits/history")[2])["history"]
    attempts = [(entry["action"], entry["outcome"], entry["revision"]) for entry in history[:3]]
    assert attempts == [("replace", "conflict", 2), ("rollback", "applied", 2), ("replace", "applied", 1)]
    assert state_of(a)["stage"] == state_of(b)["stage"] == "rolled_back"


def test_a_rollback_made_while_cut_off_never_overwrites_a_newer_decision_when_the_store_returns(
    postgres_url: str, tmp_path: Path
) -> None:
    """Replica a, cut off, rolls candidate 5 back on its own; meanwhile an operator moves the fleet to candidate 2 on
    replica b. When a reconnects its rollback is recorded as superseded, not written, and a follows b's plan."""
    import torch

    from tests.bundle_factory import _handmade_image_bundle
    from tests.service.rollout.test_rollout_service import (
        ADMIN,
        FAST,
        PAST,
        canary,
        predict,
        rollout_of,
        serve,
        wait_for,
        write_policy,
    )

    torch.set_num_threads(1)
    repo = tmp_path / "models"
    for version in (1, 2):
        _handmade_image_bundle(repo, "digits", version, seed=1)
    _handmade_image_bundle(repo, "digits", 5, seed=1, fails_on_real_input=True)
    policy_file = write_policy(
        tmp_path / "rollout.yaml", canary(5, '{"*": 50}', "{min_requests: 10, max_error_rate: 0.05}")
    )
    forwarder = TcpForwarder().start()
    cut_off_url = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{forwarder.port}")
    new_plan = {"stable": 1, "candidate": 2, "stage": "canary", "start": PAST, "steps": [{"regions": {"*": 10}}]}
    try:
        with (
            serve(repo, rollout=policy_file, state_url=cut_off_url) as a,
            serve(repo, rollout=policy_file, state_url=postgres_url, **FAST) as b,
        ):
            forwarder.stop()
            for i in range(200):
                predict(a, f"user-{i}", seed=i)
                if rollout_of(a)["stage"] == "rolled_back":
                    break
            assert rollout_of(a)["source"] == "pending"  # in force on a at once, not written yet
            assert b.put("/v1/rollouts/digits", headers=ADMIN, json=new_plan).status_code == 200

            forwarder.start()
            wait_for(lambda: rollout_of(a)["candidate"] == 2, timeout_s=10)
            state = rollout_of(a)
            assert (state["stage"], state["source"], state["revision"]) == ("canary", "store", 1)
            assert a.get("/v1/rollouts").json()["state_store"]["pending_writes"] == 0
            assert rollout_of(b)["candidate"] == 2 and rollout_of(b)["revision"] == 1
            history = b.get("/v1/rollouts/digits/history").json()["history"]
            attempts = [(e["action"], e["outcome"], e["actor"], e["revision"]) for e in history[:2]]
            assert attempts == [("rollback", "superseded", "guardrails", 1), ("replace", "applied", "admin", 1)]
            assert history[0]["reason"].startswith("error_rate")
    finally:
        forwarder.close()
