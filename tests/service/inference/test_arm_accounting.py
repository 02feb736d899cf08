"""Only a version's own failures count against its rollout arm: no request a client can send rolls a candidate back.

Here the candidate's guardrails trip on a single error (``max_error_rate: 0`` once each arm has 3
requests). Every class of bad request is sent with sticky keys that route to the candidate, over the
native API and over the Open Inference Protocol; none of them moves the candidate's error count and
it keeps its stage. The same traffic at a candidate whose graph fails when it runs rolls it back.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bundle_factory import _handmade_image_bundle, _handmade_tabular_bundle
from tests.conftest import LiveServer, gradient_image, install_bundle, penguin
from tests.hardening_support import raw_connection, read_response

pytestmark = pytest.mark.live_server

POLICY = """
  {model}:
    stable: 1
    candidate: {candidate}
    stage: canary
    steps:
      - {{regions: {{"*": 50}}}}
    start: 2020-01-01T00:00:00Z
    guardrails: {{min_requests: 3, max_error_rate: 0}}
"""
REQUEST_TIMEOUT_S = 0.6
QUEUE_PLACES = 2
MAX_BODY_BYTES = 100_000
PIXELS = {"name": "pixels", "datatype": "UINT8", "shape": [1, 3, 16, 16], "data": [7] * 768}


@pytest.fixture(scope="module")
def arms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits v1 (stable), v2 (a good candidate), v5 (a candidate that fails on every real image); penguins v1, v2."""
    import torch

    torch.set_num_threads(1)
    lib = tmp_path_factory.mktemp("arms")
    _handmade_image_bundle(lib, "digits", 1, seed=1)
    _handmade_image_bundle(lib, "digits", 2, seed=1)
    _handmade_image_bundle(lib, "digits", 5, seed=1, fails_on_real_input=True)
    _handmade_tabular_bundle(lib, "penguins", 1, seed=1)
    _handmade_tabular_bundle(lib, "penguins", 2, seed=1)
    return lib


def serve_canary(
    start: Callable[..., LiveServer], arms: Path, tmp_path: Path, candidates: dict[str, int]
) -> LiveServer:
    """A live server whose every model runs a canary of ``candidates[model]`` against v1, on half the keys."""
    repo = tmp_path / "models"
    for model, candidate in candidates.items():
        install_bundle(arms, repo, model, 1)
        install_bundle(arms, repo, model, candidate)
    policy = tmp_path / "rollout.yaml"
    policy.write_text("models:" + "".join(POLICY.format(model=m, candidate=c) for m, c in candidates.items()))
    return start(
        repo,
        rollout=policy,
        state_path=tmp_path / "state.sqlite",
        rollout_tick_s=0.05,
        rollout_poll_s=0.2,
        # two places in each queue, so that two held uploads fill it: a refusal by admission on demand
        max_batch_size=1,
        max_items_per_request=QUEUE_PLACES,
        max_queue_size=QUEUE_PLACES,
        max_body_bytes=MAX_BODY_BYTES,
        request_timeout_s=REQUEST_TIMEOUT_S,
    )


def keys_to(server: LiveServer, model: str, version: int, n: int) -> list[str]:
    """``n`` sticky keys that the server's router sends to ``version``."""
    router = server.app.state.components.router
    keys = (f"user-{i}" for i in range(10_000))
    return [k for k in keys if router.route(model, k, None).version == version][:n]


def rollout_of(server: LiveServer, model: str) -> dict[str, Any]:
    return httpx.get(f"{server.url}/v1/rollouts").json()["models"][model]


