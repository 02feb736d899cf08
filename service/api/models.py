"""``GET /v1/models``, ``GET /v1/models/{name}``, a version's nightly report and ``GET /openapi.json``: what is
served and how to call it."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from service.api.openapi import ModelContract, openapi_document
from service.http.errors import NotFound
from service.http.responses import JSONResponse
from service.models.catalogue import ModelCatalogue
from service.settings import ServiceSettings

# A report is a page the nightly run wrote: its own inline style, nothing that runs, nothing fetched.
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


class ModelRoutes:
    def __init__(self, settings: ServiceSettings, catalogue: ModelCatalogue) -> None:
        self.settings = settings
        self.catalogue = catalogue

    def routes(self) -> list[Route]:
        return [
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{name}", self.get_model, methods=["GET"]),
            Route("/v1/models/{name}/versions/{version}/report", self.get_report, methods=["GET"]),
        ]

    async def list_models(self, request: Request) -> Response:
        return JSONResponse({"models": self.catalogue.model_list()})

    async def get_model(self, request: Request) -> Response:
        return JSONResponse(self.catalogue.model_document(request.path_params["name"]))

    async def get_report(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        if not version.isdigit():
            raise NotFound(f"no version {version!r} of {name!r}: versions are numbers")
        path = self.catalogue.nightly_report(name, int(version))
        html = await asyncio.to_thread(path.read_text, encoding="utf-8", errors="replace")
        return HTMLResponse(html, headers=REPORT_HEADERS)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(request.app.routes, self.contracts()))

    def contracts(self) -> list[ModelContract]:
        """What the OpenAPI document states per served model (its newest version's inputs)."""
        s = self.settings
        contracts = []
        registry = self.catalogue.registry
        for name in registry.model_names():
            versions = registry.versions(name)
            if versions:
                contracts.append(
                    ModelContract(
                        name,
                        [v.version for v in versions],
                        versions[-1].inputs.schema(),
                        s.max_items_per_request,
                        s.max_columns,
                        s.ignore_unknown_columns,
                    )
                )
        return contracts
