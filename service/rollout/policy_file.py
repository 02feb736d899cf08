"""The rollout policy file on disk: read once it has settled, the last good policy kept when an edit is refused.

``write_text`` truncates before it writes, so a file caught mid-save reads as
empty or cut short. A changed file is therefore read only once its (mtime,
size) stamp has stayed the same for one tick, and not applied if the stamp
changed while it was being read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from service.rollout.policy import ModelPolicy, PolicyError, RolloutFile, load_policy_file

log = logging.getLogger("service.rollout")

NO_FILE_ENTRY = "none"  # the fingerprint a decision records when the file has no entry for the model
Edit = tuple[str, ModelPolicy | None, ModelPolicy | None]  # (model, before, after) of one changed entry


class PolicyFile:
    """The policies the file holds now (empty without a file), its last error, and when it was read."""

    def __init__(self, path: Path | None, clock: Callable[[], float]) -> None:
        self.path = path
        self.clock = clock
        self.policies = RolloutFile()
        self.error: str | None = None
        self.loaded_at: float | None = None
        self.refusals = 0  # edits refused since start (each one counted once)
        self._stamp: tuple[int, int] | None = None  # (mtime, size) of the file as last read
        self._settling: tuple[int, int] | None = None  # a changed stamp waiting one tick to prove it settled

    def fingerprint(self, name: str) -> str:
        """The digest of the file's entry for ``name`` (``NO_FILE_ENTRY`` when it has none)."""
        policy = self.policies.models.get(name)
        return policy.fingerprint() if policy is not None else NO_FILE_ENTRY

    def load(self, only_if_changed: bool) -> list[Edit] | None:
        """Read the file (blocking); the entries that changed, or None when nothing new was applied.

        A refused file keeps the previous policies and sets ``error``."""
        if self.path is None:
            return None
        stamp = _stamp(self.path)
        if only_if_changed:
            if stamp == self._stamp:
                return None
            if stamp != self._settling:  # changed since the last tick: read once it stays put for a tick
                self._settling = stamp
                return None
        loaded: RolloutFile | None = None
        refused = ""
        try:
            loaded = load_policy_file(self.path)
        except PolicyError as exc:
            refused = str(exc)
        if only_if_changed and _stamp(self.path) != stamp:
            return None  # written again while it was read: the next ticks read it once it settles
        self._stamp = stamp
        if loaded is None:
            self.error = refused
            self.refusals += 1
            log.error("rollout file refused, keeping the last good policy: %s", refused)
            return None
        previous, self.policies = self.policies, loaded
        self.error = None
        self.loaded_at = self.clock()
        names = sorted(set(previous.models) | set(loaded.models))
        return [
            (n, previous.models.get(n), loaded.models.get(n))
            for n in names
            if previous.models.get(n) != loaded.models.get(n)
        ]


def _stamp(path: Path) -> tuple[int, int] | None:
    """(mtime, size) of the rollout file, None when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
