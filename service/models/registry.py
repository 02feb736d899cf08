"""The model registry: every served version of every model, loaded from the repository and kept current.

A repository is a folder convention (Triton style): ``<root>/<name>/<version>/``
with ``manifest.json`` and ``model.onnx``. Loading verifies every file's
sha256 against the manifest, opens an ONNX Runtime session and warms up
every batch size before the version is swapped in; a bundle that fails is
refused (logged and counted) while the others keep serving. A poller notices
added, changed and removed versions: new ones are loaded off the event loop
and swapped in atomically, removed ones stop receiving requests and are
drained before they are unloaded. Which version answers a request is the
router's to say (``service.models.router``).
"""

import asyncio
import logging
from pathlib import Path

from service.http.errors import NotFound, Unavailable
from service.metrics import ServingMetrics
from service.models.loader import BundleRefused, ColumnSource, Refusal, load_bundle
from service.models.repository import Fingerprint, VersionKey, scan_repository
from service.models.runtime import cpu_quota
from service.models.version import ModelVersion
from service.settings import ServiceSettings

log = logging.getLogger("service.models")


class ModelRegistry:
    """Loads the repository, watches it, and holds every loaded version."""

    def __init__(self, settings: ServiceSettings, metrics: ServingMetrics, columns: ColumnSource | None = None) -> None:
        self.settings = settings
        self.columns = columns  # monitoring's per-batch columns (service.monitoring.batch), when monitoring is on
        self.metrics = metrics
        self.root = Path(settings.models)
        self.intra_op_threads = settings.intra_op_threads or cpu_quota()
        self._served: dict[str, dict[int, ModelVersion]] = {}
        self._refused: dict[VersionKey, Refusal] = {}
        self._failed_once: dict[VersionKey, Fingerprint] = {}  # loads that failed once (perhaps mid-copy)
        self._last_scan: dict[VersionKey, tuple[Path, Fingerprint]] = {}
        self._unreadable_dirs: set[Path] = set()
        self._expected: set[str] = set()  # model names readiness waits for
        self._started = False
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load every version found, then watch the repository for changes."""
        async with self._lock:
            found = await self._scan()
            self._last_scan = found
            self._expected = set(self.settings.model_names) or {name for name, _ in found}
            for key, (path, fp) in sorted(found.items()):
                await self._load(key, path, fp)
            self._started = True
        if self.settings.watch_interval_s > 0:
            self._watcher = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        """Stop watching; drain and unload every version."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        async with self._lock:
            versions = [v for versions in self._served.values() for v in versions.values()]
            self._served = {}
            await asyncio.gather(*(v.drain() for v in versions), *self._retiring, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            try:
                await self.refresh()
            except Exception:  # a scan must never kill the watcher
                log.exception("scanning the model repository %s failed", self.root)

    async def refresh(self, settled_only: bool = True) -> None:
        """Apply the repository's current content: unload removed versions, load new or changed ones.

        With ``settled_only`` a folder is loaded only once two scans in a row
        saw the same files, so a bundle that is still being copied is not
        refused half-written.
        """
        async with self._lock:
            found = await self._scan()
            previous, self._last_scan = self._last_scan, found
            for name, versions in list(self._served.items()):
                for number, version in list(versions.items()):
                    if (name, number) not in found:
                        log.info("%s v%d was removed from the repository; draining it", name, number)
                        del versions[number]
                        self._retire(version)
                if not versions:
                    del self._served[name]
                    if not any(key[0] == name for key in found) and not self.settings.model_names:
                        self._expected.discard(name)
            for key in [key for key in self._refused if key not in found]:
                del self._refused[key]
            for key, (path, fp) in sorted(found.items()):
                if settled_only and previous.get(key, (None, None))[1] != fp:
                    continue
                current = self._served.get(key[0], {}).get(key[1])
                refusal = self._refused.get(key)
                if (current is not None and current.fingerprint == fp) or (refusal and refusal.fingerprint == fp):
                    continue
                await self._load(key, path, fp)

    async def _scan(self) -> dict[VersionKey, tuple[Path, Fingerprint]]:
        """Scan the repository; a model folder that cannot be listed is logged and counted once per appearance."""
        unreadable: list[Path] = []
        found = await asyncio.to_thread(scan_repository, self.root, self.settings.model_names, unreadable)
        for folder in unreadable:
            if folder not in self._unreadable_dirs:
                log.error("refused model folder %s (unreadable): this service's user may not list it", folder)
                self.metrics.load_failed(folder.name, "unreadable")
        self._unreadable_dirs = set(unreadable)
        return found

    async def _load(self, key: VersionKey, path: Path, fp: Fingerprint) -> None:
        name, number = key
        try:
            loaded = await asyncio.to_thread(load_bundle, path, key, self.settings, self.intra_op_threads, self.columns)
        except Exception as exc:  # one bad bundle must never stop the others from serving
            refused = exc if isinstance(exc, BundleRefused) else BundleRefused("error", f"{path}: {exc!r}")
            if self._maybe_still_copying(key, fp, refused):
                log.info(
                    "%s v%d failed to load (%s) and may still be being copied in; retrying at the next scan",
                    name,
                    number,
                    refused.reason,
                )
                return
            log.error("refused bundle %s v%d (%s): %s", name, number, refused.reason, refused)
            self.metrics.load_failed(name, refused.reason)
            self._refused[key] = Refusal(fp, refused.reason, str(refused))
            return
        columns = self.columns.for_version(loaded.manifest, loaded.runtime) if self.columns is not None else None
        version = ModelVersion(key, loaded, fp, self.settings, self.metrics.for_version(name, number), columns)
        version.batcher.start()
        version.metrics.loaded(loaded.manifest.task, version.runtime.provider, version.sha256)
        replaced = self._served.setdefault(name, {}).get(number)
        self._served[name][number] = version  # the swap: one dict assignment on the event loop
        self._refused.pop(key, None)
        if self._started:
            self._expected.add(name)
        if replaced is not None:
            self._retire(replaced)
        log.info(
            "serving %s v%d (%s, %s, provider %s, loaded and warmed in %.2f s)",
            name,
            number,
            loaded.manifest.task,
            loaded.manifest.input_kind,
            version.runtime.provider,
            loaded.load_seconds,
        )

    def _maybe_still_copying(self, key: VersionKey, fp: Fingerprint, exc: BundleRefused) -> bool:
        """Whether a failed load should wait for one more scan before it counts as a failure.

        A copy that pauses can look settled to two scans and still be half
        written; a bundle that fails twice with the same files is refused.
        Without watching there is no next scan, so it is refused at once.
        """
        if self.settings.watch_interval_s <= 0 or exc.reason not in ("manifest", "checksum"):
            return False
        if self._failed_once.pop(key, None) == fp:
            return False
        self._failed_once[key] = fp
        return True

    def _retire(self, version: ModelVersion) -> None:
        task = asyncio.create_task(version.drain())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- lookups -------------------------------------------------------------------------

    def get(self, name: str, version: int) -> ModelVersion:
        """A pinned version (bypasses routing)."""
        versions = self.versions_of(name)
        found = versions.get(version)
        if found is None:
            raise NotFound(f"model {name!r} has no loaded version {version}; loaded: {sorted(versions)}")
        return found

    def versions_of(self, name: str) -> dict[int, ModelVersion]:
        """The loaded versions of a model by number; NotFound for an unknown model, Unavailable with none loaded."""
        versions = self._served.get(name)
        if versions:
            return versions
        refused = sorted(number for (model, number) in self._refused if model == name)
        if refused or name in self._expected:
            raise Unavailable(f"model {name!r} has no loaded version" + (f" (refused: {refused})" if refused else ""))
        raise NotFound(f"model {name!r} is not served; served models: {sorted(self._served)}")

    def is_known(self, name: str) -> bool:
        return name in self._served or name in self._expected

    # -- state ---------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why the service is not ready; empty when every expected model serves."""
        if not self._started:
            return ["loading the model repository"]
        if not self._expected:
            return [f"no models found in {self.root}"]
        problems = []
        for name in sorted(self._expected):
            if not self._served.get(name):
                refusals = [f"v{v}: {r.message}" for (model, v), r in sorted(self._refused.items()) if model == name]
                detail = f" ({'; '.join(refusals)})" if refusals else ""
                problems.append(f"model {name!r} has no loaded version{detail}")
        for name, versions in sorted(self._served.items()):
            for number, version in sorted(versions.items()):
                if version.runtime.problem:
                    problems.append(f"{name} v{number}: {version.runtime.problem}")
        return problems

    def model_names(self) -> list[str]:
        return sorted(set(self._served) | self._expected)

    def versions(self, name: str) -> list[ModelVersion]:
        return [v for _, v in sorted(self._served.get(name, {}).items())]

    def refusals(self, name: str) -> dict[int, Refusal]:
        return {number: r for (model, number), r in sorted(self._refused.items()) if model == name}

    def loaded_numbers(self, name: str) -> list[int]:
        """The version numbers of a model that are loaded now (empty for an unknown model)."""
        return sorted(self._served.get(name, {}))

    def all_versions(self) -> list[ModelVersion]:
        return [v for name in sorted(self._served) for v in self.versions(name)]
