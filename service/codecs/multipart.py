"""A small synchronous multipart/form-data reader for bodies already in memory.

The body has been read (and size-limited) before parsing, and parsing runs
in the preprocessing thread, so there is no need for Starlette's streaming
parser and its spooled temporary files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.http.errors import InvalidInput, PayloadTooLarge


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytearray = field(default_factory=bytearray)


class _Collector:
    """Parser callbacks that gather parts, refusing more than ``max_parts``."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self.parts: list[Part] = []
        self.headers: dict[bytes, bytes] = {}
        self.header_name = b""
        self.header_value = b""
        self.current: Part | None = None
        self.ended = False

    def on_part_begin(self) -> None:
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_name.strip().lower()] = self.header_value.strip()
        self.header_name, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b"").decode("latin-1"))
        if b"name" not in options:
            raise InvalidInput(f"multipart part {len(self.parts) + 1}: Content-Disposition has no name")
        if len(self.parts) >= self.max_parts:
            raise PayloadTooLarge(f"more than {self.max_parts} parts in one request")
        filename = options.get(b"filename")
        self.current = Part(
            name=options[b"name"].decode("utf-8", "replace"),
            filename=filename.decode("utf-8", "replace") if filename is not None else None,
            content_type=self.headers.get(b"content-type", b"").decode("latin-1"),
        )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.current is not None:
            self.current.data += data[start:end]

    def on_part_end(self) -> None:
        if self.current is not None:
            self.parts.append(self.current)
        self.current = None

    def on_end(self) -> None:
        self.ended = True


def parse_multipart(content_type: str, body: bytes, max_parts: int) -> list[Part]:
    """Every part of a multipart/form-data body, in order."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidInput("multipart/form-data without a boundary parameter in Content-Type")
    body = _without_preamble(body, boundary)
    collector = _Collector(max_parts)
    callbacks = {
        "on_part_begin": collector.on_part_begin,
        "on_header_field": collector.on_header_field,
        "on_header_value": collector.on_header_value,
        "on_header_end": collector.on_header_end,
        "on_headers_finished": collector.on_headers_finished,
        "on_part_data": collector.on_part_data,
        "on_part_end": collector.on_part_end,
        "on_end": collector.on_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidInput(f"malformed multipart body: {exc}") from exc
    if not collector.ended:
        raise InvalidInput("malformed multipart body: it ends before the closing boundary")
    return collector.parts


def _without_preamble(body: bytes, boundary: bytes) -> bytes:
    """The body from its first delimiter on: RFC 2046 lets a preamble (ignored) come before it."""
    delimiter = b"--" + boundary
    if body.startswith(delimiter):
        return body
    start = body.find(b"\r\n" + delimiter)
    if start < 0:
        raise InvalidInput("malformed multipart body: no delimiter line for the Content-Type's boundary")
    return body[start + 2 :]
