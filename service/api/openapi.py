"""The OpenAPI 3 document of the service, built from the app's route table.

Every route the app serves (except the pages, ``include_in_schema=False``)
is documented by an operation written beside its family: the fixed routes
here, the Open Inference Protocol's in ``openapi_oip``, the rollouts' in
``openapi_rollouts``. A served route without an operation is an error
(``UndocumentedRoute``), so the document cannot fall behind the routes.
Each served model gets its own predict paths, whose request body is what
that model's decoder accepts (its media types, required fields, item and
column limits, the columns of a tabular model), so a client generator or a
schema fuzzer sees the real contract.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.routing import BaseRoute, Mount, Route

from service.api.openapi_oip import oip_paths
from service.api.openapi_rollouts import rollout_paths

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}

_PREDICTION = {
    "type": "object",
    "description": "classification: label, index, probabilities; multilabel: labels, probabilities; "
    "regression: value (one target) or values (several, by target name).",
    "properties": {
        "label": {"type": "string"},
        "index": {"type": "integer"},
        "labels": {"type": "array", "items": {"type": "string"}},
        "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
        "value": {"type": "number"},
        "values": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}

_PREDICT_RESPONSE = {
    "type": "object",
    "required": ["model", "version", "request_id", "predictions"],
    "properties": {
        "model": {"type": "string"},
        "version": {"type": "integer"},
        "request_id": {"type": "string"},
        "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
    },
}

_BINARY = {"schema": {"type": "string", "format": "binary"}}

_PREDICT_BODY = {
    "required": True,
    "description": "Image models: multipart `file` parts, a raw image, or JSON instances. "
    "Tabular models: JSON rows (missing keys and nulls are missing values) or CSV with a header.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }
        },
        "image/jpeg": _BINARY,
        "image/png": _BINARY,
        "image/webp": _BINARY,
        "image/bmp": _BINARY,
        "image/gif": _BINARY,
        "application/octet-stream": _BINARY,
        "application/json": {
            "schema": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["instances"],
                        "properties": {
                            "instances": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["b64"],
                                    "properties": {"b64": {"type": "string"}},
                                },
                            }
                        },
                    },
                    {
                        "type": "object",
                        "required": ["rows"],
                        "properties": {"rows": {"type": "array", "items": {"type": "object"}}},
                    },
                ]
            }
        },
        "text/csv": {"schema": {"type": "string"}},
    },
}


_FEEDBACK: dict[str, Any] = {
    "type": "object",
    "required": ["request_id"],
    "properties": {
        "request_id": {
            "type": "string",
            "minLength": 1,
            "maxLength": 200,
            "description": "The request_id of the prediction's response body (the service's own id; a client's "
            "X-Request-Id names nothing).",
        },
        "label": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            "description": "The true class (classification) or classes (multilabel).",
        },
        "value": {"type": "number", "description": "The true value (regression)."},
        "source": {
            "type": "string",
            "enum": ["review", "api"],
            "default": "api",
            "description": "Who answered: 'review' (a person in the review queue; reviewer or admin token) or 'api' "
            "(a system). Stored with the answer, so a dataset built from the log counts answers per source.",
        },
        "item": {
            "type": "integer",
            "minimum": 0,
            "maximum": 1000000,
            "description": "Which prediction of a many-item request (default 0).",
        },
    },
    "oneOf": [{"required": ["label"]}, {"required": ["value"]}],
}


def _error(description: str) -> dict[str, Any]:
    return _json(description, {"$ref": "#/components/schemas/Error"})


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


_HEADERS = [
    {
        "name": "X-Request-Id",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "Echoed back when it is 1-128 letters, digits, '.', '_' or '-'; a new id replaces any other.",
    },
    {
        "name": "X-Region",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "Client region (rollout routing, metric label).",
    },
    {
        "name": "X-Request-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "Sticky rollout assignment key; defaults to the request id.",
    },
]


def _predict_operation(summary: str, pinned: bool) -> dict[str, Any]:
    parameters = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    if pinned:
        parameters.append({"name": "version", "in": "path", "required": True, "schema": {"type": "integer"}})
    return {
        "post": {
            "summary": summary,
            "parameters": parameters + _HEADERS,
            "requestBody": _PREDICT_BODY,
            "responses": {
                "200": {
                    **_json("Predictions, one per image or row, in order.", _ref("PredictResponse")),
                    "headers": {"X-Model-Version": {"schema": {"type": "integer"}}},
                },
                "404": _error("Unknown model or version."),
                "413": _error("Body, image or item count over the limit."),
                "415": _error("Unsupported Content-Type for this model."),
                "422": _error("Invalid input; the message names the field or part."),
                "503": _error("Queue full (with Retry-After) or model unavailable."),
                "504": _error("The request deadline passed before it ran."),
            },
        }
    }


@dataclass(frozen=True)
class ModelContract:
    """What the document states about one served model: its versions and its decoder's ``schema()``."""

    name: str
    versions: Sequence[int]
    input: Mapping[str, Any]
    max_items: int
    max_columns: int = 512
    ignore_unknown_columns: bool = False


