# syntax=docker/dockerfile:1
# The serving image: the service and ONNX Runtime, no torch and no training code.
#
#   docker build -t fastprod-serving .                                    # CPU (python:3.11-slim)
#   docker build -t fastprod-serving:gpu --build-arg VARIANT=gpu .        # onnxruntime-gpu on a CUDA runtime
#   docker run --read-only --tmpfs /tmp -p 8080:8080 -v "$PWD/models:/models:ro" fastprod-serving
#
# Models live at /models: whatever ./models (or --build-arg MODELS) holds is copied in at build
# time, and a volume mounted there replaces it. The root filesystem may be read-only: the service
# writes only under /tmp and /var/lib/fastprod (state file, prediction log); mount both writable.
# docs/operations.md walks through building, running and deploying this image.

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# -- the two bases: the build and runtime stages share one, so the virtualenv's python is the same --
FROM ${PYTHON_IMAGE} AS base-cpu

FROM ${CUDA_IMAGE} AS base-gpu
# Ubuntu's python3 (3.12); versions come from the pinned CUDA base image's release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3 /usr/local/bin/python

# -- build: a virtualenv with the serve extra (and onnxruntime-gpu for the GPU variant) --
# hadolint ignore=DL3006
FROM base-${VARIANT} AS build
ARG VARIANT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bundle/ bundle/
COPY service/ service/
# onnxruntime-gpu replaces onnxruntime (both install the same `onnxruntime` module).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[serve]" \
    && if [ "$VARIANT" = "gpu" ]; then \
         /opt/venv/bin/pip uninstall -y onnxruntime \
         && /opt/venv/bin/pip install "onnxruntime-gpu>=1.18"; \
       fi

# -- runtime --
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
ARG MODELS=models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp TMPDIR=/tmp \
    SERVING_MODELS=/models SERVING_HOST=0.0.0.0 SERVING_PORT=8080
COPY --from=build /opt/venv /opt/venv
RUN groupadd --gid 10001 serving \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin serving \
    && mkdir -p /var/lib/fastprod \
    && chown 10001:10001 /var/lib/fastprod
COPY --chown=10001:10001 ${MODELS}/ /models/
WORKDIR /var/lib/fastprod
USER 10001:10001
EXPOSE 8080
VOLUME ["/tmp", "/var/lib/fastprod"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
# On SIGTERM uvicorn stops accepting, the batchers drain what is queued and in flight, then it exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
