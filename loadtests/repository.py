"""The newest bundle of each model in a repository (``<repo>/<name>/<version>/manifest.json``), for the rivals."""

from __future__ import annotations

from pathlib import Path


def newest_bundles(repo: Path) -> dict[str, Path]:
    """Model name -> the folder of its highest version that has a manifest, for every model under ``repo``."""
    found = {}
    for folder in sorted(p for p in repo.iterdir() if p.is_dir()):
        versions = [v for v in folder.iterdir() if v.name.isdigit() and (v / "manifest.json").exists()]
        if versions:
            found[folder.name] = max(versions, key=lambda v: int(v.name))
    return found
