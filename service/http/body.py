"""Request bodies read within a size limit: by the declared Content-Length, and by counting what arrives."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any

from starlette.types import Receive

from service.codecs.strict_json import parse_json
from service.http.errors import BadRequest, PayloadTooLarge


def check_declared_size(declared: str, limit: int) -> None:
    """413 at once when the Content-Length says more than ``limit`` bytes (400 when it is no number)."""
    if len(declared) > 20 or not declared.isascii() or not declared.isdigit():
        raise BadRequest(f"Content-Length {declared[:20]!r} is not a number")
    size = int(declared)
    if size > limit:
        raise PayloadTooLarge(f"the body is {size} bytes, the limit is {limit}")


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes by Content-Length and by counting."""
    if declared is not None:
        check_declared_size(declared, limit)
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:  # a chunked or lying client: count what actually arrives
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


INLINE_JSON_BYTES = 16_384  # a body this small parses faster on the event loop than through a thread hand-off


async def read_json(receive: Receive, declared: str | None, limit: int, executor: Executor | None = None) -> Any:
    """A JSON body of at most ``limit`` bytes, parsed strictly; a larger one is parsed off the event loop.

    Every route that takes JSON reads it through here, so no body is parsed before its size is known."""
    body = await read_body(receive, declared, limit)
    if len(body) <= INLINE_JSON_BYTES:
        return parse_json(body)
    return await asyncio.get_running_loop().run_in_executor(executor, parse_json, body)
