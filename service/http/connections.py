"""Connection limits: what a slow, idle or greedy client may hold of the server, enforced under uvicorn's HTTP parser.

uvicorn bounds keep-alive idleness and (with h11) header size, but not the
time a client takes to send its headers or body, nor, with httptools, the
size of those headers, nor the number of open connections. This module adds
them to uvicorn's httptools protocol, each answered with a JSON error like
every other refusal of the service:

- headers larger than ``max_header_bytes``: 431, connection closed;
- headers not complete within ``header_timeout_s`` (counted from the
  connection or, on keep-alive, from the request's first byte): 408, closed;
  a connection that sent nothing at all is just closed;
- a body not complete within ``body_timeout_s`` after its headers: 408, closed;
- more than ``max_connections`` open connections: the new one gets 503, closed;
- more than ``max_in_flight_requests`` requests being served: 503 at once;
- on shutdown, a request still sending its headers or body gets 503 at
  once, so a stalled client cannot hold the drain window.

``server_config(app, settings)`` is the uvicorn configuration the command
line (and the live-server tests) run with.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.http.errors import error_body
from service.settings import ServiceSettings

log = logging.getLogger("service.http.connections")

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
FD_HEADROOM = 256  # descriptors beyond the connection cap: model files, sockets of the state store, logs


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 65_536
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 2048
    max_in_flight_requests: int = 1024
    retry_after_s: int = 1

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_connections=settings.max_connections,
            max_in_flight_requests=settings.max_in_flight_requests,
            retry_after_s=settings.retry_after_s,
        )


def json_response_bytes(status: int, code: str, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A whole HTTP/1.1 response carrying the service's JSON error, ending the connection."""
    body = orjson.dumps(error_body(code, message))
    head = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error"))]
    head += [b"content-type: application/json", b"content-length: %d" % len(body), b"connection: close"]
    head += [name + b": " + value for name, value in extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _overloaded_app(retry_after_s: int) -> Callable[..., Any]:
    body = orjson.dumps(error_body("overloaded", "the server is serving as many requests as it may; retry later"))
    headers = [(b"content-type", b"application/json"), (b"retry-after", str(retry_after_s).encode())]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; ``limits`` is set by :func:`protocol_class`."""

    limits = ConnectionLimits()
    overloaded: Callable[..., Any] = staticmethod(_overloaded_app(1))

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer: asyncio.TimerHandle | None = None
        self._in_headers = True  # reading a request line and headers (or waiting for the first request)
        self._header_bytes = 0
        if len(self.connections) > self.limits.max_connections:
            log.warning(
                "refused a connection: %d open, the limit is %d", len(self.connections) - 1, self.limits.max_connections
            )
            self._answer_and_close(
                503,
                "too_many_connections",
                "the server holds as many connections as it may; retry later",
                ((b"retry-after", str(self.limits.retry_after_s).encode()),),
            )
            return
        self._arm(self.limits.header_timeout_s, self._headers_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._answer_and_close(
                    431,
                    "headers_too_large",
                    f"the request line and headers are over {self.limits.max_header_bytes} bytes",
                )

    def send_400_response(self, msg: str) -> None:
        """What the HTTP parser cannot read (a control character in a header, a broken request line) gets the
        service's JSON error, like every other error, instead of uvicorn's plain text."""
        self._answer_and_close(
            400, "bad_request", "the request is not valid HTTP/1.1: a malformed request line or header"
        )

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        if self._timer is None:  # a keep-alive connection's next request: its headers get the same time
            self._arm(self.limits.header_timeout_s, self._headers_timed_out)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        app = self.app
        if len(self.tasks) >= self.limits.max_in_flight_requests:
            self.app = self.overloaded
        try:
            super().on_headers_complete()
        finally:
            self.app = app
        self._arm(self.limits.body_timeout_s, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def shutdown(self) -> None:
        """Graceful shutdown: a request still arriving is answered now rather than waited for."""
        cycle = self.cycle
        receiving_headers = self._in_headers and self._header_bytes > 0
        receiving_body = cycle is not None and cycle.more_body and not cycle.response_started
        if receiving_headers or receiving_body:
            self._answer_and_close(
                503,
                "shutting_down",
                "the server is shutting down; retry on another replica",
                ((b"retry-after", str(self.limits.retry_after_s).encode()),),
            )
            return
        super().shutdown()

    # -- timers ----------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()  # type: ignore[union-attr]
            self._timer = None

    def _headers_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._header_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # idle: nothing to answer
            return
        timeout = self.limits.header_timeout_s
        self._answer_and_close(408, "request_timeout", f"the request headers did not arrive within {timeout:g} s")

    def _body_timed_out(self) -> None:
        self._timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body:
            return
        if cycle.response_started:  # the app answered without reading it all: just stop waiting
            self.transport.close()
            return
        timeout = self.limits.body_timeout_s
        self._answer_and_close(408, "request_timeout", f"the request body did not arrive within {timeout:g} s")

    def _answer_and_close(
        self, status: int, code: str, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        """Write a JSON error, close, and tell a running request that its client is gone."""
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                self.transport.close()
                return
            cycle.disconnected = True  # the app's sends are dropped from now on, its receive says disconnect
            cycle.message_event.set()
        self.transport.write(json_response_bytes(status, code, message, extra))
        self.transport.close()


def protocol_class(limits: ConnectionLimits) -> type[GuardedHttpProtocol]:
    """A protocol class bound to ``limits`` (uvicorn builds one protocol per connection from a class)."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {"limits": limits, "overloaded": staticmethod(_overloaded_app(limits.retry_after_s))},
    )


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (within the hard limit); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("could not raise the open-file limit from %d to %d", soft, target)
    return soft


def server_config(app: Any, settings: ServiceSettings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration that enforces ``settings``' connection limits."""
    limits = ConnectionLimits.from_settings(settings)
    files = raise_open_file_limit(settings.max_connections + FD_HEADROOM)
    if files < settings.max_connections + FD_HEADROOM:
        capped = max(1, files - FD_HEADROOM)
        log.warning(
            "only %d open files allowed: capping connections at %d instead of %d",
            files,
            capped,
            settings.max_connections,
        )
        limits = ConnectionLimits(**{**limits.__dict__, "max_connections": capped})
    values: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        http=protocol_class(limits),
        log_level=settings.log_level,
        access_log=False,  # metrics count requests; a log line per request costs throughput
        timeout_keep_alive=settings.keepalive_timeout_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,  # in case h11 is ever chosen instead
        timeout_graceful_shutdown=math.ceil(settings.graceful_shutdown_s),
        lifespan="on",
    )
    values.update(overrides)
    return uvicorn.Config(app, **values)
