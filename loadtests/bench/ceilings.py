"""What the hardware allows without HTTP, measured in the bench's own process with the service's own parts.

- **raw ONNX Runtime throughput** at batch sizes 1, 2, 4, ..., 64 on already
  preprocessed inputs, the session built exactly as the service builds it
  (``service.models.runtime.OnnxRuntime`` with ``ServiceSettings()``'s thread and
  spinning defaults, the provider asked for);
- **decode + preprocessing per item**: the service's own decoder
  (``service.codecs.decoder_for`` with the default request limits, trying
  ``decode_in_place`` first as the service does) on the request body: for an
  image ``bundle.images``' decode, resize and HWC->CHW; for rows the strict
  JSON parse, ``rows_to_frame`` and the fitted ``TabularProcessor``;
- **the pipeline limit** from both::

      limit = 1 / (decode_per_item / cores + infer_per_item)

  where ``cores`` is the CPU quota the service sizes its decode pool and ONNX
  Runtime by (``service.models.runtime.cpu_quota``), and ``infer_per_item`` is
  1 / the best raw throughput over the batch sizes: decoding spread over every
  core, then the best batch. Also reported, the **serial** figure
  1 / (decode_per_item + infer_per_item): one thread decoding, then running;
- **single item**: one request's decode then a batch-1 run, back to back (the
  best a lone client can see, before HTTP);
- **in-process rows/s** (requests of many rows): decode the whole body and run
  it in one session call, back to back.

Each method measures one slice of about ``seconds`` and returns its figure;
the workloads interleave these slices with the load slices they are compared with.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from bundle.manifest import read_manifest
from service.codecs import decoder_for, input_limits, media_type_of
from service.models.runtime import OnnxRuntime, cpu_quota
from service.settings import ServiceSettings

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


class Ceilings:
    """The in-process measurements for one model and one request body."""

    def __init__(self, bundle: Path, body: bytes, content_type: str, provider: str = "cpu") -> None:
        settings = ServiceSettings()
        manifest = read_manifest(bundle)
        self.runtime = OnnxRuntime(
            bundle / manifest.onnx.file,
            manifest.onnx.inputs,
            manifest.onnx.outputs,
            provider=provider,
            device_id=settings.cuda_device_id,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            allow_spinning=settings.ort_spinning,
        )
        limits = input_limits(settings)
        max_items = 1_000_000  # the bench's own bodies; the service's item limit is the service's business
        limits["max_cells"] = 1 << 30
        self.decoder = decoder_for(
            manifest, max_items, settings.max_image_pixels, settings.inline_decode_max_pixels, **limits
        )
        self.body = body
        self.content_type = content_type
        self.media_type = media_type_of(content_type)
        self.cores = cpu_quota()
        self.item = self.decode()
        self.items_per_request = int(self.item[0].shape[0])
        self.one = [array[:1] for array in self.item]
        self.runtime.warm_up(BATCH_SIZES)

    @property
    def provider(self) -> str:
        return self.runtime.provider

    def decode(self) -> list[np.ndarray]:
        """The body -> the model's input arrays, as the service decodes it."""
        inline = self.decoder.decode_in_place(self.media_type, self.content_type, self.body)
        if inline is not None:
            return inline.arrays
        return self.decoder.decode(self.media_type, self.content_type, self.body).arrays

    def decode_per_item_s(self, seconds: float) -> float:
        """Seconds of decoding and preprocessing per item (one thread)."""
        items, started = 0, time.perf_counter()
        while True:
            self.decode()
            items += self.items_per_request
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                return elapsed / items

    def ort_rates(self, seconds: float, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> dict[int, float]:
        """Items/s of ONNX Runtime alone at each batch size, ``seconds`` shared among them."""
        rates = {}
        for batch in batch_sizes:
            inputs = [np.repeat(array, batch, axis=0) for array in self.one]
            runs, started = 0, time.perf_counter()
            while True:
                self.runtime.run(inputs)
                runs += 1
                elapsed = time.perf_counter() - started
                if elapsed >= seconds / len(batch_sizes):
                    break
            rates[batch] = runs * batch / elapsed
        return rates

    def limit_slice(self, seconds: float) -> dict[str, object]:
        """One slice of the pipeline-limit measurement: decode cost, the batch sweep, and the limits from both."""
        decode_s = self.decode_per_item_s(seconds / 2)
        rates = self.ort_rates(seconds / 2)
        best = max(rates, key=lambda b: rates[b])
        infer_s = 1 / rates[best]
        return {
            "decode_ms_per_item": decode_s * 1000,
            "ort_items_per_s": rates,
            "best_batch": best,
            "infer_ms_per_item": infer_s * 1000,
            "pipeline_limit": 1 / (decode_s / self.cores + infer_s),
            "serial_limit": 1 / (decode_s + infer_s),
        }

    def single_item_ms(self, seconds: float) -> float:
        """Median milliseconds of one request's decode and a batch-1 run, back to back."""
        times: list[float] = []
        started = time.perf_counter()
        while not times or time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            self.runtime.run([array[:1] for array in self.decode()])
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    def rows_per_s(self, seconds: float) -> float:
        """Items/s decoding whole requests and running each in one session call (no HTTP, no batching)."""
        items, started = 0, time.perf_counter()
        while True:
            self.runtime.run(self.decode())
            items += self.items_per_request
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                return items / elapsed
