"""Bearer tokens: who may do what. Every check compares in constant time and names the credential it wants.

- the admin token (``SERVING_ADMIN_TOKEN``) steers rollouts and may do what the reviewer does;
- the reviewer token (``SERVING_REVIEWER_TOKEN``) reads the review queue and sends ground truth;
- the feedback token (``SERVING_FEEDBACK_TOKEN``) only sends ground truth: a labelling system holds it,
  and it reads nothing of the log (feedback answers say whether an answer counted, never what was predicted).

A role with no token configured is switched off (403), never open; feedback alone can be opened to anyone
on purpose (``SERVING_FEEDBACK_OPEN``), since its answers move the ``min_live_accuracy`` guardrail.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from service.http.errors import Forbidden, Unauthorized


def _configured(*tokens: SecretStr | None) -> list[bytes]:
    return [t.get_secret_value().encode() for t in tokens if t is not None and t.get_secret_value()]


def presented(authorization: str) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header, None for any other form."""
    scheme, _, given = authorization.partition(" ")
    return given.strip().encode() if scheme.lower() == "bearer" else None


def matches(authorization: str, tokens: list[bytes]) -> bool:
    """Whether the header carries one of ``tokens`` (every token is compared, so timing tells nothing)."""
    given = presented(authorization)
    found = [hmac.compare_digest(given or b"", token) for token in tokens]
    return given is not None and any(found)


def require_admin(admin_token: SecretStr | None, authorization: str) -> None:
    """403 without a configured admin token, 401 for a missing or wrong one."""
    tokens = _configured(admin_token)
    if not tokens:
        raise Forbidden("admin endpoints are disabled: set SERVING_ADMIN_TOKEN to enable them")
    if not matches(authorization, tokens):
        raise Unauthorized("Authorization: Bearer <admin token> is missing or wrong")


def require_reviewer(admin_token: SecretStr | None, reviewer_token: SecretStr | None, authorization: str) -> None:
    """The reviewer token or the admin token; 403 when neither is configured."""
    tokens = _configured(admin_token, reviewer_token)
    if not tokens:
        raise Forbidden("the review queue is disabled: set SERVING_REVIEWER_TOKEN or SERVING_ADMIN_TOKEN")
    if not matches(authorization, tokens):
        raise Unauthorized("Authorization: Bearer <reviewer or admin token> is missing or wrong")


def reviewer(admin_token: SecretStr | None, reviewer_token: SecretStr | None, authorization: str) -> bool:
    """Whether the header carries the reviewer or the admin token (a person in the review queue)."""
    tokens = _configured(admin_token, reviewer_token)
    return bool(tokens) and matches(authorization, tokens)


def require_feedback(
    admin_token: SecretStr | None,
    reviewer_token: SecretStr | None,
    feedback_token: SecretStr | None,
    open_to_anyone: bool,
    authorization: str,
) -> None:
    """The feedback, reviewer or admin token, unless feedback is opened on purpose; 403 when none is configured."""
    if open_to_anyone:
        return
    tokens = _configured(admin_token, reviewer_token, feedback_token)
    if not tokens:
        raise Forbidden(
            "feedback is disabled: set SERVING_FEEDBACK_TOKEN (or SERVING_REVIEWER_TOKEN), "
            "or SERVING_FEEDBACK_OPEN=true on a closed network"
        )
    if not matches(authorization, tokens):
        raise Unauthorized("Authorization: Bearer <feedback, reviewer or admin token> is missing or wrong")