def judged(server: LiveServer, model: str) -> dict[str, Any]:
    """The model's rollout state once its guardrails have judged both arms (or rolled the candidate back)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = rollout_of(server, model)
        if state["stage"] == "rolled_back" or state["guardrails"]["status"] == "ok":
            return state
        time.sleep(0.05)
    raise AssertionError(f"the guardrails never judged {model}: {rollout_of(server, model)['guardrails']}")


def raw_request(server: LiveServer, path: str, key: str, head: dict[str, str], body: bytes, pause_s: float) -> int:
    """A request sent by hand: its headers, then ``pause_s`` later its body; the status it got."""
    sock = raw_connection(server.port)
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"X-Request-Key: {key}", *(f"{k}: {v}" for k, v in head.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    time.sleep(pause_s)
    if body:
        sock.sendall(body)
    status = read_response(sock)[0]
    sock.close()
    return status


def refused_while_held(server: LiveServer, path: str, key: str, send: Callable[[], httpx.Response]) -> int:
    """A request sent while uploads to the same version hold every place in its queue: the status it got."""
    image = gradient_image(1)
    holders = [raw_connection(server.port) for _ in range(QUEUE_PLACES)]
    for holder in holders:
        holder.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-Key: {key}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(image)}\r\n\r\n".encode()
        )
    time.sleep(0.2)
    status = send().status_code
    for holder in holders:
        holder.sendall(image)
        assert read_response(holder)[0] == 200  # a held request is served once it has sent its body
        holder.close()
    return status


def v2_body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def native_bad_requests(server: LiveServer, key: str) -> dict[str, int]:
    """Each class of bad native request at the candidate, by name: the status it got."""
    url = server.url
    predict = "/v1/models/digits/predict"
    penguins = "/v1/models/penguins/predict"
    with httpx.Client(base_url=url, timeout=30, headers={"X-Request-Key": key}) as http:

        def post(body: bytes, content_type: str, path: str = predict, **headers: str) -> int:
            return http.post(path, content=body, headers={"Content-Type": content_type, **headers}).status_code

        statuses = {
            "malformed JSON": post(b'{"instances": [', "application/json"),
            "wrong media type": post(b"hello", "text/plain"),
            "bad image": post(b"\x89PNG\r\n\x1a\n not really", "image/png"),
            "compressed body": post(gradient_image(2), "image/png", **{"Content-Encoding": "gzip"}),
            "oversized body": raw_request(
                server, predict, key, {"Content-Type": "image/png", "Content-Length": str(MAX_BODY_BYTES + 1)}, b"", 0
            ),
            "too many items": post(json.dumps({"rows": [penguin()] * 3}).encode(), "application/json", penguins),
            "unknown column": post(b'{"rows": [{"wings": 2}]}', "application/json", penguins),
            "queue full": refused_while_held(
                server,
                predict,
                key,
                lambda: http.post(predict, content=gradient_image(3), headers={"Content-Type": "image/png"}),
            ),
            "deadline passed while decoding": raw_request(
                server,
                predict,
                key,
                {"Content-Type": "application/json", "Content-Length": str(len(instances := _instances()))},
                instances,
                REQUEST_TIMEOUT_S + 0.2,
            ),
        }
    return statuses


def v2_bad_requests(server: LiveServer, key: str) -> dict[str, int]:
    """Each class of bad Open Inference Protocol request at the candidate, by name: the status it got."""
    infer = "/v2/models/digits/infer"
    with httpx.Client(base_url=server.url, timeout=30, headers={"X-Request-Key": key}) as http:

        def post(body: bytes, **headers: str) -> int:
            return http.post(infer, content=body, headers={"Content-Type": "application/json", **headers}).status_code

        pixels = v2_body(PIXELS)
        statuses = {
            "malformed JSON": post(b'{"inputs": ['),
            "a zero and a 2**63 dimension": post(v2_body({**PIXELS, "shape": [0, 2**63], "data": []})),
            "a BYTES shape of 2**62": post(
                v2_body({"name": "pixels", "datatype": "BYTES", "shape": [2**62], "data": []})
            ),
            "a wrong datatype": post(v2_body({**PIXELS, "datatype": "FP32"})),
            "no such datatype": post(v2_body({**PIXELS, "datatype": "FP128"})),
            "an unknown output": post(v2_body(PIXELS, outputs=[{"name": "nope"}])),
            "a repeated output": post(v2_body(PIXELS, outputs=[{"name": "label"}] * 2)),
            "too many items": post(v2_body({**PIXELS, "shape": [3, 3, 16, 16], "data": [7] * 3 * 768})),
            "compressed body": post(pixels, **{"Content-Encoding": "gzip"}),
            "oversized body": raw_request(
                server,
                infer,
                key,
                {"Content-Type": "application/json", "Content-Length": str(MAX_BODY_BYTES + 1)},
                b"",
                0,
            ),
            "queue full": refused_while_held(
                server,
                "/v1/models/digits/predict",
                key,
                lambda: http.post(infer, content=pixels, headers={"Content-Type": "application/json"}),
            ),
            "deadline passed while decoding": raw_request(
                server,
                infer,
                key,
                {"Content-Type": "application/json", "Content-Length": str(len(pixels))},
                pixels,
                REQUEST_TIMEOUT_S + 0.2,
            ),
        }
    return statuses


def _instances() -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(gradient_image(4)).decode()}]}).encode()


def send_good(server: LiveServer, protocol: str, keys: list[str]) -> list[int]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        if protocol == "native":
            return [
                http.post(
                    "/v1/models/digits/predict",
                    content=gradient_image(10 + i),
                    headers={"Content-Type": "image/png", "X-Request-Key": key},
                ).status_code
                for i, key in enumerate(keys)
            ]
        return [
            http.post("/v2/models/digits/infer", json={"inputs": [PIXELS]}, headers={"X-Request-Key": key}).status_code
            for key in keys
        ]


def test_no_bad_native_request_counts_against_the_candidate(live_server, arms: Path, tmp_path: Path) -> None:
    server = serve_canary(live_server, arms, tmp_path, {"digits": 2, "penguins": 2})
    candidate, stable = keys_to(server, "digits", 2, 4), keys_to(server, "digits", 1, 3)

    statuses = native_bad_requests(server, candidate[0])

    assert send_good(server, "native", candidate[1:] + stable) == [200] * 6
    state = judged(server, "digits")
    assert state["stage"] == "canary", state
    assert state["guardrails"]["readings"]["candidate"]["errors"] == 0
    assert statuses == {
        "malformed JSON": 422,
        "wrong media type": 415,
        "bad image": 422,
        "compressed body": 415,
        "oversized body": 413,
        "too many items": 413,
        "unknown column": 422,
        "queue full": 503,
        "deadline passed while decoding": 504,
    }


def test_no_bad_v2_request_counts_against_the_candidate(live_server, arms: Path, tmp_path: Path) -> None:
    server = serve_canary(live_server, arms, tmp_path, {"digits": 2})
    candidate, stable = keys_to(server, "digits", 2, 4), keys_to(server, "digits", 1, 3)

    statuses = v2_bad_requests(server, candidate[0])

    assert send_good(server, "v2", candidate[1:] + stable) == [200] * 6
    state = judged(server, "digits")
    assert state["stage"] == "canary", state
    assert state["guardrails"]["readings"]["candidate"]["errors"] == 0
    assert statuses == {
        "malformed JSON": 422,
        "a zero and a 2**63 dimension": 422,
        "a BYTES shape of 2**62": 422,
        "a wrong datatype": 422,
        "no such datatype": 422,
        "an unknown output": 422,
        "a repeated output": 422,
        "too many items": 413,
        "compressed body": 415,
        "oversized body": 413,
        "queue full": 503,
        "deadline passed while decoding": 504,
    }


@pytest.mark.parametrize("protocol", ["native", "v2"])
def test_a_candidate_that_fails_when_it_runs_is_rolled_back(
    live_server, arms: Path, tmp_path: Path, protocol: str
) -> None:
    server = serve_canary(live_server, arms, tmp_path, {"digits": 5})
    candidate, stable = keys_to(server, "digits", 5, 3), keys_to(server, "digits", 1, 3)

    assert send_good(server, protocol, stable + candidate) == [200] * 3 + [500] * 3

    state = judged(server, "digits")
    assert state["stage"] == "rolled_back"
    assert state["last_decisions"][0]["reason"].startswith("error_rate")


def test_rows_mixing_text_with_a_310_digit_integer_do_not_count_against_the_candidate(
    live_server, arms: Path, tmp_path: Path
) -> None:
    server = serve_canary(live_server, arms, tmp_path, {"penguins": 2})
    candidate, stable = keys_to(server, "penguins", 2, 3), keys_to(server, "penguins", 1, 3)
    mixed = b'{"rows": [{"island": "Dream"}, {"island": ' + b"9" * 310 + b"}]}"

    with httpx.Client(base_url=server.url, timeout=30) as http:
        answers = [
            http.post(
                "/v1/models/penguins/predict",
                content=mixed,
                headers={"Content-Type": "application/json", "X-Request-Key": key},
            )
            for key in candidate + stable
        ]

    state = judged(server, "penguins")
    assert state["stage"] == "canary", state
    assert state["guardrails"]["readings"]["candidate"]["errors"] == 0
    # the integer is a category level the model never saw: served as unknown, as any other
    assert [a.status_code for a in answers] == [200] * 6
    assert all(len(a.json()["predictions"]) == 2 for a in answers)
