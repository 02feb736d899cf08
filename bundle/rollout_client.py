"""Steering a running service's rollouts over HTTP, without the service's code (standard library only).

The nightly job and ``python -m service rollout status|shadow|advance|promote|rollback`` use it:

    client = RolloutClient("http://127.0.0.1:8080", token=os.environ["SERVING_ADMIN_TOKEN"])
    client.stable_version("digits")             # "3": the version answering unpinned traffic as stable
    client.shadow("digits", "4", template="course")   # v4 runs beside v3, only compared and logged
    client.advance("digits")                    # shadow -> the plan's first canary step
    client.promote("digits")                    # v4 answers everyone
    client.rollback("digits")

Every change is sent with the admin token (``Authorization: Bearer``) and, when
given, the revision the caller read (``If-Match``); a refused change raises
:class:`RolloutError` with the service's status and message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class RolloutError(Exception):
    """A request the service refused (``status`` its HTTP status) or could not be sent (``status`` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class RolloutClient:
    """The rollout endpoints of one service (``/v1/rollouts/...`` and ``/v1/models/{name}``)."""

    def __init__(
        self, base_url: str, token: str | None = None, timeout_s: float = 10.0, actor: str | None = None
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: expected http://host:port, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token or None
        self.timeout_s = timeout_s
        self.actor = actor  # recorded in the audit trail (X-Actor), e.g. "nightly"

    # -- reading -------------------------------------------------------------------------

    def status(self, model: str) -> dict[str, Any]:
        """The model's rollout state (``GET /v1/rollouts/{model}``; the admin view when a token is given).

        A model served without a rollout policy reads as ``{"model": ..., "stage": "none", "stable": <serving>,
        "candidate": None, "held": [...]}`` from its model document."""
        try:
            return self._call("GET", f"/v1/rollouts/{_quote(model)}")
        except RolloutError as exc:
            if exc.status != 404:
                raise
        document = self._call("GET", f"/v1/models/{_quote(model)}")  # a 404 here: no such model
        stable = document.get("stable_version", document.get("serving_version"))
        return {
            "model": model,
            "source": None,
            "revision": 0,
            "stable": stable,
            "candidate": None,
            "stage": "none",
            "held": document.get("held_versions", []),
            "versions": document.get("versions", []),
        }

    def stable_version(self, model: str) -> str | None:
        """The version that serves unpinned traffic as stable (a promoted candidate counts); None with none."""
        state = self.status(model)
        version = state.get("candidate") if state.get("stage") == "promoted" else state.get("stable")
        return None if version is None else str(version)

    # -- changing (admin token) ----------------------------------------------------------

    def shadow(
        self,
        model: str,
        version: str,
        template: str | None = None,
        reason: str = "",
        revision: int | None = None,
    ) -> dict[str, Any]:
        """Start ``version`` as the candidate in shadow: it runs on copies of requests, stable keeps answering.

        The plan after the shadow stage comes from ``template`` (a name in the policy file's ``templates:``);
        without one the plan is shadow only, to be promoted or rolled back by a person."""
        body: dict[str, Any] = {"version": _version_number(version), "reason": reason or None}
        if template is not None:
            body["template"] = template
        return self._change(model, "shadow", body, revision)

    def advance(self, model: str, reason: str = "", revision: int | None = None) -> dict[str, Any]:
        """A held plan moves on: from the shadow stage to its first canary step."""
        return self._change(model, "advance", {"reason": reason or None}, revision)

    def promote(self, model: str, reason: str = "", revision: int | None = None) -> dict[str, Any]:
        """The candidate answers everyone."""
        return self._change(model, "promote", {"reason": reason or None}, revision)

    def rollback(self, model: str, reason: str = "", revision: int | None = None) -> dict[str, Any]:
        """The candidate answers no one; stable serves everyone."""
        return self._change(model, "rollback", {"reason": reason or None}, revision)

    # -- HTTP ----------------------------------------------------------------------------

    def _change(self, model: str, action: str, body: dict[str, Any], revision: int | None) -> dict[str, Any]:
        headers = {"If-Match": f'"{revision}"'} if revision is not None else {}
        return self._call("POST", f"/v1/rollouts/{_quote(model)}/{action}", body, headers)

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        sent = {"Accept": "application/json", **(headers or {})}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        if self.actor:
            sent["X-Actor"] = self.actor
        data = None
        if body is not None:
            data = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
            sent["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base_url + path, data=data, headers=sent, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise RolloutError(exc.code, _message_of(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RolloutError(0, f"cannot reach the service at {self.base_url}: {reason}") from None
        except ValueError:
            raise RolloutError(0, f"{method} {path}: the service's answer is not JSON") from None
        if not isinstance(answer, dict):
            raise RolloutError(0, f"{method} {path}: expected a JSON object, got {type(answer).__name__}")
        return answer


def _message_of(exc: urllib.error.HTTPError) -> str:
    """The service's ``{"error": {"message": ...}}``, or the status line when the body says nothing usable."""
    try:
        raw = exc.read()
        error = json.loads(raw).get("error", {})
        message = error.get("message") if isinstance(error, dict) else None
    except (ValueError, AttributeError, OSError):
        message = None
    return str(message) if message else f"HTTP {exc.code} {exc.reason}"


def _quote(model: str) -> str:
    return urllib.parse.quote(model, safe="")


def _version_number(version: str | int) -> int:
    text = str(version).strip().removeprefix("v")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"version: expected a positive integer such as 2, got {version!r}")
    return int(text)
