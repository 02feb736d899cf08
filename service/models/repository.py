"""The model repository on disk: a folder convention (Triton style), ``<root>/<name>/<version>/``.

A version folder holds ``manifest.json`` and ``model.onnx`` (and, for Python
users, ``learner.pkl``). Hidden folders are skipped, so a copy can be staged
under ``.tmp`` and renamed into place. A folder's fingerprint (every file's
name, size and mtime) tells a poller when it changed or is still changing.
"""

from __future__ import annotations

import time
from pathlib import Path

VersionKey = tuple[str, int]
Fingerprint = tuple[tuple[str, int, int], ...]  # (file name, size, mtime_ns) of every file in the folder

MAX_VERSION_DIGITS = 18  # a version number fits in a signed 64-bit integer (a metric label, a database column)


UNREADABLE: Fingerprint = (("<unreadable>", -1, -1),)  # stable, so an unreadable folder settles and is refused


def version_number(text: str) -> int | None:
    """The positive version number ``text`` names (a folder, a path segment, a query value), else None.

    Only ASCII digits count: ``str.isdigit`` accepts ``²`` (which ``int`` refuses) and ``int`` accepts
    other scripts' digits (``٣`` is 3), so either alone would let one version have two names, or fail.
    """
    if not 0 < len(text) <= MAX_VERSION_DIGITS or not text.isascii() or not text.isdigit():
        return None
    number = int(text)
    return number if number > 0 else None


def shown_version(text: str) -> str:
    """A client's version text fit to quote back: cut short, as a Python literal."""
    return repr(text[:MAX_VERSION_DIGITS] + ("..." if len(text) > MAX_VERSION_DIGITS else ""))


def scan_repository(
    root: Path, names: list[str] | None = None, unreadable: list[Path] | None = None
) -> dict[VersionKey, tuple[Path, Fingerprint]]:
    """Every ``<root>/<name>/<version>/`` folder (hidden folders are skipped, so stage copies in ``.tmp``).

    A model folder this process may not list is skipped and appended to ``unreadable``.
    """
    found: dict[VersionKey, tuple[Path, Fingerprint]] = {}
    if not root.is_dir():
        return found
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or model_dir.name.startswith(".") or (names and model_dir.name not in names):
            continue
        try:
            version_dirs = list(model_dir.iterdir())
        except PermissionError:
            if unreadable is not None:
                unreadable.append(model_dir)
            continue
        for version_dir in version_dirs:
            number = version_number(version_dir.name)  # anything else in a model folder is not a version: skipped
            if number is None or not version_dir.is_dir():
                continue
            found[(model_dir.name, number)] = (version_dir, fingerprint(version_dir))
    return found


def fingerprint(folder: Path) -> Fingerprint:
    entries = []
    try:
        for path in folder.iterdir():
            stat = path.stat()
            entries.append((path.name, stat.st_size, stat.st_mtime_ns))
    except PermissionError:
        return UNREADABLE
    except OSError:  # the folder is changing under us: the next scan sees it settled
        return (("", -1, time.monotonic_ns()),)
    return tuple(sorted(entries))
