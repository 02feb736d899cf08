"""A real uvicorn server under concurrent load: batching, back-pressure, hot reload, graceful shutdown."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import free_port, gradient_image, install_bundle, metric_value

ROOT = Path(__file__).resolve().parents[2]


def post_image(http: httpx.Client, model: str, image: bytes, path: str | None = None) -> httpx.Response:
    return http.post(path or f"/v1/models/{model}/predict", content=image, headers={"Content-Type": "image/png"})


def concurrently(n_threads: int, task, items) -> list:
    with ThreadPoolExecutor(n_threads) as pool:
        return list(pool.map(task, items))


def test_concurrent_requests_form_batches_and_match_one_at_a_time_results(make_repo, live_server):
    server = live_server(make_repo(("steady", 1)), max_batch_size=8)
    images = [gradient_image(i) for i in range(12)]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        alone = [post_image(http, "steady", img).json()["predictions"][0]["probabilities"] for img in images]
    local = threading.local()

    def predict(i: int) -> dict:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=server.url, timeout=30)
        response = post_image(local.http, "steady", images[i % len(images)])
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0]["probabilities"]

    together = concurrently(12, predict, range(48))

    for i, probabilities in enumerate(together):
        np.testing.assert_allclose(list(probabilities.values()), list(alone[i % len(images)].values()), atol=1e-6)
    metrics = httpx.get(f"{server.url}/metrics").text
    runs = metric_value(metrics, "serving_batch_size_count", model="steady")
    single = metric_value(metrics, "serving_batch_size_bucket", model="steady", le="1.0")
    assert runs > single, "every run had one item: no batch formed"
    assert metric_value(metrics, "serving_batch_size_sum", model="steady") == len(images) + 48


def test_full_queue_answers_503_with_retry_after(make_repo, live_server):
    server = live_server(
        make_repo(("slow", 1)), max_batch_size=1, max_queue_size=1, max_items_per_request=1, retry_after_s=2
    )

    def predict(i: int) -> httpx.Response:
        return post_image(httpx, "slow", gradient_image(i), path=f"{server.url}/v1/models/slow/predict")

    responses = concurrently(6, predict, range(6))

    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["Retry-After"] == "2"
    assert rejected.json()["error"]["code"] == "queue_full"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert metric_value(metrics, "serving_requests_total", model="slow", outcome="rejected") == statuses.count(503)


def test_expired_requests_answer_504_and_are_never_run(make_repo, live_server):
    server = live_server(make_repo(("slow", 1)), max_batch_size=1, request_timeout_s=0.25)

    def predict(i: int) -> httpx.Response:
        return post_image(httpx, "slow", gradient_image(i), path=f"{server.url}/v1/models/slow/predict")

    responses = concurrently(8, predict, range(8))

    statuses = [r.status_code for r in responses]
    # a request whose wait would pass the deadline is refused at admission (503); one that expires queued is 504
    assert set(statuses) <= {200, 503, 504} and {503, 504} & set(statuses), statuses
    if 504 in statuses:
        assert next(r for r in responses if r.status_code == 504).json()["error"]["code"] == "deadline_exceeded"
    metrics = httpx.get(f"{server.url}/metrics").text
    # refused requests never run; one that expired in the queue is dropped unrun, one whose deadline passed while its
    # batch ran was run (on a fast machine that can be every 504), so the runs are at most the 200s and the 504s
    assert metric_value(metrics, "serving_batch_size_count", model="slow") <= statuses.count(200) + statuses.count(504)
    assert metric_value(metrics, "serving_requests_total", model="slow", outcome="timeout") == statuses.count(504)


def test_hot_reload_under_load_fails_no_request(make_repo, live_server, bundle_library):
    repo = make_repo(("digits", 1))
    # about swapping under load: the new version takes unpinned traffic at once (SERVING_NEW_VERSIONS=latest)
    server = live_server(repo, watch_interval_s=0.1, new_versions="latest")
    statuses: list[int] = []
    versions: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                response = post_image(http, "digits", gradient_image(len(statuses) % 5))
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.append(response.json()["version"])

    def wait_for_version(version: int) -> None:
        deadline = time.monotonic() + 20
        while not versions or versions[-1] != version:
            assert time.monotonic() < deadline, f"version {version} never answered"
            time.sleep(0.02)

    clients = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        wait_for_version(1)
        install_bundle(bundle_library, repo, "digits", 2)
        wait_for_version(2)
        shutil.rmtree(repo / "digits" / "2")
        wait_for_version(1)
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in clients:
            thread.join()

    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert {1, 2} <= set(versions)


def test_sigterm_lets_queued_and_in_flight_requests_finish(make_repo):
    repo = make_repo(("slow", 1))
    port = free_port()
    env = {
        **os.environ,
        "SERVING_INTRA_OP_THREADS": "1",
        "SERVING_MAX_BATCH_SIZE": "1",
        "SERVING_WATCH_INTERVAL_S": "0",
        "SERVING_PREPROCESS_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--models", str(repo), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(0.1)

        with ThreadPoolExecutor(5) as pool:
            pending = [
                pool.submit(post_image, httpx, "slow", gradient_image(i), f"{url}/v1/models/slow/predict")
                for i in range(5)
            ]
            while metric_value(httpx.get(f"{url}/metrics").text, "serving_queue_depth", model="slow") < 3:
                time.sleep(0.01)  # most requests are now waiting in the queue
            process.send_signal(signal.SIGTERM)
            responses = [p.result() for p in pending]

        assert [r.status_code for r in responses] == [200] * 5
        # uvicorn re-raises the signal once it has shut down cleanly, so "killed by SIGTERM" is a clean exit here.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "draining every batcher" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
