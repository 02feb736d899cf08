"""The bare endpoint plus the service's own decoding of the body: the most a service that decodes can reach.

    DECODE_MODELS=models/ python -m uvicorn loadtests.decode_app:app --http httptools --no-access-log

Like ``loadtests.bare_app`` it reads the body and answers a small JSON, but
first it decodes the body exactly as the service would, with the service's
own decoder and default limits (``service.codecs.decoder_for``; a thumbnail
through ``decode_in_place``, anything else through ``decode``), for the
newest version of the model named in the path. It decodes on the event
loop, with no thread hand-off. No model runs; nothing is batched, counted,
logged or monitored. Its throughput against the bare endpoint's is a ceiling
for any service on this interpreter that must decode its requests before
running a model: the benchmark prints it next to the service's own ratio
(``python -m loadtests.bench``).
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bundle.manifest import read_manifest
from loadtests.repository import newest_bundles
from service.codecs import InputDecoder, decoder_for, input_limits, media_type_of
from service.settings import ServiceSettings


def load_decoders(repo: Path) -> dict[str, InputDecoder]:
    """The service's decoder for the highest version of each model in a repository."""
    settings = ServiceSettings()
    limits = input_limits(settings)
    return {
        name: decoder_for(
            read_manifest(bundle),
            settings.max_items_per_request,
            settings.max_image_pixels,
            settings.inline_decode_max_pixels,
            **limits,
        )
        for name, bundle in newest_bundles(repo).items()
    }


DECODERS = load_decoders(Path(os.environ.get("DECODE_MODELS", "models")))


async def predict(request: Request) -> JSONResponse:
    decoder = DECODERS[request.path_params["name"]]
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    media_type = media_type_of(content_type)
    decoded = decoder.decode_in_place(media_type, content_type, body)
    if decoded is None:
        decoded = decoder.decode(media_type, content_type, body)
    return JSONResponse({"received": len(body), "items": decoded.items, "predictions": [{"label": "0"}]})


app = Starlette(routes=[Route("/v1/models/{name}/predict", predict, methods=["POST"])])
