"""examples/course.ipynb runs top to bottom against a live service, and its plots show inline."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.bundle_factory import build_tabular_bundle
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "course.ipynb"
PNG = b"\x89PNG\r\n\x1a\n"

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``python -m service`` on a repository holding one model (so it is ready), watching for new versions."""
    repo = tmp_path_factory.mktemp("repo") / "models"
    build_tabular_bundle(repo, "penguins", 1)
    port = free_port()
    env = {
        **os.environ,
        "SERVING_WATCH_INTERVAL_S": "0.3",
        "SERVING_PREDICTION_LOG": "false",
        "SERVING_INTRA_OP_THREADS": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--models", str(repo), "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not become ready: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        yield url, repo
    finally:
        process.terminate()
        process.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def executed(service: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The notebook run once by a Jupyter kernel (as a reader would: every cell in order), with its outputs."""
    url, repo = service
    work = tmp_path_factory.mktemp("notebook")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as env:  # the kernel inherits this process's environment
        env.setenv("FASTPROD_SERVICE_URL", url)
        env.setenv("FASTPROD_MODELS", str(repo))
        env.setenv("FASTPROD_DATA", str(work / "data"))
        env.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout's training package
        env.setenv("OMP_NUM_THREADS", "1")
        client = nbclient.NotebookClient(
            notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(work)}}
        )
        client.execute()
    return notebook, repo


def test_the_course_notebook_trains_exports_and_gets_an_answer_from_the_service(executed) -> None:
    notebook, repo = executed
    assert (repo / "shapes" / "1" / "model.onnx").is_file()
    printed = "".join(out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", []))
    assert '"model": "shapes"' in printed and '"predictions"' in printed


def test_every_plot_verb_draws_one_inline_png(executed) -> None:
    notebook, _ = executed
    verbs = ("show_batch", "lr_find", "plot_loss", "show_results", "plot_confusion_matrix", "plot_top_losses")
    for verb in verbs:
        cell = next(c for c in notebook.cells if c.cell_type == "code" and f"{verb}(" in c.source)
        images = [out["data"]["image/png"] for out in cell.outputs if "image/png" in out.get("data", {})]
        assert len(images) == 1, f"{verb}: {len(images)} images"
        assert base64.b64decode(images[0])[:8] == PNG
