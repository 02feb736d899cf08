"""Request ids: the service makes its own for every request, and echoes the client's ``X-Request-Id`` when sane.

The service's id is the one that names a prediction: the prediction log's key, the native response's
``request_id`` and what feedback sends back. It is unguessable (80 bits from ``secrets``), so knowing one
request's id tells nothing of another's. The client's ``X-Request-Id`` is only a label: it is echoed on the
response (a caller tracing a request across hops finds it there) and kept in the log as
``client_request_id``; two clients may send the same one, so it names nothing.

``assign_request_id`` chooses the ids once per request and keeps them in the ASGI scope;
``RequestIdMiddleware`` (a plain ASGI middleware, not ``BaseHTTPMiddleware``: it adds one header and costs
next to nothing) puts the echoed id on every response of the Starlette routes, and the predict endpoint,
which runs outside them, puts it on its own.
"""

from __future__ import annotations

import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_SAFE = re.compile(rb"^[A-Za-z0-9._:/+=@-]{1,128}$")
SERVICE_ID = re.compile(r"^[0-9a-f]{32}$")  # what new_request_id makes


def new_request_id() -> str:
    """32 hex digits: the time in milliseconds (12), then 80 random bits from ``secrets`` (20), as UUIDv7 lays
    them out.

    Ids made in time order land at the end of the prediction log's primary-key index instead of at random
    places in it, which keeps inserts cheap (docs/performance.md). The random part is what makes an id
    unguessable (the OS's generator, not a seeded PRNG whose state a client could learn from the ids it is
    shown); the time part only says when."""
    return f"{int(time.time() * 1000) & 0xFFFFFFFFFFFF:012x}{secrets.token_hex(10)}"


def assign_request_id(scope: Scope) -> str:
    """This request's id, made by the service (chosen once); the client's own is kept beside it."""
    state = scope.setdefault("state", {})
    request_id = state.get("request_id")
    if request_id is None:
        raw = next((value for name, value in scope["headers"] if name == HEADER), None)
        state["client_request_id"] = raw.decode("ascii") if raw is not None and _SAFE.match(raw) else None
        request_id = state["request_id"] = new_request_id()
    return request_id


def client_request_id(scope: Scope) -> str | None:
    """The client's ``X-Request-Id`` when it sent a sane one (safe to log and to echo), else None."""
    assign_request_id(scope)
    client: str | None = scope["state"]["client_request_id"]
    return client


def echoed_request_id(scope: Scope) -> str:
    """The ``X-Request-Id`` a response carries: the client's own when it sent one, else the service's."""
    return client_request_id(scope) or assign_request_id(scope)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, send_with_header(send, id_header(echoed_request_id(scope))))


def id_header(request_id: str) -> tuple[bytes, bytes]:
    return (HEADER, request_id.encode("ascii"))


def send_with_header(send: Send, header: tuple[bytes, bytes]) -> Send:
    """``send``, adding ``header`` to the response's start message."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), header]
        await send(message)

    return sending
