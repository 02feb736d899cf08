"""How a version's batches are sized and run when nobody tuned them: chosen from timings taken at load.

After warm-up, the registry times runs at each power-of-two batch size up
to ``max_batch_size`` on the machine the service runs on, with the
service's own ONNX Runtime settings (:func:`measure`: the best of at least
3 runs and of up to 50 within 20 ms per size). Two choices follow
(:func:`choose`), and both are logged and shown in ``GET /v1/models/{name}``:

* **Batch cap**: the smallest size whose time per item is within
  ``EFFICIENT_SHARE`` (10 %) of the best time per item measured. Beyond it a
  bigger batch buys little throughput but holds every item in it for the
  whole run, and it leaves the runtime idle while one huge batch's clients
  all decode their next request at once; below it the runtime wastes its
  fixed cost per run. On a CPU a convolutional net flattens out around 8-16
  items; on a GPU, or for a tiny model whose run is mostly fixed cost, the
  time per item keeps falling, so the cap stays at ``max_batch_size``.
* **Where batches run**: a model whose batch at that cap runs in under
  ``INLINE_MAX_RUN_S`` (1 ms) runs on the event loop itself, because handing
  a batch to a thread and back costs the loop more (a wake-up through the
  self-pipe, a future, the GIL changing hands twice) than the run; a slower
  model runs in the version's runtime thread, so the loop keeps reading,
  decoding and answering other requests meanwhile.
* **Batch cap on the event loop**: a model whose batches run on the loop
  takes the largest timed size that still runs in under ``INLINE_MAX_RUN_S``
  instead. There the reason for a small cap is gone (nothing decodes while
  a batch runs on the loop, so no overlap is lost), and each batch's work
  outside the timed run (taking the queue, slicing and resolving every
  request's rows, metrics: tens of microseconds) is paid on the loop, by
  fewer batches the bigger they are.
* **Runtime threads**: a model whose batches run on the event loop is
  reopened with one ONNX Runtime thread (unless ``SERVING_INTRA_OP_THREADS``
  is set). Splitting a sub-millisecond run over several threads barely
  shortens it while costing much more CPU, which the event loop, decoding
  and the clients need.
  Slower models keep the container's CPU quota of threads, where the
  parallel speed-up is real.

Explicit settings win: ``SERVING_MAX_BATCH_SIZE`` set by hand is used as the
cap as it is, and ``SERVING_INLINE_INFERENCE`` (true/false) forces where
batches run. The figures behind each rule are in docs/batching.md.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from service.models.runtime import OnnxRuntime

EFFICIENT_SHARE = 0.10  # a batch size is "efficient" when its time per item is within this share of the best
INLINE_MAX_RUN_S = 0.001  # models whose largest batch runs faster than this run on the event loop
MIN_REPEATS = 3  # timed runs per batch size, at least ...
BUDGET_S = 0.02  # ... and as many more as fit in this many seconds per size ...
MAX_REPEATS = 50  # ... up to this many
MAX_STEP = 4.0  # the most one live run moves the run-time scale, before averaging (RunCost.observe)


@dataclass(frozen=True)
class BatchPlan:
    """What the batcher of one version does: its batch cap and whether it runs batches on the event loop."""

    max_batch_size: int
    inline: bool
    seconds_per_run: dict[int, float]  # the timings the plan came from, by batch size (empty when not measured)
    chosen: str  # "measured" or "settings"
    intra_op_threads: int = 1  # ONNX Runtime threads per run

    def describe(self) -> dict[str, object]:
        return {
            "max_batch_size": self.max_batch_size,
            "runs_on": "event loop" if self.inline else "runtime thread",
            "chosen": self.chosen,
            "intra_op_threads": self.intra_op_threads,
            "ms_per_item": {str(b): round(s * 1000 / b, 4) for b, s in sorted(self.seconds_per_run.items())},
        }


def timed_sizes(allowed: Sequence[int]) -> list[int]:
    """The sizes worth timing: powers of two among ``allowed``, and the largest allowed size."""
    largest = max(allowed)
    sizes = [size for size in allowed if size & (size - 1) == 0]
    return sorted({*sizes, largest})


def measure(
    runtime: OnnxRuntime,
    sizes: Sequence[int],
    min_repeats: int = MIN_REPEATS,
    budget_s: float = BUDGET_S,
    max_repeats: int = MAX_REPEATS,
) -> dict[int, float]:
    """Seconds of one run at each batch size: the best of at least ``min_repeats`` runs, and of as many
    more as fit in ``budget_s`` per size (at most ``max_repeats``; warm-up has already run each size).

    Noise on a shared machine only ever adds time, so the best of many runs is the steady figure; a fast
    model's time per item is nearly flat over sizes, and the best of two flipped its cap from one start to
    the next (docs/batching.md)."""
    timings: dict[int, float] = {}
    for size in sizes:
        inputs = runtime.example_inputs(size)
        best = float("inf")
        began = time.perf_counter()
        runs = 0
        while runs < min_repeats or (runs < max_repeats and time.perf_counter() - began < budget_s):
            started = time.perf_counter()
            runtime.run(inputs)
            best = min(best, time.perf_counter() - started)
            runs += 1
        timings[size] = best
    return timings


def choose(
    timings: dict[int, float], max_batch_size: int, *, cap_fixed: bool, inline: bool | None, threads: int = 1
) -> BatchPlan:
    """The plan for these ``timings``: see the module docstring. ``cap_fixed``: the cap was set by hand."""
    if not timings:
        return BatchPlan(max_batch_size, bool(inline), {}, "settings", threads)
    per_item = {size: seconds / size for size, seconds in timings.items()}
    best = min(per_item.values())
    cap = max_batch_size
    if not cap_fixed:
        cap = min(size for size, cost in sorted(per_item.items()) if cost <= best * (1 + EFFICIENT_SHARE))
    largest_run = timings.get(cap, timings[max(timings)])
    runs_inline = inline if inline is not None else largest_run < INLINE_MAX_RUN_S
    if runs_inline and not cap_fixed:  # on the loop: the largest batch that still runs in under INLINE_MAX_RUN_S
        cap = max([cap, *(size for size, seconds in timings.items() if seconds < INLINE_MAX_RUN_S)])
    chosen = "settings" if cap_fixed and inline is not None else "measured"
    return BatchPlan(cap, runs_inline, dict(timings), chosen, threads)


class RunCost:
    """Seconds one run of ``n`` items takes: the shape of the curve timed at load, its scale from live runs.

    The timings at load (:func:`measure`) say how a run's time grows with its items; live runs say how
    much slower or faster than at load the machine is now (a moving average of measured / timed), so the
    estimate is there before the first request, and follows the machine within a few runs. Between timed
    sizes the time is interpolated; beyond them it grows per item. Without timings (settings fixed the
    plan) the curve is one per item and nothing is known until the first run.
    """

    def __init__(self, timings: Mapping[int, float]) -> None:
        points = sorted((size, seconds) for size, seconds in timings.items() if size > 0 and seconds > 0)
        self._sizes = [size for size, _ in points]
        self._seconds = [seconds for _, seconds in points]
        self.scale = 1.0 if points else 0.0  # measured / timed; 0 while nothing is known

    @property
    def known(self) -> bool:
        return self.scale > 0

    def at_load(self, items: int) -> float:
        """The time of a run of ``items`` items on the curve timed at load (one unit per item without one)."""
        sizes, seconds = self._sizes, self._seconds
        if not sizes:
            return float(items)
        if items <= sizes[0]:
            return seconds[0] * items / sizes[0]
        if items >= sizes[-1]:
            return seconds[-1] * items / sizes[-1]
        i = bisect.bisect_left(sizes, items)
        low, high = sizes[i - 1], sizes[i]
        share = (items - low) / (high - low)
        return seconds[i - 1] + share * (seconds[i] - seconds[i - 1])

    def seconds(self, items: int) -> float:
        """The expected time of one run of ``items`` items now (0 while nothing is known)."""
        return self.scale * self.at_load(items) if items > 0 else 0.0

    def observe(self, items: int, seconds: float) -> None:
        """A live run of ``items`` items took ``seconds``.

        One run moves the scale by at most a factor ``MAX_STEP`` before averaging: a thread descheduled
        for a moment must not make one fast run look a thousand times slower and refuse the next burst;
        a machine that really got slower is followed within a few runs."""
        ratio = seconds / self.at_load(items)
        if not self.known:
            self.scale = ratio
            return
        ratio = min(max(ratio, self.scale / MAX_STEP), self.scale * MAX_STEP)
        self.scale = 0.8 * self.scale + 0.2 * ratio
