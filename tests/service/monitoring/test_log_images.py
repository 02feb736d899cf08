"""Which logged images keep their bytes: every one sent to review, a bounded sample of the others, or all, or none."""

from __future__ import annotations

import random

import pytest

from service.monitoring.records import keeps_image
from service.settings import ServiceSettings


def kept(images: str, flagged: bool, sample: float, n: int = 20_000) -> float:
    draw = random.Random(7).random
    return sum(keeps_image(images, flagged, sample, draw) for _ in range(n)) / n


def test_sample_keeps_every_review_item_and_about_the_sample_share_of_the_others() -> None:
    assert kept("sample", flagged=True, sample=0.0) == 1.0
    assert kept("sample", flagged=False, sample=0.05) == pytest.approx(0.05, abs=0.005)
    assert kept("sample", flagged=False, sample=0.0) == 0.0


def test_all_keeps_every_image_and_none_keeps_none() -> None:
    assert kept("all", flagged=False, sample=0.0) == 1.0
    assert kept("none", flagged=True, sample=1.0) == 0.0


@pytest.mark.parametrize(("given", "read"), [("true", "all"), ("false", "none"), (True, "all"), ("sample", "sample")])
def test_the_old_switch_values_still_read(given: object, read: str) -> None:
    assert ServiceSettings(prediction_log_images=given).prediction_log_images == read


def test_an_unknown_value_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="prediction_log_images"):
        ServiceSettings(prediction_log_images="some")
