"""The OpenAPI 3 document of the service, written by hand from the HTTP contract.

Hand-written because the predict bodies (multipart, raw images, JSON, CSV)
are easier to state plainly than to generate.
"""

from __future__ import annotations

from typing import Any

from service.oip.openapi import oip_paths

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


def _error(description: str) -> dict[str, Any]:
    return _json(description, {"$ref": "#/components/schemas/Error"})


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


_HEADERS = [
    {"name": "X-Request-Id", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Echoed back; generated when absent."},
    {"name": "X-Region", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Client region (rollout routing, metric label)."},
    {"name": "X-Request-Key", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Sticky rollout assignment key; defaults to the request id."},
]  # fmt: skip


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


def openapi_document(version: str = "1") -> dict[str, Any]:
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
            "/v1/models": {"get": {"summary": "Every model: versions, task, input kind, serving state.",
                                   "responses": {"200": _json("The models.")}}},  # fmt: skip
            "/v1/models/{name}": {
                "get": {
                    "summary": "One model: versions, classes, input schema, serving state.",
                    "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _json("The model."), "404": _error("Unknown model.")},
                }
            },
            "/v1/models/{name}/predict": _predict_operation("Predict with the version routing chooses.", False),
            "/v1/models/{name}/versions/{version}/predict": _predict_operation("Predict with a pinned version.", True),
            **oip_paths(),
            # monitoring (docs/monitoring.md)
            "/v1/models/{name}/drift": {
                "get": {
                    "summary": "Drift per feature (PSI and verdict), out-of-domain counts, estimated and live accuracy.",
                    "parameters": [
                        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "version", "in": "query", "required": False, "schema": {"type": "integer"}},
                        {"name": "region", "in": "query", "required": False, "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _json("The drift report of each served version."),
                                  "404": _error("Unknown model or version."), "422": _error("Unknown region.")},
                }
            },
            "/v1/feedback": {
                "post": {
                    "summary": "Ground truth for a logged prediction: {request_id, label | value[, item]}.",
                    "responses": {"200": _json("Whether the prediction was right."),
                                  "404": _error("No logged prediction has this request id."),
                                  "422": _error("A label the model does not know, or no label.")},
                }
            },
        },
        "components": {
            "schemas": {"Error": _ERROR, "Prediction": _PREDICTION, "PredictResponse": _PREDICT_RESPONSE}
        },
    }
