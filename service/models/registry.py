"""The model registry: every served version of every model, loaded from the repository and kept current.

A repository is a folder convention (Triton style): ``<root>/<name>/<version>/``
with ``manifest.json`` and ``model.onnx``. Loading verifies every file's
sha256 against the manifest, opens an ONNX Runtime session and warms up
every batch size before the version is swapped in; a bundle that fails is
refused (logged and counted) while the others keep serving. A poller notices
added, changed and removed versions: new ones are loaded off the event loop
and swapped in atomically, removed ones stop receiving requests and are
drained before they are unloaded. Which version answers a request is decided
in one place, :meth:`ModelRegistry.route`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Protocol

import numpy as np

from bundle.manifest import (
    LEARNER_FILE,
    ONNX_FILE,
    Manifest,
    ManifestError,
    TensorSpec,
    read_manifest,
    verify_files,
)
from service.models.batch_policy import BatchPlan, choose, measure, timed_sizes
from service.models.batcher import DynamicBatcher, padded_sizes
from service.http.errors import NotFound, Unavailable
from service.codecs.inputs import InputDecoder, decoder_for, input_limits
from service.metrics import ServingMetrics, VersionMetrics
from service.codecs.outputs import PredictionEncoder
from service.models.runtime import OnnxRuntime, RuntimeLoadError, cpu_quota
from service.settings import ServiceSettings

if TYPE_CHECKING:
    from service.monitoring.batch import BatchColumns

log = logging.getLogger("service.models.registry")

VersionKey = tuple[str, int]


class RolloutRouter(Protocol):
    """What routing asks of the rollout (``service.rollout.manager.RolloutManager``)."""

    def choose(self, name: str, key: str | None, region: str | None, loaded: Collection[int]) -> int | None: ...

Fingerprint = tuple[tuple[str, int, int], ...]  # (file name, size, mtime_ns) of every file in the folder


class BundleRefused(Exception):
    """A bundle that cannot be served; ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Refusal:
    fingerprint: Fingerprint
    reason: str
    message: str


@dataclass(frozen=True)
class LoadedBundle:
    """The blocking half of loading, done in a thread: everything but the asyncio parts."""

    path: Path
    manifest: Manifest
    runtime: OnnxRuntime
    inputs: InputDecoder
    encoder: PredictionEncoder
    load_seconds: float
    plan: BatchPlan


UNREADABLE: Fingerprint = (("<unreadable>", -1, -1),)  # stable, so an unreadable folder settles and is refused


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
            if not version_dir.is_dir() or not version_dir.name.isdigit() or int(version_dir.name) <= 0:
                continue
            found[(model_dir.name, int(version_dir.name))] = (version_dir, fingerprint(version_dir))
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


def warmup_sizes(settings: ServiceSettings) -> list[int]:
    """The batch sizes the batcher will run, so warm-up covers exactly them."""
    if settings.pad_batches:
        return padded_sizes(settings.max_batch_size)
    return list(range(1, settings.max_batch_size + 1))


ExtendGraph = Callable[[Manifest, Path], "tuple[bytes, TensorSpec] | None"]  # see load_bundle


