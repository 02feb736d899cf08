"""The model registry: verified loading, refusals, readiness, and watching the repository."""

from __future__ import annotations

import json
import logging
import shutil
import time

import onnxruntime as ort
import pytest

from tests.conftest import image_bytes, install_bundle, metric_value, penguin


def predict_digits(client, **kw):
    return client.post("/v1/models/digits/predict", content=image_bytes(), headers={"Content-Type": "image/png"}, **kw)


def registry_of(client):
    return client.app.state.components.registry


def refresh(client, settled_only: bool = True) -> None:
    """One repository scan, run on the app's own event loop."""
    client.portal.call(lambda: registry_of(client).refresh(settled_only=settled_only))


def wait_until(condition, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def corrupt(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# -- verified loading and refusals -------------------------------------------------------------


def test_bundle_with_a_wrong_sha256_is_refused_and_the_others_keep_serving(make_repo, make_client, caplog):
    repo = make_repo(("digits", 1), ("penguins", 1))
    corrupt(repo / "digits" / "1" / "model.onnx")

    with caplog.at_level(logging.ERROR, logger="service.models.registry"):
        client = make_client(repo)

    assert "refused bundle digits v1 (checksum)" in caplog.text and "sha256 mismatch" in caplog.text
    assert client.post("/v1/models/penguins/predict", json={"rows": [penguin()]}).status_code == 200
    assert predict_digits(client).status_code == 503
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "serving_model_load_failures_total", model="digits", reason="checksum") == 1


def test_bundle_without_learner_pkl_serves_since_the_service_never_reads_it(make_repo, make_client):
    repo = make_repo(("digits", 1))
    (repo / "digits" / "1" / "learner.pkl").unlink()

    client = make_client(repo)

    assert predict_digits(client).status_code == 200


def test_a_learner_pkl_that_was_tampered_with_is_still_refused(make_repo, make_client):
    repo = make_repo(("digits", 1))
    corrupt(repo / "digits" / "1" / "learner.pkl")

    client = make_client(repo)

    assert predict_digits(client).status_code == 503


def test_readiness_fails_naming_the_model_whose_only_version_was_refused(make_repo, make_client):
    repo = make_repo(("digits", 1), ("penguins", 1))
    corrupt(repo / "digits" / "1" / "model.onnx")

    response = make_client(repo).get("/readyz")

    assert response.status_code == 503
    assert "'digits' has no loaded version" in response.json()["error"]["message"]
    assert "sha256 mismatch" in response.json()["error"]["message"]


def test_a_refused_version_does_not_stop_the_model_serving_its_good_version(make_repo, make_client):
    repo = make_repo(("digits", 1), ("digits", 2))
    corrupt(repo / "digits" / "2" / "model.onnx")

    client = make_client(repo)

    assert client.get("/readyz").status_code == 200
    assert predict_digits(client).json()["version"] == 1
    refused = client.get("/v1/models/digits").json()["refused"]
    assert refused[0]["version"] == 2 and refused[0]["reason"] == "checksum"


def test_bundle_whose_manifest_names_another_version_is_refused(make_repo, make_client):
    repo = make_repo(("digits", 1))
    shutil.copytree(repo / "digits" / "1", repo / "digits" / "5")

    client = make_client(repo)

    (refusal,) = client.get("/v1/models/digits").json()["refused"]
    assert refusal["version"] == 5 and refusal["reason"] == "manifest"
    assert "the folder says digits v5" in refusal["message"]


def test_bundle_without_a_manifest_is_refused(make_repo, make_client):
    repo = make_repo(("digits", 1))
    (repo / "digits" / "3").mkdir()

    client = make_client(repo)

    assert client.get("/v1/models/digits").json()["refused"][0]["reason"] == "manifest"
    assert predict_digits(client).json()["version"] == 1


def test_unloadable_onnx_with_a_matching_sha256_is_refused_as_onnx(make_repo, make_client):
    from bundle.manifest import read_manifest, sha256_file, write_manifest

    repo = make_repo(("digits", 1))
    bundle = repo / "digits" / "1"
    (bundle / "model.onnx").write_bytes(b"not a model")
    manifest = read_manifest(bundle)
    manifest.files["model.onnx"] = sha256_file(bundle / "model.onnx")
    write_manifest(bundle, manifest)

    client = make_client(repo)

    assert client.get("/v1/models/digits").json()["refused"][0]["reason"] == "onnx"


def test_empty_repository_is_not_ready(tmp_path, make_client):
    response = make_client(tmp_path).get("/readyz")

    assert response.status_code == 503
    assert "no models found" in response.json()["error"]["message"]


def test_model_names_setting_serves_only_that_subset(make_repo, make_client):
    client = make_client(make_repo(("digits", 1), ("penguins", 1)), model_names="penguins")

    assert [m["name"] for m in client.get("/v1/models").json()["models"]] == ["penguins"]
    assert predict_digits(client).status_code == 404


def test_configured_model_missing_from_the_repository_keeps_the_service_unready(make_repo, make_client):
    client = make_client(make_repo(("penguins", 1)), model_names=["penguins", "digits"])

    response = client.get("/readyz")

    assert response.status_code == 503
    assert "'digits'" in response.json()["error"]["message"]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_cuda_requested_but_not_obtained_fails_readiness_with_the_reason(make_repo, make_client):
    client = make_client(make_repo(("penguins", 1)), provider="cuda")

    response = client.get("/readyz")

    assert response.status_code == 503
    assert "provider cuda was requested" in response.json()["error"]["message"]


# -- watching the repository -------------------------------------------------------------------


def test_new_version_is_loaded_once_its_folder_has_settled(make_repo, make_client, bundle_library):
    repo = make_repo(("digits", 1))
    client = make_client(repo, new_versions="latest")  # about loading: the new version takes traffic
    install_bundle(bundle_library, repo, "digits", 2)

    refresh(client)  # first sight: the folder may still be being written
    assert predict_digits(client).json()["version"] == 1
    refresh(client)  # unchanged since the last scan: load, warm, swap

    assert predict_digits(client).json()["version"] == 2


def test_a_folder_named_with_a_unicode_digit_does_not_stop_hot_reload(make_repo, make_client, bundle_library):
    repo = make_repo(("digits", 1))
    client = make_client(repo, new_versions="latest")  # about loading: the new version takes traffic
    (repo / "digits" / "²").mkdir()  # isdigit() says yes, int() says no: it used to fail every scan
    install_bundle(bundle_library, repo, "digits", 2)

    refresh(client, settled_only=False)

    assert predict_digits(client).json()["version"] == 2


def test_half_copied_bundle_is_not_refused_and_loads_when_complete(make_repo, make_client, bundle_library):
    repo = make_repo(("digits", 1))
    client = make_client(repo, new_versions="latest")  # about loading: the new version takes traffic
    target = repo / "digits" / "2"
    target.mkdir()
    shutil.copy(bundle_library / "digits" / "2" / "manifest.json", target)

    refresh(client)
    shutil.copy(bundle_library / "digits" / "2" / "model.onnx", target)
    shutil.copy(bundle_library / "digits" / "2" / "reference.json", target)
    refresh(client)
    assert registry_of(client).refusals("digits") == {}
    refresh(client)

    assert predict_digits(client).json()["version"] == 2


def test_removed_version_is_drained_and_unloaded(make_repo, make_client):
    repo = make_repo(("digits", 1), ("digits", 2))
    client = make_client(repo)
    version_2 = registry_of(client).get("digits", 2)

    shutil.rmtree(repo / "digits" / "2")
    refresh(client)

    assert predict_digits(client).json()["version"] == 1
    wait_until(lambda: version_2.state == "unloaded")
    info = metric_value(client.get("/metrics").text, "serving_model_info", model="digits", version="2")
    assert info == 0


def test_bundle_changed_in_place_is_reloaded(make_repo, make_client):
    repo = make_repo(("digits", 1))
    client = make_client(repo)
    before = registry_of(client).get("digits", 1)
    manifest_path = repo / "digits" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["metrics"] = {"accuracy": 0.99}
    manifest_path.write_text(json.dumps(manifest))

    refresh(client, settled_only=False)

    after = registry_of(client).get("digits", 1)
    assert after is not before
    assert client.get("/v1/models/digits").json()["versions"][0]["metrics"] == {"accuracy": 0.99}


def test_corrupted_update_is_refused_and_the_loaded_version_keeps_serving(make_repo, make_client):
    repo = make_repo(("digits", 1))
    client = make_client(repo)
    corrupt(repo / "digits" / "1" / "model.onnx")

    refresh(client, settled_only=False)

    assert predict_digits(client).status_code == 200
    assert registry_of(client).refusals("digits")[1].reason == "checksum"


def test_watcher_polls_the_repository_on_its_own(make_repo, make_client, bundle_library):
    repo = make_repo(("digits", 1))
    client = make_client(repo, watch_interval_s=0.05)

    install_bundle(bundle_library, repo, "penguins", 1)

    wait_until(lambda: client.post("/v1/models/penguins/predict", json={"rows": [penguin()]}).status_code == 200)
    assert client.get("/readyz").status_code == 200
