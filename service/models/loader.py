"""Loading one bundle (blocking; run it in a thread): read, verify, open, warm up, and size its batches.

Loading verifies every file's sha256 against the manifest, checks that the
preprocessing the manifest describes makes what the graph takes, opens an
ONNX Runtime session and warms up every batch size the batcher will run; a
bundle that fails any of it is refused with a reason (a bounded metric
label) and never served.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bundle.manifest import LEARNER_FILE, Manifest, ManifestError, TensorSpec, read_manifest, verify_files
from service.codecs import InputDecoder, decoder_for, input_limits
from service.codecs.outputs import PredictionEncoder
from service.models.batch_policy import BatchPlan, choose, measure, timed_sizes
from service.models.batcher import padded_sizes
from service.models.repository import Fingerprint, VersionKey
from service.models.runtime import OnnxRuntime, RuntimeLoadError
from service.settings import ServiceSettings

if TYPE_CHECKING:
    from service.monitoring.batch import BatchColumns

log = logging.getLogger("service.models")


class ColumnSource(Protocol):
    """Extra per-batch columns a version's runs carry (monitoring's), and the graph that computes them."""

    def graph(self, manifest: Manifest, model_path: Path) -> tuple[bytes, TensorSpec] | None:
        """The model with the columns as one more output, and its spec; None to run the graph as it is."""
        ...

    def for_version(self, manifest: Manifest, runtime: OnnxRuntime) -> BatchColumns | None:
        """The columns of a loaded version, or None where it has none."""
        ...


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


def warmup_sizes(settings: ServiceSettings) -> list[int]:
    """The batch sizes the batcher will run, so warm-up covers exactly them."""
    if settings.pad_batches:
        return padded_sizes(settings.max_batch_size)
    return list(range(1, settings.max_batch_size + 1))


def load_bundle(
    path: Path, key: VersionKey, settings: ServiceSettings, intra_op_threads: int, columns: ColumnSource | None = None
) -> LoadedBundle:
    """Read, verify, open and warm up one bundle (blocking; run it in a thread).

    ``columns``: where monitoring's per-batch columns come from (the graph may compute them)."""
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
            manifest,
            settings.max_items_per_request,
            settings.max_image_pixels,
            settings.inline_decode_max_pixels,
            **input_limits(settings),
        )
        encoder = PredictionEncoder(manifest)
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleRefused("manifest", f"{path}: {exc}") from exc
    extended = columns.graph(manifest, path / manifest.onnx.file) if columns is not None else None
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
        "%s v%d: batches of at most %d items, run on the %s with %d ONNX Runtime thread(s) (%s)",
        name,
        version,
        plan.max_batch_size,
        "event loop" if plan.inline else "runtime thread",
        plan.intra_op_threads,
        plan.describe()["ms_per_item"],
    )
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
    shapes: dict[str, tuple[int, ...]] = dict(zip((spec.name for spec in runtime.inputs), runtime.item_shapes()))
    if manifest.input_kind == "image" and manifest.image is not None:
        expected: dict[str, tuple[int, ...]] = {
            runtime.inputs[0].name: (3, manifest.image.height, manifest.image.width)
        }
    elif manifest.tabular is not None:
        widths = {"x_cat": len(manifest.tabular.cat_names), "x_cont": len(manifest.tabular.cont_names)}
        expected = {name: (widths[name],) for name in shapes if name in widths}
    else:
        expected = shapes
    for name, shape in expected.items():
        if shapes.get(name) != shape:
            raise RuntimeLoadError(f"input {name!r} has item shape {shapes.get(name)}, preprocessing makes {shape}")
