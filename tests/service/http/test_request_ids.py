"""Request ids: the service's own names a prediction and cannot be guessed; the client's is only echoed and logged."""

from __future__ import annotations

import random
import re
import sys

from service.http.request_id import new_request_id
from tests.conftest import image_bytes, post_bytes

SERVICE_ID = re.compile(r"^[0-9a-f]{32}$")


def test_ids_the_service_makes_cannot_be_replayed_from_a_generators_state() -> None:
    # Whoever learns the state of a seeded generator (Mersenne Twister: from 624 outputs) predicts every later
    # id. Put every such generator a module holds back where it was: the next id must still differ.
    held = (value for module in list(sys.modules.values()) for value in list(getattr(module, "__dict__", {}).values()))
    generators = list({id(g): g for g in held if type(g) is random.Random}.values())
    states = [g.getstate() for g in generators]
    first = new_request_id()
    for generator, state in zip(generators, states):
        generator.setstate(state)
    second = new_request_id()

    assert first[12:] != second[12:]


def test_a_client_request_id_is_echoed_but_the_body_names_the_services_own(client) -> None:
    response = post_bytes(client, "/v1/models/digits/predict", image_bytes(), x_request_id="abc-123")

    assert response.headers["X-Request-Id"] == "abc-123"
    assert SERVICE_ID.match(response.json()["request_id"])


def test_two_requests_with_the_same_client_id_get_different_ids(client) -> None:
    ids = [
        post_bytes(client, "/v1/models/digits/predict", image_bytes(), x_request_id="same").json()["request_id"]
        for _ in range(2)
    ]

    assert ids[0] != ids[1]


def test_without_a_client_id_the_header_and_the_body_carry_the_same_id(client) -> None:
    response = post_bytes(client, "/v1/models/digits/predict", image_bytes())

    assert response.headers["X-Request-Id"] == response.json()["request_id"]
