"""Typed service errors and the one place they become HTTP responses.

Every error leaves the service as ``{"error": {"code": str, "message": str}}``.
Code raises a :class:`ServiceError` subclass where a problem is found; only
:func:`error_response` knows about status codes and headers.
"""

from __future__ import annotations

import re

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from bundle.store.base import InvalidValue
from service.http.responses import JSONResponse

REQUEST_ID_HEADER = "X-Request-Id"


class ServiceError(Exception):
    """Base of every error the service answers on purpose."""

    status = 500
    code = "internal"
    outcome = "server_error"  # the serving_requests_total outcome label

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    """The HTTP request itself is broken (bad Content-Length, body cut short)."""

    status, code, outcome = 400, "bad_request", "client_error"


class InvalidInput(ServiceError):
    """The body parsed but its content is unusable (names the field or part that failed)."""

    status, code, outcome = 422, "invalid_input", "client_error"


class PayloadTooLarge(ServiceError):
    """Body, image or item count over a configured limit."""

    status, code, outcome = 413, "payload_too_large", "client_error"


class UnsupportedMediaType(ServiceError):
    status, code, outcome = 415, "unsupported_media_type", "client_error"


class Unauthorized(ServiceError):
    """A missing or wrong admin token."""

    status, code, outcome = 401, "unauthorized", "client_error"


class Forbidden(ServiceError):
    """The action is switched off here (no admin token configured)."""

    status, code, outcome = 403, "forbidden", "client_error"


class NotFound(ServiceError):
    status, code, outcome = 404, "not_found", "client_error"


class Conflict(ServiceError):
    """The change was based on a state that has moved on since (a stale revision); read it again."""

    status, code, outcome = 409, "conflict", "client_error"


class QueueFull(ServiceError):
    """The version's batcher queue is full; the client should retry later."""

    status, code, outcome = 503, "queue_full", "rejected"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ServiceError):
    status, code, outcome = 504, "deadline_exceeded", "timeout"


class RequestTimeout(ServiceError):
    """The client stopped sending its request (headers or body) for longer than the read timeout."""

    status, code, outcome = 408, "request_timeout", "client_error"


class Unavailable(ServiceError):
    """The version is going away (draining) or not loaded yet."""

    status, code, outcome = 503, "unavailable", "rejected"


class InferenceFailed(ServiceError):
    status, code, outcome = 500, "inference_failed", "server_error"


_HTTP_CODES = {
    400: "bad_request",
    408: "request_timeout",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


# An absolute path, as a message may quote one from an OSError or a bundle problem: "/srv/models/digits/1/x".
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:/[^\s'\"/:;,()]+)+/?")


def public_message(message: str) -> str:
    """``message`` fit for a client: absolute paths cut to their last two components (logs keep them whole)."""
    return _ABSOLUTE_PATH.sub(lambda m: "/".join(m.group(0).strip("/").split("/")[-2:]), message)


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": public_message(message)}}


def error_response(request: Request, exc: Exception) -> Response:
    """The single mapping from any exception to a JSON error response."""
    status, code, message, headers = error_parts(exc)
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def error_parts(exc: Exception) -> tuple[int, str, str, dict[str, str]]:
    """Status, code, message and headers for any exception (also behind the Open Inference Protocol's errors)."""
    headers: dict[str, str] = {}
    if isinstance(exc, ServiceError):
        status, code, message = exc.status, exc.code, exc.message
        if isinstance(exc, QueueFull):
            headers["Retry-After"] = str(exc.retry_after_s)
    elif isinstance(exc, InvalidValue):  # text the store cannot hold (a NUL): the client's input
        status, code, message = 422, "invalid_input", str(exc)
    elif isinstance(exc, HTTPException):
        status = exc.status_code
        code = _HTTP_CODES.get(status, "client_error" if status < 500 else "internal")
        message = str(exc.detail)
        headers.update(exc.headers or {})
    else:
        status, code, message = 500, "internal", "internal error; the service log has the details"
    return status, code, message, headers


def describe_error(exc: Exception) -> tuple[int, dict[str, str], dict[str, dict[str, str]]]:
    """Status, headers and JSON body for any exception (the predict endpoint sends them straight through ASGI)."""
    status, code, message, headers = error_parts(exc)
    return status, headers, error_body(code, message)


def outcome_of(exc: Exception) -> str:
    """The metric outcome for an exception raised while serving a prediction."""
    if isinstance(exc, ServiceError):
        return exc.outcome
    if isinstance(exc, HTTPException):
        return "client_error" if exc.status_code < 500 else "server_error"
    if isinstance(exc, InvalidValue):
        return "client_error"
    return "server_error"
