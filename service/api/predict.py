"""The native predict routes, as a plain ASGI endpoint that the app calls before Starlette's own stack.

    POST /v1/models/{name}/predict
    POST /v1/models/{name}/versions/{version}/predict

Predict is nearly all of the traffic, and for a small model each of
Starlette's layers (error and exception middleware, router, request-id
middleware) and its per-request objects (``Request``, its header mapping,
``JSONResponse``) cost a visible share of a request. This endpoint reads the
few headers it needs straight from the ASGI scope and sends the JSON it
renders; it does itself what those layers would do: answer a wrong method
with 405, put the request id on the response, and turn every exception into
a JSON error through ``service.http.errors.describe_error``, the same mapping
the other routes use. Everything else is the pipeline's
(``service.inference.pipeline``), shared with the Open Inference Protocol.
"""

from __future__ import annotations

import logging
import re

from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from service.codecs.native import NativeRequest
from service.http.errors import ServiceError, describe_error
from service.http.request_id import assign_request_id, client_request_id, id_header
from service.http.responses import send_json
from service.inference.pipeline import PredictPipeline

log = logging.getLogger("service.api")

# /v1/models/{name}/predict and /v1/models/{name}/versions/{version}/predict, as Starlette would match them.
PREDICT_PATH = re.compile(r"/v1/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/predict")


class PredictEndpoint:
    """The native protocol's adapter: headers into a request context, predictions out as JSON."""

    def __init__(self, pipeline: PredictPipeline, region_header: str) -> None:
        self.pipeline = pipeline
        self._region_header = region_header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send, match: re.Match[str]) -> None:
        """Serve one request whose path ``PREDICT_PATH`` matched; every outcome is a response, never an exception."""
        request_id = assign_request_id(scope)  # the service's own: the body's request_id, what feedback names
        client_id = client_request_id(scope)
        request_id_header = id_header(client_id or request_id)  # the client's X-Request-Id is echoed as sent
        try:
            if scope["method"] != "POST":
                raise HTTPException(405, headers={"Allow": "POST"})
            await self._serve(
                scope, receive, send, match["name"], match["version"], request_id, client_id, request_id_header
            )
        except Exception as exc:
            if not isinstance(exc, (ServiceError, HTTPException)):
                log.exception("predict failed before reaching a model (request %s)", request_id)
            # Straight through ASGI like an answer: under overload most responses are refusals, so they must be cheap.
            status, headers, body = describe_error(exc)
            raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
            await send_json(send, body, [*raw, request_id_header], status)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        name: str,
        pinned: str | None,
        request_id: str,
        client_id: str | None,
        request_id_header: tuple[bytes, bytes],
    ) -> None:
        pipeline = self.pipeline
        wanted = pipeline.header_names()
        headers: dict[bytes, str] = {}
        encodings: list[str] = []  # every Content-Encoding header: the codec refuses a compressed body
        for key, value in scope["headers"]:
            if key in wanted:
                headers[key] = value.decode("latin-1")
            elif key == b"content-encoding":
                encodings.append(value.decode("latin-1"))
        ctx = pipeline.context(
            name,
            pinned,
            request_id,
            headers.get(self._region_header),
            headers.get(pipeline.sticky_header(name)),
            headers.get(b"content-length"),
            client_id,
        )
        codec = NativeRequest(headers.get(b"content-type", ""), ", ".join(encodings))
        answer = await pipeline.run(ctx, codec, receive)
        version = answer.version
        response = {
            "model": name,
            "version": version.version,
            "request_id": request_id,
            "predictions": answer.predictions,
        }
        await send_json(send, response, [*version.response_headers, request_id_header])
        pipeline.mirror(ctx, codec, answer)  # after the answer is sent: it never delays or changes it
