"""The ONNX Runtime wrapper: CPU quota from cgroups, providers, feeding the manifest's inputs, warm-up."""

from __future__ import annotations

import os
import sys

import numpy as np
import onnxruntime as ort
import pytest

from bundle.manifest import TensorSpec, read_manifest
from service.models.runtime import OnnxRuntime, RuntimeLoadError, cpu_quota, providers_for

AFFINITY = len(os.sched_getaffinity(0))


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def runtime_for(bundle, **kw) -> OnnxRuntime:
    manifest = read_manifest(bundle)
    return OnnxRuntime(bundle / "model.onnx", manifest.onnx.inputs, manifest.onnx.outputs, intra_op_threads=1, **kw)


# -- CPU quota ---------------------------------------------------------------------------------


def test_cpu_quota_reads_cgroup_v2_cpu_max(tmp_path):
    write(tmp_path / "cpu.max", "50000 100000\n")

    assert cpu_quota(tmp_path) == 1


def test_cpu_quota_rounds_a_fractional_quota_up_and_never_exceeds_the_affinity_mask(tmp_path):
    write(tmp_path / "cpu.max", "150000 100000\n")

    assert cpu_quota(tmp_path) == min(2, AFFINITY)


def test_cgroup_v2_without_a_limit_falls_back_to_the_affinity_mask(tmp_path):
    write(tmp_path / "cpu.max", "max 100000\n")

    assert cpu_quota(tmp_path) == AFFINITY


def test_cpu_quota_reads_cgroup_v1_cfs_quota_and_period(tmp_path):
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "100000\n")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")

    assert cpu_quota(tmp_path) == 1


def test_cgroup_v1_without_a_quota_falls_back_to_the_affinity_mask(tmp_path):
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")

    assert cpu_quota(tmp_path) == AFFINITY


def test_no_cgroup_files_means_the_affinity_mask(tmp_path):
    assert cpu_quota(tmp_path) == AFFINITY


# -- providers ---------------------------------------------------------------------------------


def test_cpu_provider_asks_for_cpu_only():
    assert providers_for("cpu") == ["CPUExecutionProvider"]


def test_auto_asks_for_cuda_only_when_this_onnxruntime_has_it():
    wanted = providers_for("auto", device_id=1)

    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert wanted[0] == ("CUDAExecutionProvider", {"device_id": 1})
    else:
        assert wanted == ["CPUExecutionProvider"]


def test_unknown_provider_is_an_error():
    with pytest.raises(ValueError, match="unknown provider"):
        providers_for("tpu")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_runtime_that_wanted_cuda_but_runs_on_cpu_reports_the_problem(model_repo):
    runtime = runtime_for(model_repo / "digits" / "1", provider="cuda")

    assert runtime.provider == "cpu"
    assert "provider cuda was requested" in runtime.problem


def test_runtime_on_cpu_as_asked_has_no_problem(model_repo):
    runtime = runtime_for(model_repo / "digits" / "1", provider="cpu")

    assert runtime.provider == "cpu" and runtime.problem is None


# -- running -----------------------------------------------------------------------------------


def test_run_returns_what_the_onnx_graph_computes_and_split_takes_its_outputs_apart(model_repo):
    runtime = runtime_for(model_repo / "digits" / "1")
    pixels = np.random.default_rng(0).integers(0, 256, (3, *runtime.item_shapes()[0]), dtype=np.uint8)

    session = ort.InferenceSession(str(model_repo / "digits" / "1" / "model.onnx"))
    probabilities, logits = session.run(["probabilities", "logits"], {"pixels": pixels})
    rows = runtime.run([pixels])  # one array, one row per item, as the batcher slices it
    served, served_logits = runtime.split(rows)

    assert rows.shape == (3, 20) and runtime.has_logits
    np.testing.assert_allclose(served, probabilities, rtol=1e-6)
    np.testing.assert_allclose(served_logits, logits, rtol=1e-6)


def test_a_graph_with_one_output_runs_as_before(model_repo):
    runtime = runtime_for(model_repo / "counts" / "1")  # hand-made, as bundles were before the logits output
    rows = runtime.run(runtime.example_inputs(2))

    assert not runtime.has_logits and rows.shape == (2, 1)
    output, logits = runtime.split(rows)
    assert output is rows and logits is None


def test_bound_reused_buffers_give_the_same_results_as_plain_runs(model_repo):
    plain = runtime_for(model_repo / "penguins" / "1")
    bound = runtime_for(model_repo / "penguins" / "1", io_binding=True)  # the CUDA code path, on CPU buffers
    rng = np.random.default_rng(0)

    assert bound.has_logits  # both outputs are bound
    for batch in (3, 1, 3, 5, 3):  # sizes repeat, so buffers are reused with new contents
        x_cat = rng.integers(0, 3, (batch, plain.item_shapes()[0][0]))
        x_cont = rng.normal(size=(batch, 3)).astype(np.float32)
        inputs = [x_cat.astype(np.int64), x_cont]
        np.testing.assert_allclose(bound.run(inputs), plain.run(inputs), rtol=1e-6)


def test_tabular_runtime_feeds_only_the_inputs_the_manifest_lists(model_repo):
    runtime = runtime_for(model_repo / "measures" / "1")

    assert [spec.name for spec in runtime.inputs] == ["x_cont"]
    output, _ = runtime.split(runtime.run(runtime.example_inputs(2)))
    assert output.shape == (2, 3)


def test_example_inputs_have_the_manifest_shapes_and_dtypes(model_repo):
    runtime = runtime_for(model_repo / "penguins" / "1")

    x_cat, x_cont = runtime.example_inputs(4)

    assert x_cat.dtype == np.int64 and x_cat.shape[0] == 4
    assert x_cont.dtype == np.float32 and x_cont.shape == (4, 3)


def test_warm_up_runs_every_requested_batch_size(model_repo):
    runtime = runtime_for(model_repo / "digits" / "1")

    runtime.warm_up([1, 2, 4, 8])  # raises if any size fails


def test_manifest_naming_inputs_the_graph_lacks_is_a_load_error(model_repo):
    bundle = model_repo / "digits" / "1"
    manifest = read_manifest(bundle)
    wrong = [TensorSpec(name="image", dtype="uint8", shape=manifest.onnx.inputs[0].shape)]

    with pytest.raises(RuntimeLoadError, match="does not match the manifest"):
        OnnxRuntime(bundle / "model.onnx", wrong, manifest.onnx.outputs, intra_op_threads=1)


def test_file_that_is_not_onnx_is_a_load_error(tmp_path, model_repo):
    manifest = read_manifest(model_repo / "digits" / "1")
    (tmp_path / "model.onnx").write_bytes(b"nope")

    with pytest.raises(RuntimeLoadError, match="cannot load"):
        OnnxRuntime(tmp_path / "model.onnx", manifest.onnx.inputs, manifest.onnx.outputs)


def test_the_service_package_never_imports_torch():
    import subprocess

    code = (
        "import sys, service.app, service.models.registry, service.__main__\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
