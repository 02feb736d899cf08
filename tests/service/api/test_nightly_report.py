"""A version's nightly report: served read-only from the model's folder, linked from the model document and the
rollout page; nothing outside the folder is ever served."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import serve

REPORT = "<!doctype html><title>nightly digits 2026-12-06</title><h1>Nightly run of digits</h1>"
SHADOW = """
models:
  digits:
    stable: 1
    candidate: 2
    stage: shadow
    shadow: {percent: 100}
    steps:
      - {regions: {"*": 100}}
"""


def name_report(bundle: Path, report: str) -> None:
    """Give the bundle's manifest the lineage a nightly run writes, naming ``report``."""
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["training"] = {**manifest.get("training", {}), "lineage": {"parent_version": 1, "report": report}}
    manifest_path.write_text(json.dumps(manifest))


def served_with_reports(make_repo: Any, tmp_path: Path, v1_report: str) -> Any:
    """digits v1 stable naming ``v1_report``, v2 a candidate in shadow whose nightly report is in the model's folder."""
    repo = make_repo(("digits", 1), ("digits", 2))
    night = repo / "digits" / "nightly" / "2026-12-06"
    night.mkdir(parents=True)
    (night / "report.html").write_text(REPORT)
    (repo / "secret.html").write_text("not a report")
    name_report(repo / "digits" / "2", "nightly/2026-12-06/report.html")
    name_report(repo / "digits" / "1", v1_report)
    (tmp_path / "rollout.yaml").write_text(SHADOW)
    return serve(repo, rollout=tmp_path / "rollout.yaml")


def test_the_report_a_versions_lineage_names_is_served_as_html(make_repo, tmp_path: Path):
    with served_with_reports(make_repo, tmp_path, "../secret.html") as client:
        response = client.get("/v1/models/digits/versions/2/report")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html") and response.text == REPORT
    assert "script-src" not in response.headers["content-security-policy"]  # default-src 'none': nothing runs


def test_a_report_named_outside_the_models_folder_is_never_served(make_repo, tmp_path: Path):
    for outside in ("../secret.html", str(tmp_path / "repo-0" / "secret.html"), "nightly/../../secret.html"):
        with served_with_reports(make_repo, tmp_path, outside) as client:
            refused = client.get("/v1/models/digits/versions/1/report")
            assert refused.status_code == 404 and "not a report" not in refused.text, outside
            assert client.get("/v1/models/digits").json()["versions"][0]["nightly_report"] is None


def test_no_report_unknown_versions_and_paths_in_the_url_are_404(make_repo, tmp_path: Path):
    repo = make_repo(("digits", 1))
    with serve(repo) as client:
        assert client.get("/v1/models/digits/versions/1/report").status_code == 404  # no lineage
        assert client.get("/v1/models/digits/versions/7/report").status_code == 404
        assert client.get("/v1/models/nope/versions/1/report").status_code == 404
        assert client.get("/v1/models/digits/versions/..%2F..%2Fsecret.html/report").status_code == 404
        assert client.get("/v1/models/digits").json()["versions"][0]["nightly_report"] is None


def test_the_model_document_and_the_rollout_page_link_the_candidates_report(make_repo, tmp_path: Path):
    with served_with_reports(make_repo, tmp_path, "../secret.html") as client:
        versions = client.get("/v1/models/digits").json()["versions"]
        html = client.get("/ui/rollouts/digits").text

    assert [v["nightly_report"] for v in versions] == [None, "/v1/models/digits/versions/2/report"]
    assert 'href="/v1/models/digits/versions/2/report">nightly report of v2</a> (candidate)' in html
    assert '"reports": {"2": "/v1/models/digits/versions/2/report"}' in html
    assert "versions/1/report" not in html
