"""One ONNX Runtime session per served version.

Chooses the execution provider, sizes the thread pools to the container's
CPU quota (not the host's core count), warms up every batch size the batcher
will use, and on CUDA runs through I/O bindings whose buffers are allocated
once per batch size and reused.

A graph with several outputs (a classifier's probabilities, then its logits)
returns them side by side as one array, one row per item, so the batcher
slices one array per batch whatever the model; :meth:`OnnxRuntime.split`
takes a request's rows apart again.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bundle.manifest import LOGITS_OUTPUT, TensorSpec

log = logging.getLogger("service.models.runtime")

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
CGROUP_ROOT = Path("/sys/fs/cgroup")


class RuntimeLoadError(RuntimeError):
    """The ONNX model cannot be loaded or does not match its manifest."""


def cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: the cgroup quota (v2, then v1), capped by the affinity mask."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    quota = _cgroup_v2_quota(cgroup_root) or _cgroup_v1_quota(cgroup_root)
    return max(1, min(available, quota)) if quota else max(1, available)


def _cgroup_v2_quota(root: Path) -> int | None:
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return math.ceil(int(quota) / int(period))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _cgroup_v1_quota(root: Path) -> int | None:
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota > 0 and period > 0:
            return math.ceil(quota / period)
        return None
    return None


def providers_for(provider: str, device_id: int = 0) -> list[str | tuple[str, dict[str, object]]]:
    """The provider list to ask ONNX Runtime for (it falls back to CPU when CUDA cannot start)."""
    cuda: tuple[str, dict[str, object]] = (CUDA_PROVIDER, {"device_id": device_id})
    if provider == "cpu":
        return [CPU_PROVIDER]
    if provider in ("auto", "cuda"):
        # Asking for a provider this build lacks only earns a warning; readiness reports it instead.
        return [cuda, CPU_PROVIDER] if CUDA_PROVIDER in ort.get_available_providers() else [CPU_PROVIDER]
    raise ValueError(f"unknown provider {provider!r}: use auto, cpu or cuda")


class OnnxRuntime:
    """A loaded ``model.onnx``: feeds the inputs the manifest lists and returns the outputs it lists."""

    def __init__(
        self,
        model_path: Path,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        provider: str = "auto",
        device_id: int = 0,
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        allow_spinning: bool = False,
        io_binding: bool | None = None,
        graph: bytes | None = None,
    ) -> None:
        """``io_binding`` None binds reused buffers on CUDA only (where it saves device allocations);
        ``graph``: the serialized model to open instead of ``model_path``'s (a copy with outputs added)."""
        options = ort.SessionOptions()
        self.intra_op_threads = intra_op_threads or cpu_quota()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        # Spinning threads burn the cores that decoding and the event loop need between runs.
        spin = "1" if allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # ORT warnings about fallback providers are reported by us instead
        try:
            self.session = ort.InferenceSession(
                graph if graph is not None else str(model_path), options, providers=providers_for(provider, device_id)
            )
        except Exception as exc:  # ORT raises its own exception types, all meaning "cannot load"
            raise RuntimeLoadError(f"{model_path.name}: ONNX Runtime cannot load it: {exc}") from exc
        self.requested_provider = provider
        self.device_id = device_id
        self.on_cuda = CUDA_PROVIDER in self.session.get_providers()
        self.provider = "cuda" if self.on_cuda else "cpu"
        self.inputs = list(inputs)
        self.output_names = [spec.name for spec in outputs]
        self.output_name = self.output_names[0]  # what every prediction is encoded from
        self.input_dtypes = [np.dtype(spec.dtype) for spec in self.inputs]
        self._check_signature()
        self.output_widths = self._output_widths(outputs)
        starts = np.cumsum([0, *(w or 0 for w in self.output_widths)]).tolist()
        self._first = slice(0, self.output_widths[0])  # a lone output: all of it
        self._logits = None
        if self.has_logits:
            at = self.output_names.index(LOGITS_OUTPUT)
            self._logits = slice(starts[at], starts[at + 1])
        use_binding = self.on_cuda if io_binding is None else io_binding
        self._bindings = _BindingPool(self, "cuda" if self.on_cuda else "cpu") if use_binding else None

    @property
    def problem(self) -> str | None:
        """Why this runtime should not be called ready, or None."""
        if self.requested_provider == "cuda" and not self.on_cuda:
            available = ", ".join(ort.get_available_providers())
            return f"provider cuda was requested but the session runs on CPU (ONNX Runtime offers: {available})"
        return None

    def _check_signature(self) -> None:
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        wanted = [spec.name for spec in self.inputs]
        missing = [name for name in wanted if name not in graph_inputs]
        if missing or any(name not in graph_outputs for name in self.output_names):
            raise RuntimeLoadError(
                f"model.onnx does not match the manifest: graph inputs {sorted(graph_inputs)}, "
                f"outputs {sorted(graph_outputs)}; manifest wants inputs {wanted}, outputs {self.output_names}"
            )

    def _output_widths(self, outputs: Sequence[TensorSpec]) -> list[int | None]:
        """Each output's number of columns; outputs side by side need known widths ([batch, k] each)."""
        if len(outputs) == 1:
            return [None]
        graph = {o.name: o.shape for o in self.session.get_outputs()}
        widths: list[int | None] = []
        for spec in outputs:
            shapes = (spec.shape, graph[spec.name])
            known = [shape[1] for shape in shapes if len(shape) == 2 and isinstance(shape[1], int)]
            if not known:
                raise RuntimeLoadError(
                    f"output {spec.name!r}: with several outputs each must be [batch, k], got {spec.shape}"
                )
            widths.append(int(known[0]))
        return widths

    @property
    def has_logits(self) -> bool:
        """Whether the graph outputs the logits (single-label classifiers exported with the energy score)."""
        return LOGITS_OUTPUT in self.output_names[1:]

    def split(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows of :meth:`run`'s array as (the first output, the logits or None without them)."""
        if len(self.output_names) == 1:
            return rows, None
        return rows[:, self._first], rows[:, self._logits] if self._logits is not None else None

    def item_shapes(self) -> list[tuple[int, ...]]:
        """Each input's shape without the batch axis."""
        shapes = []
        for spec in self.inputs:
            rest = spec.shape[1:]
            if not all(isinstance(d, int) for d in rest):
                raise RuntimeLoadError(f"input {spec.name!r}: only the batch axis may be dynamic, got {spec.shape}")
            shapes.append(tuple(int(d) for d in rest))
        return shapes

    def run(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """One batch in (one array per manifest input), the model's outputs out, side by side in one array."""
        if self._bindings is not None:
            return self._bindings.run(inputs)
        feed = {spec.name: array for spec, array in zip(self.inputs, inputs)}
        return side_by_side(self.session.run(self.output_names, feed))

    def example_inputs(self, batch_size: int) -> list[np.ndarray]:
        """Valid all-zero inputs (index 0 is ``#na#`` for categories) for warm-up."""
        return [np.zeros((batch_size, *shape), dtype) for shape, dtype in zip(self.item_shapes(), self.input_dtypes)]

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        """Run every batch size once so no request pays for first-run allocation."""
        for size in batch_sizes:
            self.run(self.example_inputs(size))


class _BindingPool:
    """Reused I/O bindings (for CUDA): device input buffers and host output buffers per batch size.

    Copying into a buffer that already exists avoids a device allocation per
    run; batches in flight at once each take their own binding from the pool.
    """

    def __init__(self, runtime: OnnxRuntime, device: str) -> None:
        self.runtime = runtime
        self.device = device
        self._free: dict[int, list[_Binding]] = {}
        self._lock = threading.Lock()

    def run(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        batch = int(inputs[0].shape[0])
        with self._lock:
            free = self._free.setdefault(batch, [])
            binding = free.pop() if free else None
        if binding is None:
            binding = _Binding(self.runtime, batch, self.device)
        try:
            return binding.run(inputs)
        finally:
            with self._lock:
                self._free[batch].append(binding)


class _Binding:
    """Input buffers on ``device`` and host output buffers for one batch size, bound once."""

    def __init__(self, runtime: OnnxRuntime, batch: int, device: str) -> None:
        session = runtime.session
        self.session = session
        self.binding = session.io_binding()
        self.device_inputs = []
        for spec, shape, dtype in zip(runtime.inputs, runtime.item_shapes(), runtime.input_dtypes):
            device_id = runtime.device_id if device == "cuda" else 0
            value = ort.OrtValue.ortvalue_from_shape_and_type([batch, *shape], dtype.type, device, device_id)
            self.binding.bind_ortvalue_input(spec.name, value)
            self.device_inputs.append(value)
        self.output_names = runtime.output_names
        self.host_outputs: list[ort.OrtValue] | None = []
        for name in self.output_names:
            out = next(o for o in session.get_outputs() if o.name == name)
            out_shape = [batch, *out.shape[1:]]
            if not all(isinstance(d, int) for d in out_shape):
                self.host_outputs = None
                break
            self.host_outputs.append(ort.OrtValue.ortvalue_from_shape_and_type(out_shape, np.float32, "cpu", 0))
        if self.host_outputs is not None:
            for name, value in zip(self.output_names, self.host_outputs):
                self.binding.bind_ortvalue_output(name, value)
        else:  # an unknown output width: let ORT allocate host memory each run
            for name in self.output_names:
                self.binding.bind_output(name, "cpu")

    def run(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        for value, array in zip(self.device_inputs, inputs):
            value.update_inplace(np.ascontiguousarray(array))
        self.session.run_with_iobinding(self.binding)
        if self.host_outputs is not None:
            arrays = [value.numpy() for value in self.host_outputs]
            # the buffers are reused by the next run: return a copy (concatenate makes one)
            return np.array(arrays[0], copy=True) if len(arrays) == 1 else side_by_side(arrays)
        return side_by_side(self.binding.copy_outputs_to_cpu())


def side_by_side(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """One output as it is; several as one array of their columns, in order (each is [batch, k])."""
    if len(outputs) == 1:
        return outputs[0]
    return np.concatenate(outputs, axis=1)
