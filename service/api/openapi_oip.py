"""The ``/v2`` routes as OpenAPI 3 path items, for the service's OpenAPI document.

The protocol's own schemas are KServe's and Triton's to state; these entries
list the routes and what they answer, with the protocol's error body.
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "The protocol's error body.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            }
        }
    },
}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}


def _json(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}


def _get(summary: str, ok: str, parameters: list[dict[str, Any]], not_found: bool = True) -> dict[str, Any]:
    responses = {"200": _json(ok), "503": _ERROR}
    if not_found:
        responses["404"] = _ERROR
    return {"get": {"summary": summary, "parameters": parameters, "responses": responses}}


def _infer(parameters: list[dict[str, Any]], summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": parameters
            + [
                {
                    "name": "Inference-Header-Content-Length",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "integer"},
                    "description": "Binary tensor data extension: the length of the JSON part; binary tensors follow it.",
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "object", "required": ["inputs"]}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            "responses": {
                "200": {
                    "description": "Outputs as JSON, or JSON then binary tensors "
                    "(with an Inference-Header-Content-Length response header).",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "404": _ERROR,
                "413": _ERROR,
                "415": _ERROR,
                "422": _ERROR,
                "503": _ERROR,
                "504": _ERROR,
            },
        }
    }


def oip_paths() -> dict[str, Any]:
    """Every Open Inference Protocol route (KServe V2 REST)."""
    model, pinned = [_NAME], [_NAME, _VERSION]
    return {
        "/v2": _get("OIP server metadata: name, version, extensions.", "Server metadata.", [], not_found=False),
        "/v2/health/live": _get("OIP liveness.", "Live.", [], not_found=False),
        "/v2/health/ready": _get("OIP readiness: every configured model loaded.", "Ready.", [], not_found=False),
        "/v2/models/{name}": _get("OIP model metadata (the serving version).", "Model metadata.", model),
        "/v2/models/{name}/ready": _get("OIP model readiness.", "Ready.", model),
        "/v2/models/{name}/infer": _infer(model, "OIP inference with the version routing chooses."),
        "/v2/models/{name}/versions/{version}": _get("OIP metadata of one version.", "Model metadata.", pinned),
        "/v2/models/{name}/versions/{version}/ready": _get("OIP readiness of one version.", "Ready.", pinned),
        "/v2/models/{name}/versions/{version}/infer": _infer(pinned, "OIP inference with a pinned version."),
    }
