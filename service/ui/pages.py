"""Page handlers: the model list, a model's card, and the rollout, monitoring and review pages.

The list and the card are rendered on the server from exactly the data
``GET /v1/models`` and ``GET /v1/models/{name}`` return; the other pages are
shells whose script reads the JSON API from the browser (so a page never
becomes a second source of truth, and an endpoint that is not there yet only
makes its page say so). Every page is sent with a Content-Security-Policy that
allows nothing but this service: no inline script, nothing from elsewhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from service.http.errors import NotFound
from service.models.catalogue import ModelCatalogue

STATIC_DIR = Path(__file__).parent / "static"
MISSING_LEVEL = "#na#"  # index 0 of every category vocabulary: the form's "missing" choice stands for it
REVIEW_REASONS = ("ood", "low_confidence", "disagreement", "sample")

SECURITY_HEADERS = {
    # Blob and data images: the try-it preview and review thumbnails. connect-src 'self': the API only.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # pages show live state
}


def asset_version(folder: Path) -> str:
    """A short digest of the static files, appended to their URLs so a new release is never served stale."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]


def number(value: Any, digits: int = 4) -> str:
    """A metric for people: 4 significant digits, integers as they are, anything else as text."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "—"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def form_columns(schema: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The tabular input schema as form fields: categories with their known levels, numbers, dates."""
    if not schema or schema.get("kind") != "tabular":
        return []
    fields = []
    for column in schema.get("columns", []):
        field = {"name": column["name"], "kind": column.get("kind", "continuous")}
        if field["kind"] == "categorical":
            field["levels"] = [str(level) for level in column.get("vocab", []) if level != MISSING_LEVEL]
        fields.append(field)
    return fields


def nightly_reports(model: dict[str, Any], reports: dict[int, str]) -> list[tuple[str, int, str]]:
    """(role, version, report URL) of the candidate and the stable version whose nightly run left a report."""
    rollout = model.get("rollout") or {}
    roles = (("candidate", rollout.get("candidate")), ("stable", model.get("stable_version")))
    return [(role, number, reports[number]) for role, number in roles if number in reports]


class WebPages:
    """The ``/ui`` routes and ``/`` (a redirect to them), rendering the model catalogue."""

    def __init__(self, catalogue: ModelCatalogue) -> None:
        self.catalogue = catalogue
        self.env = Environment(
            loader=PackageLoader("service.ui", "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["number"] = number
        self.version = asset_version(STATIC_DIR)

    def routes(self) -> list[BaseRoute]:
        return [
            # pages, not API: out of the OpenAPI document
            Route("/", self.home, methods=["GET"], include_in_schema=False),
            Route("/ui", self.models, methods=["GET"], include_in_schema=False),
            Route("/ui/models/{name}", self.model_card, methods=["GET"], include_in_schema=False),
            Route("/ui/rollouts/{name}", self.rollout, methods=["GET"], include_in_schema=False),
            Route("/ui/monitoring/{name}", self.monitoring, methods=["GET"], include_in_schema=False),
            Route("/ui/review", self.review, methods=["GET"], include_in_schema=False),
            Mount("/ui/static", app=StaticFiles(directory=STATIC_DIR), name="ui-static"),
        ]

    # -- handlers ------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/ui", status_code=302)

    async def models(self, request: Request) -> Response:
        models = [self.catalogue.model_document(summary["name"]) for summary in self.catalogue.model_list()]
        return self.render(request, "models.html", "models", title="Models", models=models)

    async def model_card(self, request: Request) -> Response:
        model = self._model(request)
        if model is None:
            return self._unknown_model(request)
        columns = form_columns(model.get("input"))
        page_data = {
            "name": model["name"],
            "task": model.get("task"),
            "input_kind": model.get("input_kind"),
            "classes": model.get("classes", []),
            "columns": columns,
        }
        return self.render(
            request, "model.html", "models", title=model["name"], model=model, columns=columns, page_data=page_data
        )

    async def rollout(self, request: Request) -> Response:
        model = self._model(request)
        if model is None:
            return self._unknown_model(request)
        versions = model.get("versions", [])
        reports = {v["version"]: v["nightly_report"] for v in versions if v.get("nightly_report")}
        page_data = {"name": model["name"], "versions": [v["version"] for v in versions], "reports": reports}
        return self.render(
            request,
            "rollout.html",
            "rollout",
            title=f"Rollout of {model['name']}",
            model=model,
            nightly_reports=nightly_reports(model, reports),
            page_data=page_data,
        )

    async def monitoring(self, request: Request) -> Response:
        model = self._model(request)
        if model is None:
            return self._unknown_model(request)
        page_data = {"name": model["name"], "versions": [v["version"] for v in model.get("versions", [])]}
        return self.render(
            request,
            "monitoring.html",
            "monitoring",
            title=f"Monitoring of {model['name']}",
            model=model,
            page_data=page_data,
        )

    async def review(self, request: Request) -> Response:
        names = [summary["name"] for summary in self.catalogue.model_list()]
        chosen = request.query_params.get("model", "")
        page_data = {"models": names, "reasons": list(REVIEW_REASONS)}
        return self.render(
            request,
            "review.html",
            "review",
            title="Review queue",
            names=names,
            chosen=chosen,
            reasons=REVIEW_REASONS,
            page_data=page_data,
        )

    # -- helpers -------------------------------------------------------------------------

    def _model(self, request: Request) -> dict[str, Any] | None:
        try:
            return self.catalogue.model_document(request.path_params["name"])
        except NotFound:
            return None

    def _unknown_model(self, request: Request) -> Response:
        name = request.path_params["name"]
        served = [summary["name"] for summary in self.catalogue.model_list()]
        return self.render(
            request, "not_found.html", "models", title="Model not found", name=name, served=served, status_code=404
        )

    def render(
        self, request: Request, template: str, section: str, *, status_code: int = 200, **context: Any
    ) -> Response:
        root = request.scope.get("root_path", "")
        html = self.env.get_template(template).render(
            root=root,
            section=section,
            static=f"{root}/ui/static",
            asset_version=self.version,
            **context,
        )
        return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
