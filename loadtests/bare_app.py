"""The ceiling for a tiny model: a bare Starlette endpoint that reads the body and answers a small JSON."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def predict(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"received": len(body), "predictions": [{"label": "0"}]})


app = Starlette(routes=[Route("/v1/models/{name}/predict", predict, methods=["POST"])])
