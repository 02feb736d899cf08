"""One nightly run per model at a time: an exclusive lock on a file, released by the OS when the process ends.

``flock`` rather than "create the file if absent": a run that is killed
leaves no stale lock behind for the next night to trip over.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockHeld(ValueError):
    """Another run holds the lock; the message names it."""


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "{}"
            raise LockHeld(f"{what} is already running ({holder}; lock file {path}): this run stops") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock
