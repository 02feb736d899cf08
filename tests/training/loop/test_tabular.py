"""The nightly run on a table: rows from the log become a CSV with the target column, and the gates read it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, install_bundle
from tests.training.loop.conftest import ADMIN, REPORTER
from training.cli import main

COLUMNS = ["island", "sex", "bill_length_mm", "bill_depth_mm", "flipper_length_mm"]


@pytest.fixture(scope="session")
def penguins_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.bundle_factory import build_tabular_bundle

    lib = tmp_path_factory.mktemp("loop-penguins")
    build_tabular_bundle(lib, "penguins", 1)
    return lib


def test_a_tabular_model_learns_from_answered_rows(penguins_library: Path, tmp_path: Path, capsys) -> None:
    from palmerpenguins import load_penguins

    frame = load_penguins().dropna(subset=["species", *COLUMNS]).sample(frac=1.0, random_state=0)
    frame[["species", *COLUMNS]].iloc[:80].to_csv(tmp_path / "valid.csv", index=False)
    repo = tmp_path / "models"
    install_bundle(penguins_library, repo, "penguins", 1)
    server = LiveServer(
        repo,
        prediction_log=True,
        prediction_log_path=tmp_path / "log.sqlite",
        admin_token=ADMIN,
        feedback_token=REPORTER,
        state_path=tmp_path / "state.sqlite",
        watch_interval_s=0.2,
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            day = frame.iloc[80:280]
            for at in range(0, len(day), 25):
                chunk = day.iloc[at : at + 25]
                body = http.post("/v1/models/penguins/predict", json={"rows": chunk[COLUMNS].to_dict("records")}).json()
                for item, species in enumerate(chunk["species"]):
                    http.post(
                        "/v1/feedback",
                        json={"request_id": body["request_id"], "item": item, "label": species},
                        headers={"Authorization": f"Bearer {REPORTER}"},
                    ).raise_for_status()
            http.get("/v1/predictions", params={"limit": 1}, headers={"Authorization": f"Bearer {ADMIN}"})

        code = main(
            [
                "nightly",
                "--model",
                "penguins",
                "--repo",
                str(repo),
                "--log",
                str(tmp_path / "log.sqlite"),
                "--service",
                server.url,
                "--token",
                ADMIN,
                "--valid",
                str(tmp_path / "valid.csv"),
                "--lr",
                "1e-2",
                "--epochs",
                "8",
                "--bs",
                "32",
                "--max-forgetting",
                "0.05",
                "--load-timeout",
                "30",
            ]
        )
    finally:
        server.stop()

    out, err = capsys.readouterr()
    report = json.loads((repo / "penguins" / "nightly").glob("*/report.json").__next__().read_text())
    assert report["data"]["items"] == 200 and report["data"]["input_kind"] == "tabular"
    data = (repo / "penguins" / "nightly" / report["day"] / "data" / "data.csv").read_text().splitlines()
    assert data[0].split(",") == [*COLUMNS, "species"] and len(data) == 201
    assert {g["name"] for g in report["gates"]} == {"forgetting", "improvement"}
    assert report["metrics"]["original validation"]["items"] == 80
    assert code == 0 if report["outcome"] == "exported" else code == 2, err
