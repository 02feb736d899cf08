"""The rollout endpoints: read the state of every rollout, and (with the admin token) change one.

    GET  /v1/rollouts                    every model's rollout state, the policy file's status, the store's health
    GET  /v1/rollouts/{name}             one model's rollout state (``ETag``: its revision)
    GET  /v1/rollouts/{name}/history     the audit trail, newest first
    PUT  /v1/rollouts/{name}             replace the policy (JSON body: one model's policy)
    POST /v1/rollouts/{name}/promote     the candidate takes all traffic
    POST /v1/rollouts/{name}/rollback    the candidate gets none
    POST /v1/rollouts/{name}/shadow      a loaded version starts as the candidate in shadow (JSON: version, template)
    POST /v1/rollouts/{name}/advance     a plan held in shadow moves to its first step

Changes need ``Authorization: Bearer <SERVING_ADMIN_TOKEN>``, compared in
constant time; with no token configured they are refused (403). A change
is written to the state store before it is acknowledged, so it reaches every
replica; when the store cannot be reached the change is refused (503). A
change names the revision it was made from; one that finds the stored
decision moved on is made again on the current state when it still applies
(same stable, candidate and stage), else refused with 409 naming the current
revision. ``If-Match: "<revision>"`` makes any move a 409.

Reads are open to anyone, in the public view: with the admin token they also
show file paths and errors, the store's location and error, and who exactly
made each decision (see :mod:`service.rollout.views`).
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bundle.store import StoreUnavailable
from service.codecs.strict_json import parse_json
from service.http.auth import matches, require_admin
from service.http.body import read_body
from service.http.errors import Conflict, InvalidInput, NotFound, Unavailable
from service.http.responses import JSONResponse
from service.rollout.manager import RevisionConflict, RolloutManager
from service.rollout.policy import PolicyError, parse_model_policy
from service.rollout.views import describe, describe_model, history_entries
from service.settings import ServiceSettings

_NOT_CONFIGURED = (
    "rollouts are not configured: start the service with --rollout FILE (SERVING_ROLLOUT) or SERVING_STATE_URL"
)
MAX_BODY_BYTES = 65_536  # a policy is a few hundred bytes; nothing larger is parsed
MAX_REASON_CHARS = 1_000
MAX_ACTOR_CHARS = 64


def shows_internals(admin_token: SecretStr | None, authorization: str) -> bool:
    """Whether a read carries the admin token, and so may see paths, errors, locations and actors."""
    token = admin_token.get_secret_value() if admin_token is not None else ""
    return bool(token) and matches(authorization, [token.encode()])


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
            Route("/v1/rollouts/{name}/shadow", self.shadow, methods=["POST"]),
            Route("/v1/rollouts/{name}/advance", self.advance, methods=["POST"]),
        ]

    # -- reading -------------------------------------------------------------------------

    async def list_rollouts(self, request: Request) -> Response:
        if self.rollout is None:
            return JSONResponse({"enabled": False, "detail": _NOT_CONFIGURED, "models": {}})
        return JSONResponse({"enabled": True, **describe(self.rollout, self._internals(request))})

    async def get_rollout(self, request: Request) -> Response:
        return self._state(request.path_params["name"], self._internals(request))

    async def history(self, request: Request) -> Response:
        rollout = self._manager()
        name = request.path_params["name"]
        try:
            entries = await rollout.history(name)
        except StoreUnavailable as exc:
            raise Unavailable(f"the state store is unreachable ({exc}); the audit trail cannot be read now") from None
        return JSONResponse({"model": name, "history": history_entries(entries, self._internals(request))})

    # -- changing ------------------------------------------------------------------------

    async def put_rollout(self, request: Request) -> Response:
        actor = self._authorize(request)
        rollout = self._manager()
        name = request.path_params["name"]
        if name not in rollout.policies and not rollout.served_versions(name):
            raise NotFound(f"model {name!r} is not served; a policy needs a served model")
        expected = _if_match(request)
        body = await _json_body(request)
        reason = body.pop("reason", None) if isinstance(body, dict) else None
        try:
            policy = parse_model_policy(body, where=f"models.{name}")
        except PolicyError as exc:
            raise InvalidInput(str(exc)) from None
        await _stored(rollout.replace(name, policy, actor, _reason(reason), expected))
        return self._state(name, internals=True)

    async def promote(self, request: Request) -> Response:
        return await self._decide(request, "promote")

    async def rollback(self, request: Request) -> Response:
        return await self._decide(request, "rollback")

    async def advance(self, request: Request) -> Response:
        return await self._decide(request, "advance")

    async def shadow(self, request: Request) -> Response:
        """A loaded version starts as the candidate in shadow, under a template's plan or shadow only."""
        actor = self._authorize(request)
        rollout = self._manager()
        name = request.path_params["name"]
        if name not in rollout.policies and not rollout.served_versions(name):
            raise NotFound(f"model {name!r} is not served; a shadow needs a served model")
        expected = _if_match(request)
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise InvalidInput('body: expected a JSON object such as {"version": 2, "template": "course"}')
        unknown = sorted(set(body) - {"version", "template", "reason"})
        if unknown:
            raise InvalidInput(f"body: unknown fields {unknown}; expected version, template, reason")
        version, template = body.get("version"), body.get("template")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**63:
            raise InvalidInput(f"version: expected a positive integer version number, got {version!r}")
        if template is not None and not isinstance(template, str):
            raise InvalidInput("template: must be the name of a template in the rollout file")
        try:
            await _stored(rollout.shadow(name, version, template, actor, _reason(body.get("reason")), expected))
        except PolicyError as exc:
            raise InvalidInput(str(exc)) from None
        return self._state(name, internals=True)

    async def _decide(self, request: Request, decision: str) -> Response:
        """A manual promote, rollback or advance: authorised, recorded with its actor and reason, stored fleet-wide."""
        actor = self._authorize(request)
        rollout = self._manager()
        name = request.path_params["name"]
        expected = _if_match(request)
        reason = await _reason_of(request)
        self._known(name)
        change = {"promote": rollout.promote, "rollback": rollout.rollback, "advance": rollout.advance}[decision]
        try:
            await _stored(change(name, actor, reason, expected))
        except PolicyError as exc:
            raise InvalidInput(str(exc)) from None
        if decision == "rollback":
            rollout.metrics.rollbacks.labels(name, "manual").inc()
        return self._state(name, internals=True)

    # -- helpers -------------------------------------------------------------------------

    def _manager(self) -> RolloutManager:
        if self.rollout is None:
            raise NotFound(_NOT_CONFIGURED)
        return self.rollout

    def _known(self, name: str) -> None:
        if name not in self._manager().policies:
            raise NotFound(f"model {name!r} has no rollout policy; policies: {sorted(self._manager().policies)}")

    def _state(self, name: str, internals: bool) -> Response:
        """One model's state, with its revision as the ``ETag`` a later change may send back in ``If-Match``."""
        rollout = self._manager()
        described = describe_model(rollout, name, internals)
        if described is None:
            raise NotFound(f"model {name!r} has no rollout policy; policies: {sorted(rollout.policies)}")
        return JSONResponse(described, headers={"ETag": f'"{described["revision"]}"'})

    def _internals(self, request: Request) -> bool:
        return shows_internals(self.settings.admin_token, request.headers.get("authorization", ""))

    def _authorize(self, request: Request) -> str:
        """The actor recorded in the audit trail; raises 403 without a configured token, 401 for a wrong one."""
        require_admin(self.settings.admin_token, request.headers.get("authorization", ""))
        client = request.client.host if request.client else "unknown"
        return f"admin ({actor_label(request.headers.get('x-actor', ''))} from {client})"


