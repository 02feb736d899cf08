"""With default settings each version chooses its batch cap and where batches run from timings taken at load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.models.batch_policy import INLINE_MAX_RUN_S, choose, measure, timed_sizes


def test_the_cap_is_the_smallest_batch_about_as_fast_per_item_as_the_best() -> None:
    # a CPU convolutional net: the time per item flattens out at 8 (6.1 ms against the best 5.7 ms)
    timings = {1: 0.0083, 2: 0.0147, 4: 0.026, 8: 0.049, 16: 0.0946, 32: 0.1919, 64: 0.3655}
    plan = choose(timings, 64, cap_fixed=False, inline=None)
    assert plan.max_batch_size == 8
    assert plan.inline is False  # a 49 ms run belongs in the runtime thread, not on the event loop


def test_a_model_whose_time_per_item_keeps_falling_keeps_the_full_cap() -> None:
    timings = {size: 0.0001 + size * 0.000001 for size in (1, 2, 4, 8, 16, 32)}  # mostly fixed cost per run
    plan = choose(timings, 32, cap_fixed=False, inline=None)
    assert plan.max_batch_size == 32
    assert plan.inline is True  # its largest batch runs in well under a millisecond


def test_a_model_run_on_the_event_loop_takes_the_largest_batch_that_runs_in_under_the_inline_limit() -> None:
    # the digits CNN: flat per item from 4 on (the efficient cap would be 4), every size far under 1 ms
    timings = {1: 0.000033, 2: 0.000049, 4: 0.00008, 8: 0.000153, 16: 0.000294, 32: 0.000618}
    assert choose(timings, 32, cap_fixed=False, inline=None).max_batch_size == 32
    assert choose(timings, 32, cap_fixed=False, inline=False).max_batch_size == 4  # in the thread: the rule above
    slower = {**timings, 16: 0.0009, 32: 0.0019}  # 32 items would hold the loop for 1.9 ms
    plan = choose(slower, 32, cap_fixed=False, inline=None)
    assert plan.inline and plan.max_batch_size == 16
    assert choose(timings, 8, cap_fixed=True, inline=None).max_batch_size == 8  # a cap set by hand stays


def test_explicit_settings_win() -> None:
    timings = {1: 0.0083, 8: 0.049, 32: 0.1919}
    assert choose(timings, 32, cap_fixed=True, inline=None).max_batch_size == 32
    assert choose({1: 1e-5, 32: 1e-4}, 32, cap_fixed=False, inline=False).inline is False
    assert choose({}, 12, cap_fixed=True, inline=True).describe()["chosen"] == "settings"


def test_the_timed_sizes_are_powers_of_two_and_the_largest() -> None:
    assert timed_sizes(list(range(1, 25))) == [1, 2, 4, 8, 16, 24]
    assert timed_sizes([1, 2, 4, 8]) == [1, 2, 4, 8]


class NoisyRuntime:
    """A runtime whose runs take 1 ms per item, except that every other run is slowed by noise."""

    def __init__(self) -> None:
        self.runs: dict[int, int] = {}

    def example_inputs(self, size: int) -> list[Any]:
        return [size]

    def run(self, inputs: list[Any]) -> None:
        import time

        size = inputs[0]
        self.runs[size] = self.runs.get(size, 0) + 1
        time.sleep(size * 0.001 * (3 if self.runs[size] % 2 else 1))


def test_each_size_is_timed_as_the_best_of_several_runs_within_a_budget() -> None:
    runtime = NoisyRuntime()
    timings = measure(runtime, [1, 8], min_repeats=3, budget_s=0.02, max_repeats=50)  # type: ignore[arg-type]
    assert 0.008 <= timings[8] < 0.012 and 0.001 <= timings[1] < 0.002  # the noise-free runs
    assert runtime.runs[8] == 3  # a slow size: the least number of runs
    assert 3 < runtime.runs[1] <= 50  # a fast one: as many as fit in the budget


def test_a_served_version_shows_its_plan_and_serves_with_it(make_repo: Callable[..., Path], make_client: Any) -> None:
    from tests.conftest import gradient_image, post_bytes

    repo = make_repo(("digits", 1), ("slow", 1))
    client = make_client(repo, max_batch_size=4)  # set by hand: the cap is kept as it is
    for name in ("digits", "slow"):
        (version,) = client.get(f"/v1/models/{name}").json()["versions"]
        batching = version["batching"]
        assert batching["max_batch_size"] == 4 and batching["ms_per_item"]
        assert post_bytes(client, f"/v1/models/{name}/predict", gradient_image(1)).status_code == 200
    slow = client.get("/v1/models/slow").json()["versions"][0]["batching"]
    assert slow["runs_on"] == "runtime thread"  # its runs are far over INLINE_MAX_RUN_S
    assert float(slow["ms_per_item"]["4"]) * 4 / 1000 > INLINE_MAX_RUN_S


def test_a_model_run_on_the_event_loop_gets_one_runtime_thread_unless_set(
    make_repo: Callable[..., Path], make_client: Any
) -> None:
    repo = make_repo(("digits", 1), ("slow", 1))
    default = make_client(repo, inline_inference=True, model_names=["digits"])
    assert default.get("/v1/models/digits").json()["versions"][0]["batching"]["intra_op_threads"] == 1
    chosen = make_client(repo, inline_inference=True, intra_op_threads=2, model_names=["digits"])
    assert chosen.get("/v1/models/digits").json()["versions"][0]["batching"]["intra_op_threads"] == 2
    threaded = make_client(repo, inline_inference=False, intra_op_threads=2, model_names=["slow"])
    assert threaded.get("/v1/models/slow").json()["versions"][0]["batching"]["intra_op_threads"] == 2
