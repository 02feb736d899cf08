"""The web pages in a real browser: Playwright driving Debian's Chromium headless against a live service.

Skipped, with the reason, where ``/usr/bin/chromium`` or Playwright is missing (under CI, where ``CI`` is set,
that fails instead: CI installs ``chromium`` and must run these). Every test writes screenshots to
``test-artifacts/ui/`` (git-ignored), checks that the page raised no script error and that the browser
asked nothing of any host but the service. The rollout and review tests need the rollout and monitoring
APIs; until a service has them they skip and say which endpoint was missing.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, metric_value

pytestmark = [pytest.mark.browser, pytest.mark.live_server]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "ui"
PHONE = {"width": 390, "height": 844}
ADMIN_TOKEN = "s3cret-admin-token"
TIMEOUT_MS = 10_000


def browser_missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"Playwright for Python is not installed ({exc}); it is in the dev extra"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    why = browser_missing()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {why}")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[LiveServer]:
    """One live service on the shared repository (digits v1 and v2, penguins, ...), for tests that only read."""
    live = LiveServer(model_repo).start()
    yield live
    live.stop()


class Tab:
    """One browser page on a live service, with what the page did wrong collected along the way."""

    def __init__(self, browser: Any, base_url: str, viewport: dict[str, int] | None = None) -> None:
        self.base_url = base_url
        self.context = browser.new_context(viewport=viewport or {"width": 1100, "height": 900})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.elsewhere: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("request", self._check_host)

    def _check_host(self, request: Any) -> None:
        if not request.url.startswith(self.base_url) and not request.url.startswith(("data:", "blob:")):
            self.elsewhere.append(request.url)

    def open(self, path: str) -> Any:
        self.page.goto(self.base_url + path)
        return self.page

    def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()

    def close(self) -> None:
        self.context.close()
        assert not self.errors, f"script errors on the page: {self.errors}"
        assert not self.elsewhere, f"the page asked other hosts: {self.elsewhere}"


@pytest.fixture
def tab(browser: Any, server: LiveServer) -> Iterator[Tab]:
    opened = Tab(browser, server.url)
    yield opened
    opened.close()


@pytest.fixture
def phone(browser: Any, server: LiveServer) -> Iterator[Tab]:
    opened = Tab(browser, server.url, viewport=PHONE)
    yield opened
    opened.close()


# -- files the tests upload --------------------------------------------------------------------


def digit_png(index: int = 0) -> bytes:
    """One of scikit-learn's 8x8 digits, upscaled to 64x64 like a scanned digit."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    pixels = (load_digits().images[index] * 16).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).resize((64, 64), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def cat_png() -> bytes:
    """scikit-image's sample cat (Chelsea): a photograph, nothing like a digit."""
    data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) ships the sample cat photograph")
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, format="PNG")
    return buf.getvalue()


CORRUPT_PNG = b"\x89PNG\r\n\x1a\nthis is not an image"


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def expect(locator: Any) -> Any:
    """Playwright's auto-retrying assertion. Wait on locators like this, not with ``wait_for_function``:
    polling a string predicate needs eval, which the pages' Content-Security-Policy forbids."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def api_predict_file(
    server: LiveServer, name: str, filename: str, data: bytes, path: str | None = None
) -> httpx.Response:
    """What a script gets for the same upload."""
    url = server.url + (path or f"/v1/models/{name}/predict")
    return httpx.post(url, files={"file": (filename, data, "image/png")}, timeout=30)


# -- the model list and the card ---------------------------------------------------------------


def test_the_model_list_links_to_each_card(tab):
    page = tab.open("/")  # the root redirects to the pages

    assert page.url == tab.base_url + "/ui"
    assert page.locator(".cards > li").count() == len(httpx.get(tab.base_url + "/v1/models").json()["models"])
    tab.shot("models")
    page.get_by_role("link", name="penguins", exact=True).click()
    assert page.url.endswith("/ui/models/penguins")


def test_uploading_a_digit_shows_its_label_probabilities_version_and_curl(tab, server, tmp_path):
    digit = write(tmp_path, "digit.png", digit_png(7))
    expected = api_predict_file(server, "digits", "digit.png", digit.read_bytes()).json()
    page = tab.open("/ui/models/digits")

    with page.expect_request(lambda r: r.method == "POST") as sent:
        page.set_input_files("#try-file", str(digit))
    page.wait_for_selector("[data-testid=label]")

    request = sent.value
    assert request.url == server.url + "/v1/models/digits/predict"  # the browser itself calls the predict API
    assert request.headers["content-type"].startswith("multipart/form-data")
    assert tab.text("[data-testid=label]") == expected["predictions"][0]["label"]
    assert page.locator("#try-result .bars li").count() == 5  # the top probabilities as bars
    assert tab.text("[data-testid=version]") == f"version {expected['version']}"
    assert tab.text("#curl-command") == (
        f"curl -X POST '{server.url}/v1/models/digits/predict' \\\n  -F 'file=@digit.png'"
    )
    assert page.locator("#try-preview").is_visible()
    tab.shot("model-digits-prediction")


def test_dropping_an_image_predicts_it(tab, server):
    page = tab.open("/ui/models/digits")
    transfer = page.evaluate_handle(
        """bytes => { const t = new DataTransfer();
                      t.items.add(new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"})); return t; }""",
        list(digit_png(3)),
    )

    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})

    page.wait_for_selector("[data-testid=label]")
    assert "file=@dropped.png" in tab.text("#curl-command")


