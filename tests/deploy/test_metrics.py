"""The alerts, the dashboard and the autoscaler watch metrics a running service really exports, and a real
Prometheus scraping a live service sees the alerts go pending when things go wrong."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import LiveServer, free_port, gradient_image, install_bundle, penguin
from tests.deploy_tools import (
    RULES,
    concrete,
    contract_metric_names,
    dashboard_expressions,
    dashboard_panels,
    exported_names,
    hpa_metric_names,
    metric_names,
    rendered,
    rule_expressions,
    tool,
)

pytestmark = pytest.mark.live_server

# A slow model's run takes about 100 ms: with this deadline every request to it times out (504),
# while the small models answer in a few milliseconds.
TIMEOUT_S = 0.08


@pytest.fixture(scope="module")
def service(bundle_library: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live service with healthy models, a model too slow for its deadline, and a corrupted bundle."""
    repo = tmp_path_factory.mktemp("deploy-models")
    for name in ("digits", "penguins", "slow"):
        install_bundle(bundle_library, repo, name, 1)
    corrupted = install_bundle(bundle_library, repo, "digits", 2)
    with (corrupted / "model.onnx").open("ab") as onnx:
        onnx.write(b"\0")  # its sha256 no longer matches the manifest: refused at load
    # a rollout policy, so the rollout metrics are exported too (its candidate is the refused bundle)
    policy = repo.parent / "rollout.yaml"
    policy.write_text(
        "models:\n  digits:\n    stable: 1\n    candidate: 2\n    stage: canary\n"
        "    steps:\n      - {regions: {us-west: 10}}\n    start: 2020-01-01T00:00:00Z\n"
    )
    server = LiveServer(
        repo,
        request_timeout_s=TIMEOUT_S,
        max_batch_size=4,
        regions=["us-west"],
        rollout=policy,
        state_path=repo.parent / "state.sqlite",
    ).start()
    yield server
    server.stop()


def send_traffic(url: str, rounds: int = 1) -> None:
    """Good predictions, client errors, an unknown model and requests that time out, concurrently."""

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            image = {"content": gradient_image(i), "headers": {"Content-Type": "image/png", "X-Region": "us-west"}}
            http.post("/v1/models/digits/predict", **image)
            http.post("/v1/models/slow/predict", **image)
            http.post("/v1/models/penguins/predict", json={"rows": [penguin()]})
            http.post("/v1/models/penguins/predict", json={"rows": [{"bill_length_mm": "long"}]})
            http.post("/v1/models/nope/predict", **image)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(4 * rounds)))


def used_metric_names() -> set[str]:
    expressions = [*rule_expressions(), *dashboard_expressions()]
    names = set().union(*(metric_names(e) for e in expressions))
    return names | hpa_metric_names(rendered("base"))


@pytest.fixture(scope="module")
def exported(service: LiveServer) -> set[str]:
    send_traffic(service.url)
    return exported_names(httpx.get(f"{service.url}/metrics").text)


def test_every_metric_the_deployment_watches_is_exported(exported):
    unknown = used_metric_names() - exported

    assert unknown == set(), "names in the rules, dashboard or HPA that no running service exports"


def test_service_exports_every_contract_metric(exported):
    assert contract_metric_names() - exported == set()


# -- a real Prometheus -------------------------------------------------------------------------


class Prometheus:
    """A real Prometheus server scraping one target every second and evaluating the given rules every second."""

    def __init__(self, workdir: Path, target: str, rules: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "fastprod-serving", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait(lambda: httpx.get(f"{self.url}/-/ready").status_code == 200, "Prometheus never became ready")
        self._wait(self._scraped, "Prometheus never scraped the service")

    def _scraped(self) -> bool:
        targets = httpx.get(f"{self.url}/api/v1/targets").json()["data"]["activeTargets"]
        return bool(targets) and targets[0]["health"] == "up"

    def _wait(self, condition: Any, message: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"Prometheus exited: see {self.log.name}"
            try:
                if condition():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AssertionError(message)

    def alerts(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/api/v1/alerts").json()["data"]["alerts"]

    def wait_for_alert(self, name: str, **labels: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def active() -> bool:
            found[:] = [
                a
                for a in self.alerts()
                if a["labels"]["alertname"] == name and all(a["labels"].get(k) == v for k, v in labels.items())
            ]
            return bool(found)

        self._wait(active, f"{name}{labels} never became active; alerts: {self.alerts()}")
        return found[0]

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}).json()
        assert body["status"] == "success", (promql, body)
        return body["data"]["result"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def prometheus(service: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    tool("prometheus")
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{service.port}", RULES)
    yield server
    server.stop()


def keep_sending(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        send_traffic(url)


def test_an_error_burst_puts_the_error_rate_alert_in_pending(service, prometheus):
    keep_sending(service.url, seconds=3.0)  # at least two scrapes see the timeouts grow

    alert = prometheus.wait_for_alert("FastprodHighErrorRate", model="slow")

    assert alert["state"] == "pending"  # `for: 5m` has not passed yet
    assert alert["labels"]["severity"] == "page"
    # nearly every request times out; on a fast machine the odd run beats the deadline
    assert re.fullmatch(r"slow: [0-9.]+% of predictions failed \(5xx\) over 5 minutes", alert["annotations"]["summary"])


def test_a_refused_bundle_fires_the_load_failure_alert(service, prometheus):
    alert = prometheus.wait_for_alert("FastprodModelLoadFailed", model="digits", reason="checksum")

    assert alert["state"] == "firing"


# What this test's traffic produces: requests of every outcome, batches, queues, a refused bundle.
# (Drift, OOD, rollout and feedback series need their own scenario, like the drift test below.)
TRAFFIC_METRICS = {
    "serving_requests_total",
    "serving_request_duration_seconds_bucket",
    "serving_queue_wait_seconds_bucket",
    "serving_inference_duration_seconds_bucket",
    "serving_batch_size_bucket",
    "serving_batch_size_sum",
    "serving_batch_size_count",
    "serving_queue_depth",
    "serving_model_info",
    "serving_model_load_failures_total",
}


def test_every_dashboard_query_over_traffic_metrics_returns_series(service, prometheus):
    keep_sending(service.url, seconds=2.0)
    queried, empty = 0, []
    for panel in dashboard_panels():
        for target in panel["targets"]:
            if metric_names(target["expr"]) <= TRAFFIC_METRICS:
                queried += 1
                if not prometheus.query(concrete(target["expr"], "30s")):
                    empty.append(f"{panel['title']}: {target['expr']}")

    assert queried >= 10
    assert empty == []


def test_drifted_inputs_put_the_drift_alert_in_pending(service, prometheus, exported):
    assert "serving_drift_score" in exported
    shifted = [penguin(bill_length_mm=90.0 + i % 7, flipper_length_mm=260.0) for i in range(64)]
    with httpx.Client(base_url=service.url, timeout=30) as http:
        for _ in range(40):
            http.post("/v1/models/penguins/predict", json={"rows": shifted})

    alert = prometheus.wait_for_alert("FastprodDriftHigh", model="penguins")

    assert alert["state"] == "pending"