_RESPONSE_HEADERS = {
    "X-Request-Id": {"description": "The request's id (the client's, or a new one).", "schema": {"type": "string"}},
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


def _errors(*statuses: int) -> dict[str, Any]:
    described = {
        400: "The HTTP request is malformed (Content-Length, body cut short).",
        404: "Unknown model or version.",
        405: "Wrong method.",
        408: "The request headers or body did not arrive within the read timeouts.",
        413: "Body, image, pixel, row, column or cell count over a limit; the message names it.",
        415: "Content-Type, or the image format the bytes are, not accepted by this model.",
        422: "Invalid input; the message names the field or part.",
        431: "Request headers over the size limit.",
        500: "Internal error (the service log has the details).",
        503: "Queue, preprocessing backlog or connection limit full (retry after Retry-After), "
        "the model is unavailable, or the server is shutting down.",
        504: "The request deadline passed before it ran.",
    }
    responses: dict[str, Any] = {}
    for status in statuses:
        response = _error(described[status])
        response["headers"] = {**_RESPONSE_HEADERS, **(_RETRY_AFTER if status == 503 else {})}
        responses[str(status)] = response
    return responses


def _column_schema(column: Mapping[str, Any]) -> dict[str, Any]:
    if column["kind"] == "continuous":
        bounds = {key: column[key] for key in ("minimum", "maximum") if key in column}
        return {"type": ["number", "null"], **bounds}
    if column["kind"] == "date":
        return {"type": ["string", "null"], "format": "date"}
    vocab = [v for v in column.get("vocab", []) if v != "#na#"]
    values: dict[str, Any] = {"type": ["string", "number", "boolean", "null"]}
    if vocab:  # an unseen category is served as #na#, so any string is valid; the vocabulary is documented
        values["examples"] = vocab[:20]
    return values


def _request_body(model: ModelContract) -> dict[str, Any]:
    spec = model.input
    media_types = list(spec.get("media_types", []))
    content: dict[str, Any] = {}
    if spec.get("kind") == "image":
        image = {"type": "string", "format": "binary", "contentMediaType": "image/*"}
        for media_type in media_types:
            if media_type == "multipart/form-data":
                content[media_type] = {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "additionalProperties": False,
                        "properties": {
                            "file": {"type": "array", "minItems": 1, "maxItems": model.max_items, "items": image}
                        },
                    },
                    "encoding": {"file": {"contentType": ", ".join(t for t in media_types if t.startswith("image/"))}},
                }
            elif media_type == "application/json":
                content[media_type] = {
                    "schema": {
                        "type": "object",
                        "required": ["instances"],
                        "properties": {
                            "instances": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": model.max_items,
                                "items": {
                                    "type": "object",
                                    "required": ["b64"],
                                    "properties": {
                                        "b64": {"type": "string", "format": "byte", "contentMediaType": "image/*"}
                                    },
                                },
                            }
                        },
                    }
                }
            else:
                content[media_type] = {"schema": dict(image, contentMediaType=media_type)}
        description = (
            f"Images ({', '.join(spec.get('image_formats', []))}, judged by their bytes), resized to "
            f"{spec.get('height')}x{spec.get('width')} ({spec.get('resize_method')}); at most {model.max_items}."
        )
    else:
        columns = {c["name"]: _column_schema(c) for c in spec.get("columns", [])}
        row: dict[str, Any] = {
            "type": "object",
            "properties": columns,
            "maxProperties": model.max_columns,
            "description": "Missing keys and nulls are missing values; "
            + (
                "keys that are no column are ignored."
                if model.ignore_unknown_columns
                else "a key that is no column is refused (422)."
            ),
        }
        if not model.ignore_unknown_columns:
            row["additionalProperties"] = False
        content["application/json"] = {
            "schema": {
                "type": "object",
                "required": ["rows"],
                "properties": {"rows": {"type": "array", "minItems": 1, "maxItems": model.max_items, "items": row}},
            }
        }
        content["text/csv"] = {"schema": {"type": "string", "description": "A header row naming columns, then rows."}}
        description = f"Rows of the columns {', '.join(columns)}; at most {model.max_items}."
    return {"required": True, "description": description, "content": content}