def test_a_corrupt_file_shows_the_apis_error_next_to_the_file_field(tab, server, tmp_path):
    corrupt = write(tmp_path, "broken.png", CORRUPT_PNG)
    expected = api_predict_file(server, "digits", "broken.png", CORRUPT_PNG)
    page = tab.open("/ui/models/digits")

    page.set_input_files("#try-file", str(corrupt))

    error = page.locator("#try-file-error")
    error.wait_for(state="visible")
    assert expected.status_code == 422
    assert error.inner_text() == expected.json()["error"]["message"]
    assert page.locator("#try-file").get_attribute("aria-describedby") == "try-file-error"
    assert "Traceback" not in page.content()
    assert page.locator("[data-testid=label]").count() == 0
    tab.shot("model-digits-corrupt-file")


def test_a_pinned_version_and_a_region_are_sent_and_shown_in_the_curl_command(tab, server, tmp_path):
    digit = write(tmp_path, "digit.png", digit_png(1))
    page = tab.open("/ui/models/digits")
    page.locator("summary", has_text="Request options").click()
    page.select_option("#try-version", "1")
    page.fill("#try-region", "marin")

    with page.expect_request(lambda r: r.method == "POST") as sent:
        page.set_input_files("#try-file", str(digit))
    page.wait_for_selector("[data-testid=label]")

    assert sent.value.url == server.url + "/v1/models/digits/versions/1/predict"
    assert sent.value.headers["x-region"] == "marin"
    assert tab.text("[data-testid=version]") == "version 1"
    assert "-H 'X-Region: marin'" in tab.text("#curl-command")


def test_filling_the_penguins_form_shows_a_species(tab, server):
    classes = httpx.get(server.url + "/v1/models/penguins").json()["classes"]
    page = tab.open("/ui/models/penguins")
    page.get_by_label("island").select_option("Dream")
    page.get_by_label("sex").select_option("female")
    page.get_by_label("bill_length_mm").fill("39.5")
    page.get_by_label("bill_depth_mm").fill("17.4")
    page.get_by_label("flipper_length_mm").fill("186")

    with page.expect_request(lambda r: r.method == "POST") as sent:
        page.get_by_role("button", name="Predict", exact=True).click()
    page.wait_for_selector("[data-testid=label]")

    row = {"island": "Dream", "sex": "female", "bill_length_mm": 39.5, "bill_depth_mm": 17.4, "flipper_length_mm": 186}
    assert sent.value.post_data_json == {"rows": [row]}  # what a script would send
    assert sent.value.headers["content-type"] == "application/json"
    assert tab.text("[data-testid=label]") in classes
    expected = httpx.post(server.url + "/v1/models/penguins/predict", json={"rows": [row]}).json()
    assert tab.text("[data-testid=label]") == expected["predictions"][0]["label"]
    assert f"-d '{json.dumps({'rows': [row]}, separators=(',', ':'))}'" in tab.text("#curl-command")
    tab.shot("model-penguins-prediction")


def test_empty_fields_are_sent_as_missing_values(tab):
    page = tab.open("/ui/models/penguins")
    page.get_by_label("island").select_option("Biscoe")

    with page.expect_request(lambda r: r.method == "POST") as sent:
        page.get_by_role("button", name="Predict", exact=True).click()
    page.wait_for_selector("[data-testid=label]")

    (row,) = sent.value.post_data_json["rows"]
    assert row == {
        "island": "Biscoe",
        "sex": None,
        "bill_length_mm": None,
        "bill_depth_mm": None,
        "flipper_length_mm": None,
    }


def test_a_csv_upload_shows_one_prediction_per_row(tab, tmp_path):
    csv = write(
        tmp_path,
        "penguins.csv",
        "island,sex,bill_length_mm,bill_depth_mm,flipper_length_mm\n"
        "Dream,female,39.5,17.4,186\nBiscoe,male,48.1,15.1,220\nTorgersen,,,,\n",
    )
    page = tab.open("/ui/models/penguins")

    with page.expect_request(lambda r: r.method == "POST") as sent:
        page.set_input_files("#try-csv", str(csv))
    page.wait_for_selector("#try-result table")

    assert sent.value.headers["content-type"] == "text/csv"
    assert page.locator("#try-result tbody tr").count() == 3
    assert "--data-binary '@penguins.csv'" in tab.text("#curl-command")
    tab.shot("model-penguins-csv")


