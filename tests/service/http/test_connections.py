"""connections are bounded. Idle, half-sent and oversized requests cannot hold the server."""

from __future__ import annotations

import json
import time

from tests.hardening_support import WellBehavedClient, closed_by_peer, raw_connection, read_response

FAST = dict(header_timeout_s=0.5, body_timeout_s=0.5, keepalive_timeout_s=0.5)


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)), **FAST)
    sock = raw_connection(server.port)
    with WellBehavedClient(server.url, "digits") as client:
        time.sleep(1.0)
        assert closed_by_peer(sock)
    client.assert_served()


def test_half_sent_headers_get_408_in_json(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)), **FAST)
    sock = raw_connection(server.port)
    sock.sendall(b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Ty")
    with WellBehavedClient(server.url, "digits") as client:
        status, headers, body = read_response(sock)
    client.assert_served()
    assert status == 408
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_a_body_that_stalls_gets_408_in_json(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)), **FAST)
    sock = raw_connection(server.port)
    sock.sendall(
        b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 1000\r\n\r\n" + b"\x89PNG" + b"\0" * 100
    )
    started = time.perf_counter()
    with WellBehavedClient(server.url, "digits") as client:
        status, _, body = read_response(sock)
    client.assert_served()
    assert status == 408 and json.loads(body)["error"]["message"].startswith("the request body did not arrive")
    assert time.perf_counter() - started < 5


def test_headers_over_the_limit_get_431_without_being_buffered(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)), max_header_bytes=8192)
    sock = raw_connection(server.port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    try:
        for _ in range(64):  # 4 MB offered; the server closes long before
            sock.sendall(b"a" * 65536)
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, _, body = read_response(sock)
    assert status == 431 and json.loads(body)["error"]["code"] == "headers_too_large"
    with WellBehavedClient(server.url, "digits") as client:
        pass
    client.assert_served()


def test_an_idle_keep_alive_connection_is_closed(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)), **FAST)
    sock = raw_connection(server.port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock)[0] == 200
    time.sleep(1.0)
    assert closed_by_peer(sock)


def test_connections_beyond_the_cap_get_503_while_others_are_served(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)), max_connections=20, header_timeout_s=30)
    idle = [raw_connection(server.port) for _ in range(20)]
    time.sleep(0.2)
    extra = raw_connection(server.port)
    status, headers, body = read_response(extra)
    assert status == 503 and json.loads(body)["error"]["code"] == "too_many_connections"
    assert headers["retry-after"]
    for sock in idle[:5]:  # room for the well-behaved client again
        sock.close()
    time.sleep(0.2)
    with WellBehavedClient(server.url, "digits") as client:
        time.sleep(0.3)
    client.assert_served()
    for sock in idle[5:]:
        sock.close()


def test_a_client_stalled_during_shutdown_gets_json_at_once(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)), body_timeout_s=60, graceful_shutdown_s=30)
    sock = raw_connection(server.port)
    sock.sendall(
        b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 1000\r\n\r\n" + b"\x89PNG"
    )
    time.sleep(0.2)
    started = time.perf_counter()
    server.stop()
    status, _, body = read_response(sock)
    assert status == 503 and json.loads(body)["error"]["code"] == "shutting_down"
    assert time.perf_counter() - started < 10, "the stalled client held the shutdown"


def test_a_request_the_http_parser_cannot_read_gets_400_in_json(make_repo, live_server):
    server = live_server(make_repo(("digits", 1)))
    sock = raw_connection(server.port)
    sock.sendall(
        b"PUT /v1/rollouts/digits HTTP/1.1\r\nHost: x\r\nIf-Match: \x7f\xc2\x9b\r\nContent-Length: 2\r\n\r\n{}"
    )
    with WellBehavedClient(server.url, "digits") as client:
        status, headers, body = read_response(sock)
    client.assert_served()
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "bad_request"
