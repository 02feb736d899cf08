"""The rollout routes (``service.api.rollouts``) as OpenAPI 3 path items, for the service's OpenAPI document."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_BEARER = {
    "name": "Authorization",
    "in": "header",
    "required": True,
    "schema": {"type": "string"},
    "description": "Bearer <SERVING_ADMIN_TOKEN>.",
}
_REASON = {
    "required": False,
    "content": {"application/json": {"schema": {"type": "object", "properties": {"reason": {"type": "string"}}}}},
}


def _response(description: str, error: bool = False) -> dict[str, Any]:
    schema = _ERROR if error else {"type": "object"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_SHADOW = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["version"],
                "properties": {
                    "version": {"type": "integer", "minimum": 1, "description": "A loaded version of the model."},
                    "template": {"type": "string", "description": "A template of the rollout file's templates:."},
                    "reason": {"type": "string"},
                },
            }
        }
    },
}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": 'The revision read (the ETag of GET /v1/rollouts/{name}, e.g. "3"): any move since is a 409.',
}

_CHANGE_ERRORS = {
    "400": _response("A broken request: a bad Content-Length, or a body cut short.", error=True),
    "413": _response("A body over 64 KiB.", error=True),
    "401": _response("A missing or wrong admin token.", error=True),
    "403": _response("Admin endpoints are off: no SERVING_ADMIN_TOKEN is configured.", error=True),
    "404": _response("No such model, or no rollout policy for it.", error=True),
    "409": _response("The rollout moved on from the revision the change was based on.", error=True),
    "422": _response("The change is not possible (the field is named).", error=True),
    "503": _response("The state store is unreachable: the change was not made.", error=True),
}


def rollout_paths() -> dict[str, Any]:
    """Every rollout route: reading the state, the audit trail, and the admin's changes."""
    return {
        "/v1/rollouts": {
            "get": {
                "summary": "The rollout state of every model, the policy file's status and the state store's health.",
                "responses": {"200": _response("Every model's rollout.")},
            }
        },
        "/v1/rollouts/{name}": {
            "get": {
                "summary": "One model's rollout: stage, step, shares per region, guardrails, decisions, timeline.",
                "parameters": [_NAME],
                "responses": {"200": _response("The rollout."), "404": _response("No policy.", error=True)},
            },
            "put": {
                "summary": "Replace the model's rollout policy (admin token); stored for every replica.",
                "parameters": [_NAME, _BEARER, _IF_MATCH],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object", "required": ["stable"]}}},
                },
                "responses": {"200": _response("The rollout after the change."), **_CHANGE_ERRORS},
            },
        },
        "/v1/rollouts/{name}/history": {
            "get": {
                "summary": "The audit trail of the model's rollout, newest first.",
                "parameters": [_NAME],
                "responses": {
                    "200": _response("The audit entries."),
                    "404": _response("No policy.", error=True),
                    "503": _response("The state store is unreachable.", error=True),
                },
            }
        },
        "/v1/rollouts/{name}/promote": {
            "post": {
                "summary": "The candidate takes all traffic (admin token).",
                "parameters": [_NAME, _BEARER, _IF_MATCH],
                "requestBody": _REASON,
                "responses": {"200": _response("The rollout after the change."), **_CHANGE_ERRORS},
            }
        },
        "/v1/rollouts/{name}/shadow": {
            "post": {
                "summary": "A loaded version starts as the candidate in shadow beside the serving version, under a "
                "template's plan or shadow only (admin token); the stable version keeps answering.",
                "parameters": [_NAME, _BEARER, _IF_MATCH],
                "requestBody": _SHADOW,
                "responses": {"200": _response("The rollout after the change."), **_CHANGE_ERRORS},
            }
        },
        "/v1/rollouts/{name}/advance": {
            "post": {
                "summary": "A plan held in shadow moves to its first canary step now (admin token).",
                "parameters": [_NAME, _BEARER, _IF_MATCH],
                "requestBody": _REASON,
                "responses": {"200": _response("The rollout after the change."), **_CHANGE_ERRORS},
            }
        },
        "/v1/rollouts/{name}/rollback": {
            "post": {
                "summary": "The candidate gets no traffic (admin token).",
                "parameters": [_NAME, _BEARER, _IF_MATCH],
                "requestBody": _REASON,
                "responses": {"200": _response("The rollout after the change."), **_CHANGE_ERRORS},
            }
        },
    }
