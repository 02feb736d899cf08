"""beyond the queue, requests are refused at once (503 + Retry-After), before their body is read."""

from __future__ import annotations

import json
import threading
import time

import httpx

from tests.conftest import gradient_image, metric_value
from tests.hardening_support import WellBehavedClient, raw_connection, read_response


def test_a_flood_beyond_the_queue_is_refused_cheaply_while_others_are_served(make_repo, live_server):
    # Eight clients keep about 0.8 s of work queued at a model of about 0.1 s a run: over the bound of two
    # items, and over the 0.25 s in which a queue over its bound must clear.
    server = live_server(
        make_repo(("slow", 1), ("digits", 1)),
        max_batch_size=1,
        max_queue_size=2,
        max_queue_wait_s=0.25,
        max_items_per_request=1,
        retry_after_s=3,
    )
    image = gradient_image(1)
    refused: list[float] = []
    served: list[int] = []

    def flood() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for _ in range(4):
                started = time.perf_counter()
                response = http.post("/v1/models/slow/predict", content=image, headers={"Content-Type": "image/png"})
                if response.status_code == 503:
                    assert response.headers["Retry-After"] == "3"
                    assert response.json()["error"]["code"] == "queue_full"
                    refused.append(time.perf_counter() - started)
                else:
                    served.append(response.status_code)

    with WellBehavedClient(server.url, "digits") as client:
        threads = [threading.Thread(target=flood) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    client.assert_served()
    assert refused and served and set(served) == {200}
    assert sorted(refused)[len(refused) // 2] < 0.1, "a refusal should cost far less than a ~100 ms answer"


def test_a_full_queue_refuses_before_the_body_is_sent(make_repo, live_server):
    server = live_server(make_repo(("slow", 1)), max_batch_size=1, max_queue_size=1, max_items_per_request=1)
    image = gradient_image(2)
    holder = raw_connection(server.port)  # takes the one queue place and keeps it while it "uploads"
    holder.sendall(
        b"POST /v1/models/slow/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: %d\r\n\r\n" % len(image)
    )
    time.sleep(0.2)
    sock = raw_connection(server.port)
    sock.sendall(
        b"POST /v1/models/slow/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 1000000\r\n\r\n"
    )  # headers only: the million bytes never come

    status, headers, body = read_response(sock)

    assert status == 503 and headers["retry-after"]
    assert json.loads(body)["error"]["code"] == "queue_full"
    holder.sendall(image)
    assert read_response(holder)[0] == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    assert metric_value(metrics, "serving_requests_total", model="slow", outcome="rejected") == 1
