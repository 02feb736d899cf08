"""Several worker processes stay one service: one socket, one /metrics, one monitor, one readiness."""

from __future__ import annotations

import os
import shutil
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import gradient_image, install_bundle, metric_value
from tests.service.parallel.conftest import ServiceGroup

PNG = {"Content-Type": "image/png"}
REVIEWER = {"Authorization": "Bearer reviewer"}


def predict(group: ServiceGroup, model: str = "digits", seed: int = 0) -> httpx.Response:
    """One request on a fresh connection, so the kernel may hand it to any worker."""
    return httpx.post(
        f"{group.url}/v1/models/{model}/predict", content=gradient_image(seed % 7), headers=PNG, timeout=60
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(condition, timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_every_worker_serves_and_metrics_count_the_whole_pod(make_repo, service_group):
    group = service_group(make_repo(("digits", 1)))
    children = group.children()
    assert {"serving-w0", "serving-w1", "serving-control"} == set(children)
    before = {name: cpu_seconds(pid) for name, pid in children.items()}
    with ThreadPoolExecutor(8) as pool:
        statuses = [r.status_code for r in pool.map(lambda i: predict(group, seed=i), range(200))]
    assert statuses == [200] * 200
    gained = {name: cpu_seconds(pid) - before[name] for name, pid in children.items()}
    assert gained["serving-w0"] > 0.05 and gained["serving-w1"] > 0.05, gained  # both workers served

    text = httpx.get(f"{group.url}/metrics").text  # whichever worker answers speaks for all
    assert metric_value(text, "serving_requests_total", model="digits", outcome="ok") == 200
    assert metric_value(text, "serving_request_duration_seconds_count", model="digits") == 200
    assert metric_value(text, "serving_workers") == 2
    assert metric_value(text, "serving_model_info", model="digits", version="1") == 1  # max over workers, not 3


def test_drift_and_the_review_queue_see_every_workers_traffic(make_repo, service_group, tmp_path):
    group = service_group(
        make_repo(("digits", 1)),
        prediction_log="true",
        prediction_log_path=tmp_path / "log.sqlite",
        reviewer_token="reviewer",
    )
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: predict(group, seed=i), range(40)))
    assert {r.status_code for r in answers} == {200}

    def window_size() -> int:
        report = httpx.get(f"{group.url}/v1/models/digits/drift").json()
        return report["versions"][0]["window"]["size"]

    wait_until(lambda: window_size() == 40, what="the drift window to hold all 40 requests")
    page = httpx.get(f"{group.url}/v1/predictions?flagged=false&limit=100", headers=REVIEWER).json()
    assert page["total"] == 40, page
    logged = {item["request_id"] for item in page["predictions"]}
    assert {r.json()["request_id"] for r in answers} <= logged
    text = httpx.get(f"{group.url}/metrics").text
    assert metric_value(text, "serving_monitored_items_total", model="digits") == 40
    assert metric_value(text, "serving_control_dropped_total") == 0


def test_feedback_right_after_the_answer_finds_the_request(make_repo, service_group, tmp_path):
    group = service_group(
        make_repo(("digits", 1)), prediction_log="true", prediction_log_path=tmp_path / "l.sqlite", feedback_token="f"
    )
    for seed in range(6):  # each answered by either worker; the feedback may reach the other one
        body = predict(group, seed=seed).json()
        reply = httpx.post(
            f"{group.url}/v1/feedback",
            json={"request_id": body["request_id"], "label": body["predictions"][0]["label"]},
            headers={"Authorization": "Bearer f"},
        )
        assert reply.status_code == 200 and reply.json()["counted"] is True, reply.text
    report = httpx.get(f"{group.url}/v1/models/digits/drift").json()["versions"][0]
    assert report["performance"]["live_accuracy"] == 1.0 and report["performance"]["feedback"] == 6


def test_a_killed_worker_is_restarted_counted_and_awaited_by_readiness(make_repo, service_group):
    group = service_group(make_repo(("digits", 1)))
    victim = group.children()["serving-w1"]
    os.kill(victim, signal.SIGKILL)
    seen: set[int] = set()
    history: list[int] = []

    def readiness() -> int:
        """/readyz's status; 0 when the connection was reset (one the killed worker had accepted as it died)."""
        try:  # a fresh connection each time (urllib), as a kubelet's probe makes
            with urllib.request.urlopen(f"{group.url}/readyz", timeout=2) as reply:
                status = reply.status
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError:
            status = 0
        history.append(status)
        return status

    try:
        wait_until(lambda: seen.add(readiness()) or (503 in seen and 200 in seen), what="readiness to drop and return")
    except AssertionError as failure:
        raise AssertionError(f"{failure}; /readyz answered, in order: {history[:20]} ... {history[-20:]}") from None
    wait_until(lambda: readiness() == 200, what="readiness to come back")
    assert group.children()["serving-w1"] != victim
    assert metric_value(httpx.get(f"{group.url}/metrics").text, "serving_worker_restarts_total") == 1
    assert all(predict(group, seed=i).status_code == 200 for i in range(10))


def test_sigterm_drains_in_flight_requests_in_every_worker(make_repo, service_group):
    group = service_group(make_repo(("slow", 1)), max_batch_size=1, intra_op_threads=1)
    with ThreadPoolExecutor(6) as pool:
        pending = [pool.submit(predict, group, "slow", i) for i in range(6)]
        time.sleep(0.3)  # the requests are now queued or running in both workers
        group.process.send_signal(signal.SIGTERM)
        assert [f.result().status_code for f in pending] == [200] * 6
    assert group.process.wait(60) == 0


def test_hot_reload_reaches_every_worker(make_repo, service_group, bundle_library):
    repo = make_repo(("digits", 1))
    group = service_group(repo, watch_interval_s=0.1)

    def pinned_v2() -> set[int]:  # pinned, so it holds whatever new versions do by default
        url = f"{group.url}/v1/models/digits/versions/2/predict"
        return {httpx.post(url, content=gradient_image(1), headers=PNG).status_code for _ in range(12)}

    install_bundle(bundle_library, repo, "digits", 2)
    wait_until(lambda: pinned_v2() == {200}, what="version 2 in every worker")
    shutil.rmtree(repo / "digits" / "2")
    wait_until(lambda: pinned_v2() == {404}, what="version 2 gone from every worker")


def test_a_configuration_no_process_can_start_with_stops_the_group_with_an_error(make_repo, tmp_path):
    broken = tmp_path / "rollout.yaml"
    broken.write_text("models: [this is not a policy\n")
    group = ServiceGroup(make_repo(("digits", 1)), tmp_path / "service.log", 2, rollout=broken)
    try:
        assert group.process.wait(90) == 1  # as one process exits, rather than restarting forever
    finally:
        group.stop()
