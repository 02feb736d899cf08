"""Request bodies read within a size limit: by the declared Content-Length, and by counting what arrives."""

from __future__ import annotations

from starlette.types import Receive

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
