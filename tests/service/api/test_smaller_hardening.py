"""The smaller items: a bundle still being copied is no load failure; the settings refuse a queue
smaller than a request; a multipart body may carry a preamble."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import pytest
from pydantic import ValidationError

from service.settings import ServiceSettings
from tests.conftest import image_bytes, metric_value
from tests.hardening_support import WellBehavedClient


def test_a_bundle_still_being_copied_is_not_counted_as_a_load_failure(bundle_library, make_repo, live_server):
    repo = make_repo(("digits", 1))
    target = repo / "penguins" / "1"
    target.mkdir(parents=True)
    source = bundle_library / "penguins" / "1"
    for item in source.iterdir():
        if item.name != "model.onnx":
            shutil.copy(item, target / item.name)
    onnx = (source / "model.onnx").read_bytes()
    stop = threading.Event()

    def copy_slowly() -> None:  # the way a plain `cp` of a large file looks to a scanner
        with open(target / "model.onnx", "wb") as out:
            step = max(1, len(onnx) // 40)
            for start in range(0, len(onnx), step):
                out.write(onnx[start : start + step])
                out.flush()
                time.sleep(0.05)
        stop.set()

    writer = threading.Thread(target=copy_slowly)
    writer.start()
    server = live_server(repo, watch_interval_s=0.2)
    with WellBehavedClient(server.url, "digits") as client:
        writer.join()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and httpx.get(f"{server.url}/readyz").status_code != 200:
            time.sleep(0.2)
    client.assert_served(max_latency_s=5)
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    assert metric_value(metrics, "serving_model_load_failures_total", model="penguins") == 0


def test_settings_refuse_a_queue_smaller_than_one_request():
    with pytest.raises(ValidationError, match="max_items_per_request"):
        ServiceSettings(max_batch_size=8, max_queue_size=16, max_items_per_request=64)


def test_a_multipart_body_with_a_preamble_is_accepted(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)))
    image = image_bytes()
    body = (
        b"This is the preamble; it is to be ignored.\r\n--XyZ\r\n"
        b'Content-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        + image
        + b"\r\n--XyZ--\r\n"
    )
    with WellBehavedClient(server.url, "digits") as client:
        response = httpx.post(
            f"{server.url}/v1/models/digits/predict",
            content=body,
            headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
        )
    client.assert_served()
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1
