"""The course's way to serve a model: a plain Starlette route that decodes and runs ONNX Runtime per request.

    COURSE_MODELS=models/ python -m uvicorn loadtests.course_app:app --http httptools --no-access-log

What a user writes after the course, and what the service's batching is
compared with (``python -m loadtests.bench``): read the body, decode it with
the bundle's own preprocessing (``bundle.images.preprocess`` for an image,
``rows_to_frame`` + the fitted ``TabularProcessor`` for JSON rows), run the
session on that one request, answer JSON. No batching, no thread hand-off, no
limits, no metrics. The highest version of every model under ``COURSE_MODELS``
is loaded at import. Sessions get the service's thread settings (threads = the
CPU quota, no spinning) so the comparison measures the request path, not
ONNX Runtime's knobs; ``COURSE_PROVIDER`` (cpu or cuda, default cpu) picks
the execution provider.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bundle.images import ResizeSpec, preprocess
from bundle.manifest import Manifest, read_manifest
from bundle.tabular import TabularProcessor, rows_to_frame
from loadtests.repository import newest_bundles
from service.models.runtime import cpu_quota


class CourseModel:
    """One bundle: its session and what turns a request body into the session's inputs."""

    def __init__(self, bundle: Path, provider: str = "cpu") -> None:
        self.manifest: Manifest = read_manifest(bundle)
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_quota()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if provider == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(bundle / self.manifest.onnx.file), options, providers=providers)
        self.input_names = [spec.name for spec in self.manifest.onnx.inputs]
        self.output_name = self.manifest.onnx.outputs[0].name
        image = self.manifest.image
        self.resize = ResizeSpec(image.height, image.width, image.resize_method, image.pad_mode) if image else None
        tabular = self.manifest.tabular
        self.processor = TabularProcessor.from_dict(tabular.processor) if tabular else None
        self.raw_columns = list(tabular.raw_columns) if tabular else []

    def inputs(self, body: bytes) -> list[np.ndarray]:
        if self.resize is not None:
            return [preprocess(body, self.resize)[None]]
        assert self.processor is not None
        frame = rows_to_frame(json.loads(body)["rows"], self.raw_columns, unknown="ignore")
        table = self.processor.transform(frame)
        arrays = {"x_cat": table.x_cat, "x_cont": table.x_cont}
        return [arrays[name] for name in self.input_names]

    def predict(self, body: bytes) -> list[dict[str, Any]]:
        feed = dict(zip(self.input_names, self.inputs(body)))
        output = self.session.run([self.output_name], feed)[0]
        classes = self.manifest.outputs.classes
        if classes:
            return [
                {"label": classes[int(row.argmax())], "probabilities": dict(zip(classes, row.tolist()))}
                for row in output
            ]
        values = np.exp(output) if self.manifest.outputs.log_target else output
        return [{"value": row.tolist()} for row in values]


def load_models(repo: Path, provider: str = "cpu") -> dict[str, CourseModel]:
    """The highest version of each model in a repository (``<repo>/<name>/<version>/``)."""
    return {name: CourseModel(bundle, provider) for name, bundle in newest_bundles(repo).items()}


MODELS = load_models(Path(os.environ.get("COURSE_MODELS", "models")), os.environ.get("COURSE_PROVIDER", "cpu"))


async def predict(request: Request) -> JSONResponse:
    model = MODELS[request.path_params["name"]]
    body = await request.body()
    return JSONResponse({"model": request.path_params["name"], "predictions": model.predict(body)})


app = Starlette(routes=[Route("/v1/models/{name}/predict", predict, methods=["POST"])])
