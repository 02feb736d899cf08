"""Which loaded version answers a request: the pinned one, else the rollout's choice, else the highest loaded."""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from service.models.registry import ModelRegistry
from service.models.version import ModelVersion


class RolloutChoice(Protocol):
    """What routing asks of the rollout (``service.rollout.manager.RolloutManager``)."""

    def choose(self, name: str, key: str | None, region: str | None, loaded: Collection[int]) -> int | None: ...


class VersionRouter:
    """Routing in one place, for every protocol, the pages and the catalogue."""

    def __init__(self, registry: ModelRegistry, rollout: RolloutChoice | None) -> None:
        self.registry = registry
        self.rollout = rollout

    def route(self, name: str, key: str | None = None, region: str | None = None) -> ModelVersion:
        """The version that answers an unpinned request with this sticky ``key`` from this ``region``."""
        versions = self.registry.versions_of(name)
        if self.rollout is not None:
            chosen = self.rollout.choose(name, key, region, versions)
            if chosen is not None:
                return versions[chosen]
        return versions[max(versions)]

    def pinned(self, name: str, number: int) -> ModelVersion:
        """A pinned version (bypasses routing)."""
        return self.registry.get(name, number)
