"""The model catalogue: what ``GET /v1/models``, ``GET /v1/models/{name}``, the OpenAPI document and the
pages say about the served models, from one place."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from service.http.errors import NotFound, ServiceError, public_message
from service.models.registry import ModelRegistry
from service.models.router import VersionRouter

RolloutView = Callable[[str], "dict[str, Any] | None"]  # a model's rollout state, or None without a policy


class ModelCatalogue:
    """Summaries and full descriptions of every served model."""

    def __init__(self, registry: ModelRegistry, router: VersionRouter, rollout_view: RolloutView | None) -> None:
        self.registry = registry
        self.router = router
        self.rollout_view = rollout_view

    def model_list(self) -> list[dict[str, Any]]:
        """The body of ``GET /v1/models``."""
        return [self.summary(name) for name in self.registry.model_names()]

    def model_names(self) -> list[str]:
        return self.registry.model_names()

    def model_document(self, name: str) -> dict[str, Any]:
        """The body of ``GET /v1/models/{name}``; NotFound for a model that is not served."""
        if not self.registry.is_known(name):
            raise NotFound(f"model {name!r} is not served; served models: {self.registry.model_names()}")
        described = self.summary(name)
        versions = self.registry.versions(name)
        if versions:
            serving = described["serving_version"]
            current = next((v for v in versions if v.version == serving), versions[-1])
            described.update(current.encoder.describe())
            described["input"] = current.inputs.schema()
        described["versions"] = [
            {**v.describe(), "nightly_report": self._report_url(name, v.version, v.manifest.training)} for v in versions
        ]
        described["refused"] = [
            {"version": number, "reason": r.reason, "message": public_message(r.message)}
            for number, r in self.registry.refusals(name).items()
        ]
        rollout = self.rollout_view(name) if self.rollout_view is not None else None
        described["rollout"] = rollout
        described["stable_version"] = rollout["serving"] if rollout is not None else described["serving_version"]
        held = rollout["held"] if rollout is not None else []
        described["held_versions"] = held
        described["held"] = held_note(name, held)
        return described

    def nightly_report(self, name: str, version: int) -> Path:
        """The report of the nightly run that made ``version`` (its manifest's ``training.lineage.report``), a file
        inside the model's folder; NotFound for none, or one named outside the folder."""
        path = report_path(self.registry.root / name, self.registry.get(name, version).manifest.training)
        if path is None or not path.is_file():
            raise NotFound(f"{name} v{version} has no nightly report in its model folder")
        return path

    def _report_url(self, name: str, version: int, training: Mapping[str, Any]) -> str | None:
        if report_path(self.registry.root / name, training) is None:
            return None
        return f"/v1/models/{quote(name)}/versions/{version}/report"

    def summary(self, name: str) -> dict[str, Any]:
        versions = self.registry.versions(name)
        try:
            serving: int | None = self.router.route(name).version
        except ServiceError:
            serving = None
        latest = versions[-1].manifest if versions else None
        return {
            "name": name,
            "versions": [v.version for v in versions],
            "task": latest.task if latest else None,
            "input_kind": latest.input_kind if latest else None,
            "state": "serving" if serving is not None else "unavailable",
            "serving_version": serving,
        }


def held_note(name: str, held: list[int]) -> str | None:
    """What a page and ``GET /v1/models/{name}`` say of versions that take no unpinned traffic (held)."""
    if not held:
        return None
    numbers = ", ".join(str(v) for v in held)
    newest = held[-1]
    return (
        f"held: {numbers}, pinned only (POST /v1/models/{name}/versions/{newest}/predict); start one in shadow with "
        f"`python -m service rollout shadow {name} {newest}`, then promote it with "
        f"`python -m service rollout promote {name}`"
    )


def report_path(model_folder: Path, training: Mapping[str, Any]) -> Path | None:
    """Where ``training.lineage.report`` (relative to the model's folder) points, or None: none named, or a path
    that leaves the folder (``..``, an absolute path, a link out)."""
    lineage = training.get("lineage")
    named = lineage.get("report") if isinstance(lineage, Mapping) else None
    if not isinstance(named, str) or not named:
        return None
    folder = model_folder.resolve()
    path = (folder / named).resolve()
    return path if path != folder and path.is_relative_to(folder) else None
