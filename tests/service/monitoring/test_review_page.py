"""The /ui/review page in a browser: the queue's real size, and every page of it (issue 31, item 8)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.ui.test_browser import Tab, browser, expect  # noqa: F401 - browser is the module's fixture

pytestmark = [pytest.mark.browser, pytest.mark.live_server]

REVIEWER = "reviewer-secret"
UNSEEN = {"color": "mauve", "shape": "circle", "x1": 3.0, "x2": 5.0, "x3": 50.0}  # flagged: an unseen category


def test_the_page_shows_the_queues_real_size_and_pages_through_it(
    browser: Any,  # noqa: F811 - the fixture imported above
    shapes_repo: Path,
    live_server: Callable[..., Any],
    tmp_path: Path,
) -> None:
    server = live_server(
        shapes_repo, prediction_log=True, prediction_log_path=tmp_path / "log.sqlite", reviewer_token=REVIEWER
    )
    flagged = httpx.post(server.url + "/v1/models/shapes/predict", json={"rows": [UNSEEN] * 52})
    assert flagged.status_code == 200
    tab = Tab(browser, server.url)
    page = tab.open("/ui/review")
    page.get_by_label("Admin or reviewer token").fill(REVIEWER)
    page.get_by_role("button", name="Use").click()

    expect(page.locator("#review-status")).to_contain_text("52 items to review. Showing 1–50.")
    assert page.locator("#review-queue > li").count() == 50
    page.get_by_role("button", name="Older items").click()
    expect(page.locator("#review-status")).to_contain_text("Showing 51–52.")
    assert page.locator("#review-queue > li").count() == 2
    assert page.get_by_role("button", name="Older items").is_hidden()
    page.get_by_role("button", name="Newer items").click()
    expect(page.locator("#review-status")).to_contain_text("Showing 1–50.")
    tab.close()