def test_a_csv_with_none_of_the_columns_shows_the_apis_error_next_to_the_csv_field(tab, server, tmp_path):
    body = "name,colour\nPingu,black\n"
    csv = write(tmp_path, "wrong.csv", body)
    expected = httpx.post(
        server.url + "/v1/models/penguins/predict", content=body, headers={"Content-Type": "text/csv"}
    )
    page = tab.open("/ui/models/penguins")

    page.set_input_files("#try-csv", str(csv))

    error = page.locator("#try-csv-error")
    error.wait_for(state="visible")
    assert error.inner_text() == expected.json()["error"]["message"]


def test_the_card_shows_metrics_parity_and_training_and_fits_a_phone(phone):
    page = phone.open("/ui/models/digits")

    for text in ("Validation metrics", "ONNX parity with PyTorch", "Training items", "simple_cnn"):
        assert page.get_by_text(text).first.is_visible(), text
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    phone.shot("model-digits-phone")


def test_the_form_is_usable_with_the_keyboard_alone(tab):
    page = tab.open("/ui/models/penguins")
    page.get_by_label("island").focus()
    page.keyboard.press("ArrowDown")  # the first known level
    for _ in range(4):
        page.keyboard.press("Tab")
    page.keyboard.type("186")  # flipper_length_mm
    page.get_by_role("button", name="Predict", exact=True).focus()

    page.keyboard.press("Enter")

    page.wait_for_selector("[data-testid=label]")


# -- rollout, monitoring and review pages without their data ---------------------------------


def status_of(server: LiveServer, path: str, **headers: str) -> int:
    return httpx.get(server.url + path, headers=headers, timeout=10).status_code


ABSENT = (404, 405, 501)


def test_the_rollout_page_renders_and_says_when_rollout_data_is_not_there(tab, server):
    page = tab.open("/ui/rollouts/digits")

    status = page.locator("#rollout-status")
    if status_of(server, "/v1/rollouts") in ABSENT:
        status.locator("p").wait_for()
        assert "Rollout state is not available yet" in status.inner_text()
        assert page.locator("#rollout-body").is_hidden()
    elif status_of(server, "/v1/rollouts/digits") == 200:  # new versions held: the serving version is a policy
        expect(page.locator("#rollout-state")).to_contain_text("off")
        expect(page.locator("#rollout-body")).to_be_visible()
    else:  # the rollout API is there, and this service runs without a policy
        status.locator("p").wait_for()
        assert "No rollout policy is configured for digits" in status.inner_text()
    tab.shot("rollout-digits-without-policy")


def test_the_monitoring_page_renders_drift_or_says_it_is_not_there(tab, server):
    httpx.post(server.url + "/v1/models/digits/predict", content=digit_png(2), headers={"Content-Type": "image/png"})
    page = tab.open("/ui/monitoring/digits")

    page.locator("#monitor-traffic table").wait_for()  # requests per version and region, from /metrics
    if status_of(server, "/v1/models/digits/drift") in ABSENT:
        assert "Drift is not available yet" in tab.text("#monitor-drift")
    else:
        page.locator("#monitor-drift .bars, #monitor-drift .notice").first.wait_for()
    assert page.locator("#monitor-traffic tbody tr").count() >= 1
    tab.shot("monitoring-digits")


def test_the_review_page_renders_and_says_when_the_queue_is_not_there(tab, server):
    page = tab.open("/ui/review")

    expect(page.locator("#review-status")).not_to_have_text(re.compile(r"^\s*$|^Loading"), timeout=30_000)
    if status_of(server, "/v1/predictions") in ABSENT:
        assert "The review queue is not available yet" in tab.text("#review-status")
    tab.shot("review-without-queue")


def test_the_rollout_and_review_pages_fit_a_phone(phone):
    for path, name in (
        ("/ui/rollouts/digits", "rollout-phone"),
        ("/ui/review", "review-phone"),
        ("/ui", "models-phone"),
    ):
        page = phone.open(path)
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), path
        phone.shot(name)


# -- with the rollout API (issue 7) and the prediction log and feedback (issue 8) ------------


def admin_token_setting() -> bool:
    from service.settings import ServiceSettings

    return "admin_token" in ServiceSettings.model_fields


CANARY_POLICY = """\
models:
  digits:
    stable: 1
    candidate: 2
    stage: canary
    sticky_key: X-Request-Key
    steps:
      - {{regions: {{campsite-1: 100}}, hold: 1d}}
      - {{regions: {{campsite-1: 100, campsite-2: 100}}, hold: 7d}}
      - {{regions: {{"*": 100}}}}
    start: {start}
    guardrails: {{min_requests: 200, max_error_rate: 0.02, max_p99_ms: 250}}
"""


