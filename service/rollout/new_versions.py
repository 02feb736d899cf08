"""What a version that appears in the repository gets (``SERVING_NEW_VERSIONS``): a pure decision.

- ``hold`` (the default): it is loaded, warmed and reachable pinned, but takes no unpinned traffic; the
  version that served keeps serving as stable, remembered in the state store (a restart keeps it, every
  replica agrees). A model seen for the first time, with nothing stored, serves its newest version.
- ``shadow``: as ``hold``, and the newest version starts as the candidate in shadow (the policy file's
  ``new_versions`` template, else shadow only), unless a candidate already runs (shadow or canary).
- ``latest``: the newest version takes every unpinned request (no decision is stored).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from service.rollout.policy import ModelPolicy, Template

NewVersions = Literal["hold", "shadow", "latest"]


def on_arrival(
    mode: str, policy: ModelPolicy | None, loaded: Collection[int], template: Template, now: float
) -> tuple[str, ModelPolicy] | None:
    """The change a model's loaded versions call for, as (action, policy after), or None for none."""
    if mode == "latest" or not loaded:
        return None
    newest = max(loaded)
    if policy is None:
        return "hold", ModelPolicy(stable=newest)
    serving = policy.serving
    if mode != "shadow" or newest <= serving or serving not in loaded or newest == policy.candidate:
        return None
    if policy.candidate is not None and policy.stage in ("shadow", "canary"):
        return None  # one candidate at a time: a newer version waits, held, until this one is decided
    return "shadow", template.plan(serving, newest, now)
