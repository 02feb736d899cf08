"""``python -m training dataset``: the labelled items of a live service's log, as fine-tuning reads them."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from training.cli import main


def records_answer_source(log: Path) -> bool:
    import sqlite3

    with sqlite3.connect(log) as db:
        return "source" in {row[1] for row in db.execute("PRAGMA table_info(monitoring_feedback)")}


def test_dataset_writes_class_folders_of_the_logged_images_with_a_summary(campsites, tmp_path: Path, capsys) -> None:
    world = campsites()
    world.serve_traffic(240, 400)
    answered = world.answer()
    out = tmp_path / "day"

    assert (
        main(["dataset", "--log", str(world.log), "--model", "digits", "--repo", str(world.repo), "--out", str(out)])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)

    assert summary["items"] == 160 == sum(summary["per_class"].values())
    if records_answer_source(world.log):
        assert summary["per_source"] == {k: v for k, v in answered.items() if v}
    else:  # until the log records who answered: an item the review queue listed counts as the reviewer's
        assert sum(summary["per_source"].values()) == 160 and set(summary["per_source"]) <= {"review", "feedback"}
    assert summary["per_region"] == {"campsite-1": 80, "campsite-2": 80}
    assert summary["served_by_versions"] == {"1": 160}
    assert 0 < summary["chosen_by_model"]["share"] <= 1  # the review queue's items are the model's own choice
    assert summary["chosen_by_model"]["items"] >= answered["review"]
    images = sorted(out.rglob("*.png"))
    assert len(images) == 160 and {p.parent.name for p in images} == set(summary["per_class"])
    assert Image.open(images[0]).size == (8, 8)  # the bytes the client sent, as it sent them
    assert json.loads((out / "summary.json").read_text()) == summary
    assert len((out / "items.csv").read_text().splitlines()) == 161


def test_dataset_with_no_answers_in_the_window_exits_non_zero_and_says_why(campsites, tmp_path: Path, capsys) -> None:
    world = campsites()
    world.serve_traffic(240, 260)  # predictions, but nobody has answered them
    world.flush()

    code = main(
        [
            "dataset",
            "--log",
            str(world.log),
            "--model",
            "digits",
            "--repo",
            str(world.repo),
            "--out",
            str(tmp_path / "day"),
        ]
    )

    assert code == 2
    err = capsys.readouterr().err
    assert "nothing to learn from: no answers from review, feedback for digits" in err
    assert not (tmp_path / "day").exists()


def test_dataset_never_uses_the_models_own_predictions_unless_asked(campsites, tmp_path: Path, capsys) -> None:
    world = campsites()
    world.serve_traffic(240, 300)
    world.answer()
    world.serve_traffic(300, 340)  # served, never answered
    world.flush()
    base = ["dataset", "--log", str(world.log), "--model", "digits", "--repo", str(world.repo)]

    assert main([*base, "--out", str(tmp_path / "people")]) == 0
    people = json.loads(capsys.readouterr().out)
    assert main([*base, "--out", str(tmp_path / "all"), "--sources", "review,feedback,predictions"]) == 0
    everything = json.loads(capsys.readouterr().out)

    assert people["items"] == 60 and "predictions" not in people["per_source"]
    assert everything["items"] == 100 and everything["per_source"]["predictions"] == 40


def test_dataset_reads_the_shared_postgresql_log(campsites, postgres_url: str, tmp_path: Path, capsys) -> None:
    world = campsites(state_url=postgres_url)
    world.serve_traffic(240, 300)
    world.answer()

    assert (
        main(
            [
                "dataset",
                "--log",
                postgres_url,
                "--model",
                "digits",
                "--repo",
                str(world.repo),
                "--out",
                str(tmp_path / "day"),
            ]
        )
        == 0
    )

    summary = json.loads(capsys.readouterr().out)
    assert summary["items"] == 60 and len(list((tmp_path / "day").rglob("*.png"))) == 60
