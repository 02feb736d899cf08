"""Request ids: echo the client's ``X-Request-Id`` (when sane) or make one, on every response.

A plain ASGI middleware rather than ``BaseHTTPMiddleware``: it adds one
header and costs next to nothing per request.
"""

from __future__ import annotations

import random
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_SAFE = re.compile(rb"^[A-Za-z0-9._:/+=@-]{1,128}$")


def request_id_of(scope: Scope) -> str:
    """The id the middleware chose for this request."""
    return scope["state"]["request_id"]


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Ids need to be unique, not secret: a seeded PRNG costs far less than uuid4's os.urandom per request.
        self._random = random.Random()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = next((value for name, value in scope["headers"] if name == HEADER), None)
        # Echo only ids that are safe to log and to put back in a header.
        if raw is not None and _SAFE.match(raw):
            request_id = raw.decode("ascii")
        else:
            request_id = f"{self._random.getrandbits(128):032x}"
        scope.setdefault("state", {})["request_id"] = request_id
        header = (HEADER, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)