def _model_predict_operation(model: ModelContract, pinned: bool) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = []
    if pinned:
        parameters.append(
            {
                "name": "version",
                "in": "path",
                "required": True,
                "schema": {"type": "integer", "enum": list(model.versions)},
            }
        )
    summary = f"Predict with a pinned version of {model.name}." if pinned else f"Predict with {model.name}."
    return {
        "post": {
            "summary": summary,
            "operationId": f"predict_{model.name}" + ("_pinned" if pinned else ""),
            "parameters": parameters + _HEADERS,
            "requestBody": _request_body(model),
            "responses": {
                "200": {
                    **_json("Predictions, one per image or row, in order.", _ref("PredictResponse")),
                    "headers": {"X-Model-Version": {"schema": {"type": "integer"}}, **_RESPONSE_HEADERS},
                },
                **_errors(400, 404, 408, 413, 415, 422, 431, 500, 503, 504),
            },
        }
    }


class UndocumentedRoute(LookupError):
    """A served route that no operation documents."""


# The native predict paths are served ahead of Starlette's router (``service.app.ServingApp``), so they are
# in no route table; they are always part of the document.
PREDICT_PATHS = ("/v1/models/{name}/predict", "/v1/models/{name}/versions/{version}/predict")


def served_operations(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path, lower-case method) of every route in the table that belongs in the schema, mounts included."""
    for route in routes:
        if isinstance(route, Mount) and hasattr(route.app, "routes"):
            yield from served_operations(route.app.routes, prefix + route.path)
        elif isinstance(route, Route) and route.include_in_schema:
            for method in sorted((route.methods or set()) - {"HEAD"}):
                yield prefix + route.path, method.lower()


def openapi_document(
    routes: Sequence[BaseRoute] | None = None, models: Sequence[ModelContract] | None = None, version: str = "1"
) -> dict[str, Any]:
    """The document of the operations ``routes`` serve (every known operation without a route table); with
    ``models``, one pair of predict paths per served model instead of the templates."""
    document = _base_document(version)
    known = document["paths"]
    if routes is not None:
        served = [*served_operations(routes), *((path, "post") for path in PREDICT_PATHS)]
        paths: dict[str, Any] = {}
        for path, method in served:
            operation = known.get(path, {}).get(method)
            if operation is None:
                raise UndocumentedRoute(f"{method.upper()} {path} is served but no OpenAPI operation documents it")
            paths.setdefault(path, {})[method] = operation
        document["paths"] = paths
    if models is not None:
        paths = document["paths"]
        del paths["/v1/models/{name}/predict"], paths["/v1/models/{name}/versions/{version}/predict"]
        for model in models:
            paths[f"/v1/models/{model.name}/predict"] = _model_predict_operation(model, False)
            if model.versions:
                paths[f"/v1/models/{model.name}/versions/{{version}}/predict"] = _model_predict_operation(model, True)
    return document


def _base_document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fastprod model serving",
            "version": version,
            "description": "Serves the ONNX bundles of a model repository behind a dynamic batcher.",
        },
        "paths": {
            "/healthz": {"get": {"summary": "Liveness.", "responses": {"200": _json("Alive.")}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness: every configured model loaded and warmed.",
                    "responses": {"200": _json("Ready."), "503": _error("Not ready; the message says why.")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics.",
                    "responses": {"200": {"description": "Prometheus text format.", "content": {"text/plain": {}}}},
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "Every model: versions, task, input kind, serving state.",
                    "responses": {"200": _json("The models.")},
                }
            },
            "/v1/models/{name}": {
                "get": {
                    "summary": "One model: versions, classes, input schema, serving state.",
                    "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _json("The model."), **_errors(404)},
                }
            },
            "/v1/models/{name}/versions/{version}/report": {
                "get": {
                    "summary": "The report of the nightly run that made this version (its manifest's "
                    "training.lineage.report, a file inside the model's folder), read-only.",
                    "parameters": [
                        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "version", "in": "path", "required": True, "schema": {"type": "integer"}},
                    ],
                    "responses": {
                        "200": {"description": "The report's HTML.", "content": {"text/html": {}}},
                        "404": _error("Unknown model or version, or no report inside the model's folder."),
                        "503": _error("The model has no loaded version."),
                    },
                }
            },
            "/v1/models/{name}/predict": _predict_operation("Predict with the version routing chooses.", False),
            "/v1/models/{name}/versions/{version}/predict": _predict_operation("Predict with a pinned version.", True),
            **oip_paths(),
            **rollout_paths(),
            "/openapi.json": {
                "get": {"summary": "This document.", "responses": {"200": _json("The OpenAPI 3.1 document.")}}
            },
            # monitoring (docs/monitoring.md)
            "/v1/models/{name}/drift": {
                "get": {
                    "summary": "Drift per feature (PSI and verdict), out-of-domain counts, estimated and live accuracy.",
                    "parameters": [
                        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "version", "in": "query", "required": False, "schema": {"type": "integer"}},
                        {"name": "region", "in": "query", "required": False, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json("The drift report of each served version."),
                        "404": _error("Unknown model or version."),
                        "422": _error("Unknown region."),
                    },
                }
            },
            "/v1/predictions": {
                "get": {
                    "summary": "The review queue: logged predictions to look at, newest first (reviewer or admin token).",
                    "parameters": [
                        {"name": "model", "in": "query", "schema": {"type": "string"}},
                        {"name": "version", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                        {"name": "region", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "reason",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": ["ood", "low_confidence", "disagreement", "sample"],
                            },
                        },
                        {"name": "flagged", "in": "query", "schema": {"type": "boolean", "default": True}},
                        {"name": "reviewed", "in": "query", "schema": {"type": "boolean", "default": False}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "description": "The previous page's next: the page after it.",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            "{predictions: [{request_id, item, created_at, model, version, region, "
                            "arm, reasons, inputs, outputs, ood[, shadow]}], total, next}: one page, the queue's "
                            "size, the cursor of the next page (null on the last)"
                        ),
                        "401": _error("A wrong or missing token."),
                        "403": _error("No reviewer or admin token is configured."),
                        "422": _error("A bad filter value."),
                        "503": _error("Monitoring or the prediction log is off, or the log is unreachable."),
                    },
                }
            },
            "/v1/feedback": {
                "post": {
                    "summary": "Ground truth for a logged prediction: {request_id, label | value[, item]} "
                    "(feedback, reviewer or admin token).",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _FEEDBACK}}},
                    "responses": {
                        "200": _json(
                            "{request_id, item, counted, reason}: whether the answer counted (the first answer "
                            "for an item), never what was predicted"
                        ),
                        "401": _error("A wrong or missing token (feedback, reviewer or admin)."),
                        "403": _error("No feedback, reviewer or admin token is configured."),
                        "404": _error("No logged prediction has this request id."),
                        "413": _error("A body over feedback_max_body_bytes."),
                        "415": _error("A body that is not application/json."),
                        "422": _error("A label the model does not know, or no label."),
                        "503": _error("Monitoring or the prediction log is off, or the log is unreachable."),
                    },
                }
            },
        },
        "components": {"schemas": {"Error": _ERROR, "Prediction": _PREDICTION, "PredictResponse": _PREDICT_RESPONSE}},
    }
