"""The rollout endpoints: read the state of every rollout, and (with the admin token) change one.

    GET  /v1/rollouts                    every model's rollout state, the policy file's status, the store's health
    GET  /v1/rollouts/{name}             one model's rollout state
    GET  /v1/rollouts/{name}/history     the audit trail, newest first
    PUT  /v1/rollouts/{name}             replace the policy (JSON body: one model's policy)
    POST /v1/rollouts/{name}/promote     the candidate takes all traffic
    POST /v1/rollouts/{name}/rollback    the candidate gets none

Changes need ``Authorization: Bearer <SERVING_ADMIN_TOKEN>``, compared in
constant time; with no token configured they are refused (403). A change
is written to the state store before it is acknowledged, so it reaches every
replica; when the store cannot be reached the change is refused (503).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bundle.store import StoreUnavailable
from service.http.auth import require_admin
from service.http.errors import InvalidInput, NotFound, Unavailable
from service.http.responses import JSONResponse
from service.rollout.manager import RolloutManager
from service.rollout.policy import PolicyError, parse_model_policy
from service.rollout.views import describe, describe_model
from service.settings import ServiceSettings

_NOT_CONFIGURED = (
    "rollouts are not configured: start the service with --rollout FILE (SERVING_ROLLOUT) or SERVING_STATE_URL"
)


class RolloutAPI:
    def __init__(self, settings: ServiceSettings, rollout: RolloutManager | None) -> None:
        self.settings = settings
        self.rollout = rollout

    def routes(self) -> list[Route]:
        return [
            Route("/v1/rollouts", self.list_rollouts, methods=["GET"]),
            Route("/v1/rollouts/{name}", self.get_rollout, methods=["GET"]),
            Route("/v1/rollouts/{name}", self.put_rollout, methods=["PUT"]),
            Route("/v1/rollouts/{name}/history", self.history, methods=["GET"]),
            Route("/v1/rollouts/{name}/promote", self.promote, methods=["POST"]),
            Route("/v1/rollouts/{name}/rollback", self.rollback, methods=["POST"]),
        ]

    # -- reading -------------------------------------------------------------------------

    async def list_rollouts(self, request: Request) -> Response:
        if self.rollout is None:
            return JSONResponse({"enabled": False, "detail": _NOT_CONFIGURED, "models": {}})
        return JSONResponse({"enabled": True, **describe(self.rollout)})

    async def get_rollout(self, request: Request) -> Response:
        return JSONResponse(self._described(request.path_params["name"]))

    async def history(self, request: Request) -> Response:
        rollout = self._manager()
        name = request.path_params["name"]
        try:
            entries = await rollout.history(name)
        except StoreUnavailable as exc:
            raise Unavailable(f"the state store is unreachable ({exc}); the audit trail cannot be read now") from None
        return JSONResponse({"model": name, "history": entries})

    # -- changing ------------------------------------------------------------------------

    async def put_rollout(self, request: Request) -> Response:
        actor = self._authorize(request)
        rollout = self._manager()
        name = request.path_params["name"]
        if name not in rollout.policies and not rollout.served_versions(name):
            raise NotFound(f"model {name!r} is not served; a policy needs a served model")
        body = await _json_body(request)
        reason = body.pop("reason", None) if isinstance(body, dict) else None
        try:
            policy = parse_model_policy(body, where=f"models.{name}")
        except PolicyError as exc:
            raise InvalidInput(str(exc)) from None
        await _stored(rollout.replace(name, policy, actor, _reason(reason)))
        return JSONResponse(self._described(name))

    async def promote(self, request: Request) -> Response:
        return await self._decide(request, "promote")

    async def rollback(self, request: Request) -> Response:
        return await self._decide(request, "rollback")

    async def _decide(self, request: Request, decision: str) -> Response:
        """A manual promote or rollback: authorised, recorded with its actor and reason, stored fleet-wide."""
        actor = self._authorize(request)
        rollout = self._manager()
        name = request.path_params["name"]
        reason = await _reason_of(request)
        self._known(name)
        change = rollout.promote if decision == "promote" else rollout.rollback
        try:
            await _stored(change(name, actor, reason))
        except PolicyError as exc:
            raise InvalidInput(str(exc)) from None
        if decision == "rollback":
            rollout.metrics.rollbacks.labels(name, "manual").inc()
        return JSONResponse(self._described(name))

    # -- helpers -------------------------------------------------------------------------

    def _manager(self) -> RolloutManager:
        if self.rollout is None:
            raise NotFound(_NOT_CONFIGURED)
        return self.rollout

    def _known(self, name: str) -> None:
        if name not in self._manager().policies:
            raise NotFound(f"model {name!r} has no rollout policy; policies: {sorted(self._manager().policies)}")

    def _described(self, name: str) -> dict[str, Any]:
        described = describe_model(self._manager(), name)
        if described is None:
            raise NotFound(f"model {name!r} has no rollout policy; policies: {sorted(self._manager().policies)}")
        return described

    def _authorize(self, request: Request) -> str:
        """The actor recorded in the audit trail; raises 403 without a configured token, 401 for a wrong one."""
        require_admin(self.settings.admin_token, request.headers.get("authorization", ""))
        client = request.client.host if request.client else "unknown"
        return f"admin ({request.headers.get('x-actor', 'token')} from {client})"


async def _stored(change: Any) -> Any:
    try:
        return await change
    except StoreUnavailable as exc:
        raise Unavailable(f"the state store is unreachable ({exc}); the change was not made") from None
    except LookupError as exc:
        raise NotFound(str(exc).strip("'\"")) from None


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise InvalidInput(f"body: not valid JSON ({exc})") from None


async def _reason_of(request: Request) -> str | None:
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise InvalidInput('body: expected a JSON object such as {"reason": "..."}')
    return _reason(body.get("reason"))


def _reason(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidInput("reason: must be a string")
    return value
