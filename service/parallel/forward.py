"""The routes a worker forwards to the control process, whose state holds every worker's traffic.

Drift reports, feedback, the prediction log and the rollout API (readings, verdicts and admin changes)
answer from the monitor and the guardrails, which run once, in the control process. A worker sends those
requests to the control process's app over a unix socket, one HTTP/1.1 request per connection (h11, which
uvicorn already brings), and relays the answer; every other path is served by the worker itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import h11
from starlette.types import ASGIApp, Receive, Scope, Send

from bundle.store import StoreUnavailable
from service.http.errors import error_body
from service.http.responses import JSONResponse
from service.rollout.manager import RolloutManager

log = logging.getLogger("service.parallel")

FORWARDED = re.compile(r"/v1/feedback|/v1/predictions|/v1/models/[^/]+/drift|/v1/rollouts(/.*)?")
READ_CHUNK = 65_536


class ForwardToControl:
    """ASGI middleware: forwarded paths go to the control process at ``socket_path``, the rest to ``app``.

    An admin's rollout change (made in the control process) applies in every worker before its next request:
    the worker that forwarded it bumps the group's ``generation``, and each worker that sees it moved reads
    the store before serving on (as the replica that makes a change applies it at once)."""

    def __init__(
        self,
        app: ASGIApp,
        socket_path: str,
        timeout_s: float,
        generation: Synchronized[int] | None = None,
        rollout: RolloutManager | None = None,
    ) -> None:
        self.app = app
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self.generation = generation
        self.rollout = rollout if generation is not None else None
        self._seen = generation.value if generation is not None else 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.rollout is not None and self.generation is not None and self.generation.value != self._seen:
            self._seen = self.generation.value
            await self._catch_up()
        if scope["type"] != "http" or FORWARDED.fullmatch(scope["path"]) is None:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            status, headers, answer = await asyncio.wait_for(self._ask(scope, bytes(body)), self.timeout_s)
        except (TimeoutError, OSError, h11.ProtocolError) as exc:
            response = JSONResponse(
                error_body("control_unavailable", f"the control process did not answer ({type(exc).__name__})"),
                status_code=503,
            )
            await response(scope, receive, send)
            return
        if scope["method"] != "GET" and 200 <= status < 300 and scope["path"].startswith("/v1/rollouts"):
            await self._changed()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    async def _changed(self) -> None:
        """The control process changed a rollout: every worker reads the store before its next request."""
        if self.generation is None:
            return
        with self.generation.get_lock():
            self.generation.value += 1
            self._seen = self.generation.value
        await self._catch_up()

    async def _catch_up(self) -> None:
        if self.rollout is None:
            return
        try:
            await self.rollout.poll_store()
        except StoreUnavailable as exc:  # the regular poll tries again
            log.warning("could not read the rollout change from the state store: %s", exc)

    async def _ask(self, scope: Scope, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        reader, writer = await asyncio.open_unix_connection(self.socket_path)
        try:
            connection = h11.Connection(h11.CLIENT)
            target = scope["raw_path"] or scope["path"].encode()
            if scope.get("query_string"):
                target += b"?" + scope["query_string"]
            skip = {b"host", b"connection", b"content-length", b"transfer-encoding", b"keep-alive"}
            headers: list[tuple[bytes, bytes]] = [(b"host", b"control"), (b"connection", b"close")]
            headers += [(k, v) for k, v in scope["headers"] if k.lower() not in skip]
            headers.append((b"content-length", str(len(body)).encode()))
            request = h11.Request(method=scope["method"], target=target, headers=headers)
            writer.write(
                connection.send(request) + connection.send(h11.Data(data=body)) + connection.send(h11.EndOfMessage())
            )
            await writer.drain()
            return await _read_response(connection, reader)
        finally:
            writer.close()


async def _read_response(
    connection: h11.Connection, reader: asyncio.StreamReader
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    status, headers, body = 0, [], bytearray()
    while True:
        event: Any = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(READ_CHUNK))
        elif isinstance(event, h11.Response):
            status = event.status_code
            skip = {b"connection", b"transfer-encoding", b"content-length", b"date", b"server"}
            headers = [(k, v) for k, v in event.headers if k.lower() not in skip]
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            headers.append((b"content-length", str(len(body)).encode()))
            return status, headers, bytes(body)