def load_bundle(
    path: Path, key: VersionKey, settings: ServiceSettings, intra_op_threads: int, extend: ExtendGraph | None = None
) -> LoadedBundle:
    """Read, verify, open and warm up one bundle (blocking; run it in a thread).

    ``extend(manifest, onnx_path)``: the graph to open instead, with one more output, and that output's spec;
    or None (the graph as it is)."""
    started = time.perf_counter()
    name, version = key
    try:
        manifest = read_manifest(path)
    except ManifestError as exc:
        raise BundleRefused("manifest", str(exc)) from exc
    except PermissionError as exc:
        raise BundleRefused("unreadable", f"{path}: not readable by this service's user ({exc})") from exc
    if manifest.name != name or manifest.version != version:
        raise BundleRefused(
            "manifest",
            f"{path}: the manifest says {manifest.name} v{manifest.version}, the folder says {name} v{version}",
        )
    if manifest.onnx.file not in manifest.files:
        raise BundleRefused("checksum", f"{path}: the manifest records no sha256 for {manifest.onnx.file}")
    # learner.pkl is for Python users on the training side; a serving copy may leave it out
    try:
        problems = verify_files(path, manifest, optional=(LEARNER_FILE,))
    except PermissionError as exc:
        raise BundleRefused("unreadable", f"{path}: not readable by this service's user ({exc})") from exc
    if problems:
        raise BundleRefused("checksum", f"{path}: {'; '.join(problems)}")
    try:
        inputs = decoder_for(
            manifest, settings.max_items_per_request, settings.max_image_pixels, settings.inline_decode_max_pixels,
            **input_limits(settings),
        )
        encoder = PredictionEncoder(manifest)
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleRefused("manifest", f"{path}: {exc}") from exc
    extended = extend(manifest, path / manifest.onnx.file) if extend is not None else None
    graph, outputs = (extended[0], [*manifest.onnx.outputs, extended[1]]) if extended else (None, manifest.onnx.outputs)

    def open_runtime(threads: int) -> OnnxRuntime:
        try:
            runtime = OnnxRuntime(
                path / manifest.onnx.file,
                manifest.onnx.inputs,
                outputs,
                provider=settings.provider,
                device_id=settings.cuda_device_id,
                intra_op_threads=threads,
                inter_op_threads=settings.inter_op_threads,
                allow_spinning=settings.ort_spinning,
                graph=graph,
            )
            _check_input_shapes(manifest, runtime)
        except RuntimeLoadError as exc:
            raise BundleRefused("onnx", f"{path}: {exc}") from exc
        return runtime

    runtime = open_runtime(intra_op_threads)
    try:
        sizes = warmup_sizes(settings)
        runtime.warm_up(sizes)
        plan = batch_plan(runtime, sizes, settings)
        if plan.inline and intra_op_threads > 1 and settings.intra_op_threads is None and not runtime.on_cuda:
            # A batch on the event loop: one runtime thread does it for far less CPU (see service.models.batch_policy).
            runtime = open_runtime(1)
            runtime.warm_up(sizes)
            plan = batch_plan(runtime, sizes, settings, inline=True)
    except BundleRefused:
        raise
    except Exception as exc:  # any failure to run means the bundle cannot serve
        raise BundleRefused("warmup", f"{path}: warm-up run failed: {exc}") from exc
    log.info(
        "%s v%d: batches of at most %d items, run on the %s with %d ONNX Runtime thread(s) (%s)", name, version,
        plan.max_batch_size, "event loop" if plan.inline else "runtime thread", plan.intra_op_threads,
        plan.describe()["ms_per_item"],
    )  # fmt: skip
    return LoadedBundle(path, manifest, runtime, inputs, encoder, time.perf_counter() - started, plan)


def batch_plan(
    runtime: OnnxRuntime, sizes: list[int], settings: ServiceSettings, inline: bool | None = None
) -> BatchPlan:
    """The batch cap and where batches run (``service.models.batch_policy``), from timings unless settings fix both.

    ``inline``: where batches run, when already decided (else the setting, else the timings decide)."""
    cap_fixed = "max_batch_size" in settings.model_fields_set
    inline = settings.inline_inference if inline is None else inline
    threads = runtime.intra_op_threads
    if cap_fixed and inline is not None:
        return choose({}, settings.max_batch_size, cap_fixed=True, inline=inline, threads=threads)
    timings = measure(runtime, [settings.max_batch_size] if cap_fixed else timed_sizes(sizes))
    return choose(timings, settings.max_batch_size, cap_fixed=cap_fixed, inline=inline, threads=threads)


def _check_input_shapes(manifest: Manifest, runtime: OnnxRuntime) -> None:
    """The preprocessing the manifest describes must produce what the graph takes."""
    shapes = dict(zip((spec.name for spec in runtime.inputs), runtime.item_shapes()))
    if manifest.input_kind == "image" and manifest.image is not None:
        expected = {runtime.inputs[0].name: (3, manifest.image.height, manifest.image.width)}
    elif manifest.tabular is not None:
        widths = {"x_cat": len(manifest.tabular.cat_names), "x_cont": len(manifest.tabular.cont_names)}
        expected = {name: (widths[name],) for name in shapes if name in widths}
    else:
        expected = shapes
    for name, shape in expected.items():
        if shapes.get(name) != shape:
            raise RuntimeLoadError(f"input {name!r} has item shape {shapes.get(name)}, preprocessing makes {shape}")


