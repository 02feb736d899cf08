"""The web pages' handlers over plain HTTP (Starlette's TestClient, real bundles): what each page is sent with.

What the browser then does with them is in test_ui_browser.py.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[3] / "service" / "ui" / "static"
TEMPLATES = STATIC.parent / "templates"


class Page(HTMLParser):
    """The elements of an HTML page, as (tag, attributes) in document order, plus its visible text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.texts: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.texts))

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [
            a for t, a in self.elements if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def one(self, tag: str, **attrs: str) -> dict[str, str]:
        found = self.find(tag, **attrs)
        assert len(found) == 1, f"expected one <{tag} {attrs}>, found {len(found)}"
        return found[0]

    def label_for(self, control_id: str) -> bool:
        return bool(self.find("label", **{"for": control_id}))


def get_page(client, path: str, status: int = 200) -> Page:
    response = client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    return Page(response.text)


def page_data(client, path: str) -> dict:
    html = client.get(path).text
    match = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', html, re.S)
    assert match, "the page carries no page-data block"
    return json.loads(match.group(1))


# -- the root and the model list ---------------------------------------------------------------


def test_the_root_redirects_to_the_pages(client):
    response = client.get("/", follow_redirects=False)

    assert response.status_code == 302
    assert response.headers["location"] == "/ui"


def test_the_model_list_links_every_served_model_with_its_task_versions_and_state(client):
    page = get_page(client, "/ui")
    served = client.get("/v1/models").json()["models"]

    for model in served:
        assert page.find("a", href=f"/ui/models/{model['name']}"), model["name"]
    assert "digits" in page.text and "classification" in page.text and "tabular" in page.text
    assert "serving" in page.text
    assert "1, 2" in page.text  # digits' versions


def test_every_page_forbids_anything_not_from_this_service(client):
    for path in ("/ui", "/ui/models/digits", "/ui/rollouts/digits", "/ui/monitoring/digits", "/ui/review"):
        response = client.get(path)
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy, path
        assert response.headers["x-content-type-options"] == "nosniff"


def test_pages_link_only_to_this_service(client):
    for path in (
        "/ui",
        "/ui/models/digits",
        "/ui/models/penguins",
        "/ui/rollouts/digits",
        "/ui/monitoring/digits",
        "/ui/review",
    ):
        page = get_page(client, path)
        for tag, attr in (("a", "href"), ("link", "href"), ("script", "src"), ("img", "src"), ("form", "action")):
            for element in page.find(tag):
                url = element.get(attr, "")
                assert not re.match(r"^(https?:)?//", url), f"{path}: <{tag} {attr}={url!r}>"


def test_static_files_reference_nothing_outside_the_service():
    for path in STATIC.iterdir():
        assert not re.search(r"https?://", path.read_text()), path.name
    assert "url(" not in (STATIC / "ui.css").read_text()  # no fonts or images from anywhere
    script = (STATIC / "ui.js").read_text()
    assert re.findall(r"\bfetch\([^,]*", script) == ["fetch(ROOT + path"]  # one way out: this service's API


# -- the model card ----------------------------------------------------------------------------


def test_the_model_card_shows_each_version_with_metrics_parity_and_training(client):
    page = get_page(client, "/ui/models/digits")
    described = client.get("/v1/models/digits").json()

    assert "Version 1" in page.text and "Version 2" in page.text
    for version in described["versions"]:
        for metric in version["metrics"]:
            assert metric in page.text
        assert version["parity"] is not None
        assert "Largest absolute difference" in page.text
        assert version["training"]["arch"] in page.text
    assert "Training items" in page.text and "Validation items" in page.text  # data sizes from the manifest
    assert "16 × 16 pixels" in page.text  # the input schema


def test_the_card_data_comes_from_the_json_api(client):
    described = client.get("/v1/models/digits").json()

    version = described["versions"][0]
    assert {"max_abs_diff", "max_rel_diff", "rtol", "atol", "batch_sizes"} <= set(version["parity"])
    assert version["training"]["n_train"] > 0 and version["training"]["n_valid"] > 0


def test_an_image_models_try_it_form_posts_a_file_to_the_predict_api(client):
    page = get_page(client, "/ui/models/digits")

    form = page.one("form", id="try-form")
    assert form["data-kind"] == "image"
    assert form["action"] == "/v1/models/digits/predict"  # without JavaScript the browser posts it as is
    assert form["enctype"] == "multipart/form-data"
    file_input = page.one("input", id="try-file")
    assert file_input["type"] == "file" and file_input["name"] == "file"
    assert page.label_for("try-file")
    assert page.one("p", id="try-file-error")["role"] == "alert"
    versions = [o.get("value") for o in page.find("option") if o.get("value", "x").isdigit()]
    assert versions == ["1", "2"]  # pin a version, or leave it to routing


def test_a_tabular_models_form_is_generated_from_the_input_schema(client):
    page = get_page(client, "/ui/models/penguins")
    schema = client.get("/v1/models/penguins").json()["input"]

    assert page.one("form", id="try-form")["data-kind"] == "tabular"
    for column in schema["columns"]:
        (control,) = [a for t, a in page.elements if t in ("select", "input") and a.get("name") == column["name"]]
        assert page.label_for(control["id"]), column["name"]
        if column["kind"] == "categorical":
            assert control["data-kind"] == "categorical"
        else:
            assert control["type"] == "number" and control["step"] == "any"
    html = client.get("/ui/models/penguins").text
    island = re.search(r'name="island".*?</select>', html, re.S).group(0)
    assert re.findall(r"<option(?: value=\"\")?>([^<]*)</option>", island) == [
        "(missing)",
        "Biscoe",
        "Dream",
        "Torgersen",
    ]
    assert "#na#" not in html  # the vocabulary's missing level is the "(missing)" choice
    assert page.one("input", id="try-csv")["type"] == "file"
    assert page.label_for("try-csv")


def test_a_model_without_categories_gets_only_number_fields(client):
    page = get_page(client, "/ui/models/measures")

    assert not page.find("select", data_kind="categorical")
    assert len(page.find("input", data_kind="continuous")) == 3


def test_the_card_carries_what_the_script_needs_as_json(client):
    data = page_data(client, "/ui/models/penguins")

    assert data["name"] == "penguins"
    assert data["input_kind"] == "tabular"
    assert data["classes"] == client.get("/v1/models/penguins").json()["classes"]


@pytest.mark.parametrize("path", ["/ui/models/nope", "/ui/rollouts/nope", "/ui/monitoring/nope"])
def test_an_unknown_model_gets_a_404_page_listing_the_served_ones(client, path):
    page = get_page(client, path, status=404)

    assert "nope" in page.text and "Model not found" in page.text
    assert page.find("a", href="/ui/models/digits")
    assert "Traceback" not in page.text


def test_model_names_are_escaped():
    from service.ui.pages import WebPages

    class OneModelAPI:
        def model_list(self):
            return [{"name": "<b>x</b>"}]

        def model_document(self, name):
            return {"name": name, "state": "serving", "versions": [], "refused": [], "rollout": None}

    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    client = TestClient(Starlette(routes=WebPages(OneModelAPI()).routes()))
    html = client.get("/ui").text

    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


# -- the pages the browser fills ---------------------------------------------------------------


def test_the_rollout_page_is_a_shell_the_script_fills_from_the_rollout_api(client):
    page = get_page(client, "/ui/rollouts/digits")

    for section in (
        "rollout-state",
        "rollout-plan",
        "rollout-shares",
        "rollout-guardrails",
        "rollout-decisions",
        "rollout-history",
    ):
        assert page.one("div", id=section)
    assert page.one("body")["data-page"] == "rollout"
    assert page.find("a", href="/v1/rollouts") and page.find("a", href="/v1/rollouts/digits/history")
    assert page.one("button", id="rollback") and page.one("button", id="promote")
    token = page.one("input", id="token")
    assert token["type"] == "password" and page.label_for("token")
    assert page_data(client, "/ui/rollouts/digits") == {"name": "digits", "versions": [1, 2], "reports": {}}


def test_the_monitoring_page_filters_by_version_and_region(client):
    page = get_page(client, "/ui/monitoring/digits")

    assert page.one("body")["data-page"] == "monitoring"
    assert page.find("a", href="/v1/models/digits/drift")
    assert page.label_for("monitor-version") and page.label_for("monitor-region")
    assert [o["value"] for o in page.find("option") if o.get("value")] == ["1", "2"]
    for section in ("monitor-drift", "monitor-quality", "monitor-traffic"):
        assert page.one("div", id=section)


def test_the_review_page_filters_by_model_version_region_and_reason(client):
    page = get_page(client, "/ui/review?model=penguins")

    assert page.one("body")["data-page"] == "review"
    for control in ("review-model", "review-version", "review-region", "review-reason"):
        assert page.label_for(control)
    assert page.one("option", selected="") == {"selected": ""}  # the model asked for is preselected
    assert "penguins" in re.search(
        r"<option selected>([^<]*)</option>", client.get("/ui/review?model=penguins").text
    ).group(1)
    reasons = [
        o["value"] for o in page.find("option") if o.get("value") in ("ood", "low_confidence", "disagreement", "sample")
    ]
    assert reasons == ["ood", "low_confidence", "disagreement", "sample"]
    assert page.label_for("token")


# -- assets ------------------------------------------------------------------------------------


def test_the_stylesheet_and_script_are_served_with_their_types(client):
    page = get_page(client, "/ui")
    (css,) = [a["href"] for a in page.find("link", rel="stylesheet")]
    (js,) = [a["src"] for a in page.find("script") if a.get("src")]

    assert css.startswith("/ui/static/ui.css?v=") and js.startswith("/ui/static/ui.js?v=")
    assert client.get(css).headers["content-type"].startswith("text/css")
    assert "javascript" in client.get(js).headers["content-type"]
    assert client.get("/ui/static/nope.js").status_code == 404


def test_the_templates_hold_no_inline_script_or_style():
    for path in TEMPLATES.iterdir():
        html = path.read_text()
        assert not re.search(r"<script(?![^>]*(src=|type=\"application/json\"))", html), path.name
        assert " style=" not in html and "<style" not in html, path.name
        assert not re.search(r"\son[a-z]+=", html), path.name  # no inline event handlers (the CSP forbids them)