def test_with_a_canary_policy_the_rollout_page_shows_the_step_and_shares_and_rolls_back(
    browser, make_repo, live_server, tmp_path
):
    if not admin_token_setting():
        pytest.skip("needs the admin token setting (SERVING_ADMIN_TOKEN) and the rollout API")
    from datetime import datetime, timedelta

    started = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")  # one hour into step 1
    policy = write(tmp_path, "rollout.yaml", CANARY_POLICY.format(start=started))
    server = live_server(
        make_repo(("digits", 1), ("digits", 2)),
        rollout=policy,
        admin_token=ADMIN_TOKEN,
        regions=["campsite-1", "campsite-2"],
    )
    if status_of(server, "/v1/rollouts") in ABSENT:
        pytest.skip("needs the rollout API: GET /v1/rollouts is not served")
    tab = Tab(browser, server.url)
    page = tab.open("/ui/rollouts/digits")

    page.locator("[data-testid=rollout-state]").wait_for()
    assert "canary" in tab.text("[data-testid=rollout-state]")
    current = page.locator("[data-testid=timeline] li[aria-current=step]")
    assert current.count() == 1 and "campsite-1 100.0%" in current.inner_text()
    assert "campsite-1" in tab.text("#rollout-shares") and "100.0%" in tab.text("#rollout-shares")
    tab.shot("rollout-digits-canary")

    page.get_by_role("button", name="Roll back").click()  # no token yet: the page asks for it
    assert page.locator("#token-error").is_visible()
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.fill("#reason", "browser test")
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_response(lambda r: r.url.endswith("/v1/rollouts/digits/rollback")) as answered:
        page.get_by_role("button", name="Roll back").click()

    assert answered.value.status == 200
    assert answered.value.request.headers["authorization"] == f"Bearer {ADMIN_TOKEN}"
    expect(page.locator("[data-testid=rollout-state]")).to_contain_text("rolled_back", timeout=30_000)
    assert "rolled_back" in json.dumps(httpx.get(server.url + "/v1/rollouts").json())
    page.locator("[data-testid=history] tbody tr").first.wait_for()
    assert page.evaluate("sessionStorage.getItem('fastprod.token')") == ADMIN_TOKEN  # this tab's session only
    assert page.evaluate("localStorage.length") == 0
    tab.shot("rollout-digits-rolled-back")
    tab.close()


def test_a_cat_photo_sent_to_digits_is_reviewed_and_live_accuracy_reflects_it(
    browser, make_repo, live_server, tmp_path
):
    if not admin_token_setting():
        pytest.skip("needs the admin token setting (SERVING_ADMIN_TOKEN) that guards the review queue")
    server = live_server(
        make_repo(("digits", 1)),
        admin_token=ADMIN_TOKEN,
        state_path=tmp_path / "state.sqlite",
        prediction_log=True,
        prediction_log_path=tmp_path / "predictions.sqlite",
        prediction_log_images=True,
    )
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    if status_of(server, "/v1/predictions", **auth) in ABSENT:
        pytest.skip("needs the prediction log listing for the review queue: GET /v1/predictions is not served")
    cat = httpx.post(server.url + "/v1/models/digits/predict", content=cat_png(), headers={"Content-Type": "image/png"})
    assert cat.status_code == 200, cat.text
    request_id = cat.json()["request_id"]
    predicted = cat.json()["predictions"][0]["label"]
    correction = "3" if predicted != "3" else "8"
    tab = Tab(browser, server.url)
    page = tab.open("/ui/review?model=digits")
    page.get_by_label("Admin or reviewer token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Use").click()

    item = page.locator(f"#review-queue > li[data-request-id='{request_id}']")
    item.wait_for()
    assert "ood" in item.inner_text().lower() or "out of domain" in item.inner_text().lower()
    tab.shot("review-cat")
    item.focus()
    with page.expect_response(lambda r: r.url.endswith("/v1/feedback")) as answered:
        page.keyboard.press(correction)  # one key press corrects the label

    assert answered.value.ok
    assert answered.value.request.post_data_json == {"request_id": request_id, "label": correction, "source": "review"}
    item.wait_for(state="detached")  # reviewed items leave the queue
    metrics = httpx.get(server.url + "/metrics").text
    assert metric_value(metrics, "serving_feedback_total", model="digits", version="1") == 1
    assert metric_value(metrics, "serving_live_accuracy", model="digits", version="1") == 0.0
    page = tab.open("/ui/monitoring/digits")
    page.locator("[data-testid=live-accuracy]").first.wait_for()
    assert re.search(r"\b0(\.0)?%", tab.text("[data-testid=quality]"))
    tab.shot("monitoring-digits-after-review")
    tab.close()
