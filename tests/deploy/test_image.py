"""The Dockerfile: hadolint passes, the build context stays small, and its install steps, replayed in a clean
virtualenv, give a service without torch that serves models."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, gradient_image, install_bundle, penguin
from tests.deploy_tools import ROOT, run_tool, tool

DOCKERFILE = ROOT / "Dockerfile"
SKIP_WALKING = {".git", ".venv", "__pycache__", ".pytest_cache", "node_modules"}


def instructions() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) for every instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stage, result = "", []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage = args.split(" AS ")[-1].strip() if " AS " in args else args
        result.append((stage, keyword.upper(), args.strip()))
    return result


def in_stage(stage: str, keyword: str) -> list[str]:
    return [args for s, k, args in instructions() if s == stage and k == keyword]


def build_context() -> set[str]:
    """The files ``docker build .`` would send, by .dockerignore's rules (the last matching pattern wins)."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    included = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_WALKING]
        for filename in filenames:
            path = Path(dirpath, filename).relative_to(ROOT).as_posix()
            prefixes = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
            keep = True
            for negated, pattern in rules:
                if any(fnmatch(prefix, pattern) for prefix in prefixes):
                    keep = negated
            if keep:
                included.add(path)
    return included


def test_dockerfile_passes_hadolint():
    run_tool(tool("hadolint"), DOCKERFILE)


def test_image_is_multi_stage_and_runs_the_service_as_a_numeric_non_root_user():
    stages = [args for _, keyword, args in instructions() if keyword == "FROM"]
    user = in_stage("runtime", "USER")
    (entrypoint,) = in_stage("runtime", "ENTRYPOINT")

    assert len(stages) >= 3 and stages[-1].endswith(" AS runtime")
    assert user == ["10001:10001"]
    assert entrypoint == '["python", "-m", "service"]'
    assert "/healthz" in in_stage("runtime", "HEALTHCHECK")[0]
    runtime_copies = in_stage("runtime", "COPY")
    assert in_stage("build", "COPY") and all("--from=build /opt/venv" in c or "models" in c for c in runtime_copies)


def test_gpu_variant_installs_onnxruntime_gpu_on_a_cuda_base():
    text = DOCKERFILE.read_text()

    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-cudnn-runtime-\S+$", text, re.M)
    assert "onnxruntime-gpu" in " ".join(in_stage("build", "RUN"))


def test_build_context_holds_only_what_the_image_needs():
    context = build_context()
    copied = {args.split()[0].rstrip("/") for args in in_stage("build", "COPY")}

    for source in copied:
        assert any(path == source or path.startswith(source + "/") for path in context), f"COPY {source} is ignored"
    assert {"pyproject.toml", "README.md", "service/app.py", "bundle/__init__.py"} <= context
    left_out = {"tests", "training", "loadtests", "deploy", "data", "docs"}
    assert not any(path.split("/")[0] in left_out for path in context)
    assert not any(path.endswith(("learner.pkl", ".pyc")) for path in context)


# A virtualenv install takes 30 s on an idle 2-core machine and minutes on a busy one: .ci/run sets
# this variable, and a developer can (FASTPROD_IMAGE_TEST=1 python3.11 dev.py test).
replays_image = pytest.mark.skipif(
    os.environ.get("FASTPROD_IMAGE_TEST") != "1",
    reason="slow (a clean virtualenv install): set FASTPROD_IMAGE_TEST=1 to run it; CI (.ci/run) does",
)


@replays_image
def test_replayed_install_steps_give_a_torch_free_service_that_serves(bundle_library, tmp_path):
    # The build stage's COPY and RUN steps, in a clean virtualenv standing in for /opt/venv. pip's
    # wheel cache is used (the image build sets PIP_NO_CACHE_DIR only to keep the layer small).
    context, venv = tmp_path / "src", tmp_path / "venv"
    context.mkdir()
    for args in in_stage("build", "COPY"):
        source = args.split()[0].rstrip("/")
        files = [p for p in build_context() if p == source or p.startswith(source + "/")]
        for path in files:
            (context / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, context / path)
    python_dir = Path(sys.base_prefix) / "bin"
    env = {**os.environ, "PATH": f"{python_dir}{os.pathsep}{os.environ['PATH']}", "VARIANT": "cpu"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    for command in in_stage("build", "RUN"):
        command = command.replace("/opt/venv", str(venv)).replace("python -m venv", f"{sys.executable} -m venv")
        subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=context, env=env, check=True, timeout=600)
    venv_python = str(venv / "bin" / "python")

    no_torch = subprocess.run([venv_python, "-c", "import torch"], cwd=tmp_path, capture_output=True, text=True)
    no_training = subprocess.run([venv_python, "-c", "import training"], cwd=tmp_path, capture_output=True, text=True)
    assert "No module named 'torch'" in no_torch.stderr
    assert "No module named 'training'" in no_training.stderr

    models = tmp_path / "models"
    install_bundle(bundle_library, models, "digits", 1)
    install_bundle(bundle_library, models, "penguins", 1)
    port = free_port()
    server = subprocess.Popen(
        [venv_python, "-m", "service", "--models", str(models), "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "SERVING_INTRA_OP_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, server)
        image = httpx.post(
            f"{url}/v1/models/digits/predict", content=gradient_image(1), headers={"Content-Type": "image/png"}
        )
        table = httpx.post(f"{url}/v1/models/penguins/predict", json={"rows": [penguin()]})
        assert image.status_code == 200, image.text
        assert table.status_code == 200, table.text
        assert "label" in table.json()["predictions"][0]
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=60)
    # SIGTERM drains and exits; uvicorn re-raises the signal once it has shut down cleanly.
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output


def wait_ready(url: str, server: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the service exited: {server.stdout.read() if server.stdout else ''}")
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail("the service never became ready")
