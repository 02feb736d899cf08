# The serving image: ONNX Runtime on CPU, no torch. Models come from ./models at build time
# (build them first with `python -m training examples`) or from a volume mounted at /models.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SERVING_MODELS=/models SERVING_HOST=0.0.0.0 SERVING_PORT=8080

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bundle/ bundle/
COPY service/ service/
# training/ is not installed in this image; an empty package keeps setuptools' discovery happy
RUN mkdir -p training && touch training/__init__.py \
    && pip install --no-cache-dir ".[serve]" \
    && useradd --uid 10001 --no-create-home serving
COPY --chown=serving models/ /models/

USER serving
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
# uvicorn's graceful shutdown on SIGTERM: stop accepting, drain the batchers, exit
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