class ModelVersion:
    """One served version: its manifest, runtime, batcher, input decoder and output encoder."""

    def __init__(
        self, key: VersionKey, loaded: LoadedBundle, fingerprint: Fingerprint, settings: ServiceSettings,
        metrics: VersionMetrics, columns: BatchColumns | None = None,
    ) -> None:  # fmt: skip
        self.name, self.version = key
        self.path = loaded.path
        self.manifest = loaded.manifest
        self.runtime = loaded.runtime
        self.inputs = loaded.inputs
        self.encoder = loaded.encoder
        self.plan = loaded.plan
        self.columns = columns  # monitoring's per-batch columns, appended to each batch's rows
        self.fingerprint = fingerprint
        self.metrics = metrics
        self.sha256 = loaded.manifest.files.get(ONNX_FILE, "")
        self.response_headers = [(b"x-model-version", str(self.version).encode())]
        self.loaded_at = time.time()
        self.state = "ready"
        self.executor = ThreadPoolExecutor(
            settings.batches_in_flight, thread_name_prefix=f"ort-{self.name}-{self.version}"
        )
        self.batcher = DynamicBatcher(
            columns.wrap(self.runtime.run) if columns is not None else self.runtime.run,
            self.executor,
            max_batch_size=loaded.plan.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms,
            max_queue_size=settings.max_queue_size,
            max_queue_wait_s=settings.max_queue_wait_s,
            batches_in_flight=settings.batches_in_flight,
            pad_batches=settings.pad_batches,
            inline=loaded.plan.inline,
            retry_after_s=settings.retry_after_s,
            observer=metrics,
        )
        self._leases = 0
        self._released: asyncio.Event | None = None

    def split(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """A request's rows from the batcher as (the first output, the logits or None, monitoring's columns or None)."""
        columns = None
        if self.columns is not None:
            rows, columns = self.columns.split(rows)
        output, logits = self.runtime.split(rows)
        return output, logits, columns

    def acquire(self) -> None:
        """Hold the version while a request uses it, so draining waits for the request."""
        self._leases += 1

    def release(self) -> None:
        self._leases -= 1
        if self._leases == 0 and self._released is not None:
            self._released.set()

    async def drain(self) -> None:
        """Wait for the requests holding this version, run what is queued, then free the runtime."""
        self.state = "draining"
        if self._leases:
            self._released = asyncio.Event()
            await self._released.wait()
        await self.batcher.drain()
        self.executor.shutdown(wait=False)
        self.metrics.unloaded()
        self.state = "unloaded"
        log.info("unloaded %s v%d", self.name, self.version)

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "version": self.version,
            "state": self.state,
            "task": m.task,
            "input_kind": m.input_kind,
            "provider": self.runtime.provider,
            "sha256": self.sha256,
            "created_at": m.created_at,
            "metrics": m.metrics,
            "parity": m.parity.model_dump() if m.parity is not None else None,
            "training": m.training,
            "queue_depth": self.batcher.queue_depth,
            "batching": self.plan.describe(),
        }


class ModelRegistry:
    """Loads the repository, watches it, and answers which version serves a request."""

    def __init__(self, settings: ServiceSettings, metrics: ServingMetrics) -> None:
        self.settings = settings
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
        self.rollout: RolloutRouter | None = None  # set by the app when a rollout policy or state store is configured
        # set by the app when monitoring is on: the columns each version's batches carry (service.monitoring.batch)
        self.batch_columns: Callable[[Manifest, OnnxRuntime], BatchColumns | None] | None = None
        self.extend_graph: ExtendGraph | None = None  # ... and the graph that computes them, where it can

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
            loaded = await asyncio.to_thread(
                load_bundle, path, key, self.settings, self.intra_op_threads, self.extend_graph
            )
        except Exception as exc:  # one bad bundle must never stop the others from serving
            refused = exc if isinstance(exc, BundleRefused) else BundleRefused("error", f"{path}: {exc!r}")
            if self._maybe_still_copying(key, fp, refused):
                log.info("%s v%d failed to load (%s) and may still be being copied in; retrying at the next scan",
                         name, number, refused.reason)  # fmt: skip
                return
            log.error("refused bundle %s v%d (%s): %s", name, number, refused.reason, refused)
            self.metrics.load_failed(name, refused.reason)
            self._refused[key] = Refusal(fp, refused.reason, str(refused))
            return
        columns = self.batch_columns(loaded.manifest, loaded.runtime) if self.batch_columns is not None else None
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
            name, number, loaded.manifest.task, loaded.manifest.input_kind, version.runtime.provider,
            loaded.load_seconds,
        )  # fmt: skip

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

    # -- routing -------------------------------------------------------------------------

    def route(self, name: str, request_key: str | None = None, region: str | None = None) -> ModelVersion:
        """The version that answers an unpinned request: the rollout's choice, else the highest loaded version.

        ``request_key`` and ``region`` are the inputs a rollout policy routes on (see ``service.rollout.policy``).
        """
        versions = self._versions_of(name)
        if self.rollout is not None:
            chosen = self.rollout.choose(name, request_key, region, versions)
            if chosen is not None:
                return versions[chosen]
        return versions[max(versions)]

    def get(self, name: str, version: int) -> ModelVersion:
        """A pinned version (bypasses routing)."""
        versions = self._versions_of(name)
        found = versions.get(version)
        if found is None:
            raise NotFound(f"model {name!r} has no loaded version {version}; loaded: {sorted(versions)}")
        return found

    def _versions_of(self, name: str) -> dict[int, ModelVersion]:
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

    def all_versions(self) -> list[ModelVersion]:
        return [v for name in sorted(self._served) for v in self.versions(name)]