def actor_label(given: str) -> str:
    """The ``X-Actor`` header fit for the audit trail: printable characters only, at most ``MAX_ACTOR_CHARS``."""
    label = "".join(ch if ch.isprintable() else "?" for ch in given.strip())
    if len(label) > MAX_ACTOR_CHARS:
        label = label[: MAX_ACTOR_CHARS - 1] + "…"
    return label or "token"


async def _stored(change: Any) -> Any:
    try:
        return await change
    except StoreUnavailable as exc:
        raise Unavailable(f"the state store is unreachable ({exc}); the change was not made") from None
    except RevisionConflict as exc:
        raise Conflict(str(exc)) from None
    except LookupError as exc:
        raise NotFound(str(exc).strip("'\"")) from None


def _if_match(request: Request) -> int | None:
    """The revision named by ``If-Match`` (``"3"``, ``W/"3"`` or ``3``); None without one, or for ``*``."""
    given = request.headers.get("if-match")
    if given is None or given.strip() == "*":
        return None
    text = given.strip().removeprefix("W/").strip('"')
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise InvalidInput(f'If-Match: expected the revision an ETag gave, such as "3"; got {given[:40]!r}')
    return int(text)


async def _json_body(request: Request) -> Any:
    raw = await read_body(request.receive, request.headers.get("content-length"), MAX_BODY_BYTES)
    return parse_json(raw) if raw.strip() else {}


async def _reason_of(request: Request) -> str | None:
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise InvalidInput('body: expected a JSON object such as {"reason": "..."}')
    return _reason(body.get("reason"))


def _reason(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("reason: must be a string")
    if len(value) > MAX_REASON_CHARS:
        raise InvalidInput(f"reason: at most {MAX_REASON_CHARS} characters, got {len(value)}")
    if "\x00" in value:
        raise InvalidInput("reason: must not hold a NUL character")
    return value
