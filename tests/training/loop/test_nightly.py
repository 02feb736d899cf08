"""``python -m training nightly``: gates, lineage, idempotence and the lock, against a live service."""

from __future__ import annotations

import json

from bundle.manifest import read_manifest
from tests.training.loop.conftest import nightly_args
from training.cli import main
from training.loop.lock import exclusive


def test_a_model_taught_wrong_labels_is_refused_and_nothing_is_exported(campsites, capsys) -> None:
    world = campsites()
    world.serve_traffic(240, 540)
    world.answer(wrong=True)  # every answer is the next digit: a model that learns them forgets the digits

    code = main(nightly_args(world, "--day", "2026-12-06"))

    err = capsys.readouterr().err
    assert code == 2
    assert "refused, nothing exported" in err and "forgot what it knew" in err
    assert sorted(p.name for p in (world.repo / "digits").iterdir() if p.name.isdigit()) == ["1"]
    report = json.loads((world.repo / "digits" / "nightly" / "2026-12-06" / "report.json").read_text())
    assert report["outcome"] == "refused" and report["new_version"] is None
    forgetting = next(g for g in report["gates"] if g["name"] == "forgetting")
    assert not forgetting["passed"] and forgetting["new"] > forgetting["allowed"]
    assert (world.repo / "digits" / "nightly" / "2026-12-06" / "report.html").read_text().count("refused") >= 1


def test_a_second_run_for_the_same_day_says_so_and_exits_0(campsites, capsys) -> None:
    world = campsites()
    world.serve_traffic(240, 540)
    world.answer(wrong=True)
    assert main(nightly_args(world, "--day", "2026-12-07")) == 2
    capsys.readouterr()

    assert main(nightly_args(world, "--day", "2026-12-07")) == 0

    captured = capsys.readouterr()
    assert "already ran for 2026-12-07 (refused" in captured.err
    assert json.loads(captured.out)["already_done"] is True


def test_a_run_started_while_another_holds_the_lock_stops_with_a_clear_message(campsites, capsys) -> None:
    world = campsites()
    with exclusive(world.repo / "digits" / "nightly" / ".lock", "a nightly run for digits"):
        code = main(nightly_args(world))

    assert code == 2
    assert "a nightly run for digits is already running" in capsys.readouterr().err


def test_no_answers_is_nothing_to_learn_from(campsites, capsys) -> None:
    world = campsites()
    world.serve_traffic(240, 260)
    world.flush()

    assert main(nightly_args(world)) == 2
    assert "nothing to learn from" in capsys.readouterr().err
    assert not (world.repo / "digits" / "2").exists()


def test_lineage_in_the_manifest_names_parent_window_counts_and_gates(campsites, capsys) -> None:
    world = campsites()
    world.serve_traffic(240, 540)
    world.answer()

    code = main(nightly_args(world, "--day", "2026-12-08"))
    out, err = capsys.readouterr()

    assert code == 0, err
    lineage = read_manifest(world.repo / "digits" / "2").training["lineage"]
    assert lineage["parent_version"] == 1 and lineage["items"] == 300
    assert lineage["trained_on"] + lineage["held_out"] == 300 and lineage["held_out"] > 30
    assert set(lineage["data_window"]) == {"since", "until", "of"}
    assert [g["name"] for g in lineage["gates"]] == ["forgetting", "improvement"]
    assert all(g["passed"] for g in lineage["gates"])
    assert lineage["report"] == "nightly/2026-12-08/report.html"
    assert lineage["original_validation"] == str(world.valid)
    assert not [p for p in (world.repo / "digits").iterdir() if p.name.startswith(".export")]


def test_report_compares_slices_regions_and_label_distributions(campsites, capsys) -> None:
    world = campsites()
    world.serve_traffic(240, 540)
    world.answer()
    main(nightly_args(world, "--day", "2026-12-09"))
    capsys.readouterr()

    report = json.loads((world.repo / "digits" / "nightly" / "2026-12-09" / "report.json").read_text())

    slices = report["metrics"]
    assert {
        "new held-out",
        "original validation",
        "new held-out, region campsite-1",
        "new held-out, region campsite-2",
    } <= set(slices)
    shifted = slices["new held-out, region campsite-2"]
    assert shifted["new"]["error_rate"] < shifted["stable"]["error_rate"]  # the inverted digits were learnt
    assert set(report["label_distribution"]["new"]) == set(report["label_distribution"]["original"])
    assert 0 < report["data"]["chosen_by_model"]["share"] <= 1
    assert report["outcome"] == "exported" and report["new_version"] == 2
