"""`python -m training` end to end on tiny data, and its errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from bundle.manifest import read_manifest
from training.cli import main
from training.cli.examples import penguins_frame, write_digits_folder

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--epochs", "1", "--lr", "1e-2", "--bs", "32"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_folder(tmp_path_factory.mktemp("data") / "digits", limit=120)


@pytest.fixture(scope="module")
def penguins_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "penguins.csv"
    penguins_frame().to_csv(path, index=False)
    return path


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # reports/ lands here


def run_cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


def test_image_command_trains_and_exports_with_interpretation(digits: Path, tmp_path: Path, capsys) -> None:
    code = run_cli(
        "image",
        digits,
        "--arch",
        "simple_cnn",
        "--size",
        "16",
        "--method",
        "squish",
        "--no-flip",
        *FAST,
        "--name",
        "digits",
        "--out",
        tmp_path / "models",
        "--interpret",
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["bundle"]) == tmp_path / "models" / "digits" / "1"
    assert Path(result["reports"]["confusion_matrix"]).is_file()
    assert Path(result["reports"]["top_losses"]).is_file()


def test_tabular_command_then_finetune_interpret_and_drift(penguins_csv: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "models"
    assert run_cli("tabular", penguins_csv, "--target", "species", *FAST, "--name", "penguins", "--out", out) == 0
    capsys.readouterr()

    assert run_cli("finetune", "--from", out / "penguins" / "1", penguins_csv, "--epochs", "1") == 0
    finetuned = json.loads(capsys.readouterr().out)
    assert finetuned["from_version"] == 1 and Path(finetuned["bundle"]).name == "2"
    assert read_manifest(out / "penguins" / "2").training["finetuned_from"] == 1

    assert run_cli("interpret", out / "penguins" / "2", penguins_csv) == 0
    assert Path(json.loads(capsys.readouterr().out)["confusion_matrix"]).is_file()

    shifted = penguins_frame().assign(body_mass_g=lambda d: d["body_mass_g"] * 2)
    shifted.to_csv(tmp_path / "recent.csv", index=False)
    assert run_cli("drift", out / "penguins" / "2", tmp_path / "recent.csv") == 0
    drift = json.loads(capsys.readouterr().out)
    assert drift["psi"]["body_mass_g"] > 0.25 and drift["psi"]["island"] < 0.1
    assert drift["shifted"] == ["body_mass_g"] and drift["verdict"]["island"] == "stable"


def test_lr_find_command_saves_a_plot_and_reports_its_cost(penguins_csv: Path, capsys) -> None:
    assert run_cli("lr-find", "tabular", penguins_csv, "--target", "species", "--bs", "32") == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert 1e-7 < result["valley"] < 10 and Path(result["plot"]).is_file()
    assert Path(result["plot"]).parent == Path("reports") / "lr_find"  # one file per run, not one shared file
    assert 3 <= result["cost"]["steps"] <= result["cost"]["planned"] == 100
    assert "searching for a learning rate" in captured.err and "steps in" in captured.err


def bad_input_cases(tmp_path: Path, digits: Path) -> dict[str, tuple[list, str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    single = tmp_path / "single" / "seven"
    single.mkdir(parents=True)
    for f in list((digits / "7").glob("*.png"))[:6]:
        (single / f.name).write_bytes(f.read_bytes())
    (tmp_path / "broken.csv").write_bytes(b"\xff\xfe\x00garbage\x00\n\x00")
    pd.DataFrame({"a": [1, 2, 3, 4] * 5, "b": ["x", "y", "z", "w"] * 5}).to_csv(tmp_path / "t.csv", index=False)
    mismatched = tmp_path / "weights.pth"
    torch.save(torchvision.models.resnet34().state_dict(), mismatched)
    return {
        "empty folder": (["image", empty], "no readable images"),
        "single class": (["image", tmp_path / "single"], "class"),
        "unreadable csv": (["tabular", tmp_path / "broken.csv", "--target", "a"], "broken.csv"),
        "missing target": (["tabular", tmp_path / "t.csv", "--target", "price"], "price"),
        "non-numeric regression target": (
            ["tabular", tmp_path / "t.csv", "--target", "b", "--task", "regression"],
            "numeric",
        ),
        "unknown architecture": (["image", digits, "--arch", "resnet9000"], "resnet9000"),
        "weights that do not fit": (["image", digits, "--arch", "resnet18", "--pretrained", mismatched], "weights.pth"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty folder",
        "single class",
        "unreadable csv",
        "missing target",
        "non-numeric regression target",
        "unknown architecture",
        "weights that do not fit",
    ],
)
def test_bad_input_is_a_clear_error_and_leaves_no_bundle(case: str, digits: Path, tmp_path: Path, capsys) -> None:
    args, expected = bad_input_cases(tmp_path, digits)[case]
    out = tmp_path / "models"
    code = (
        run_cli(*args, "--size", "16", *FAST, "--name", "bad", "--out", out)
        if args[0] == "image"
        else run_cli(*args, *FAST, "--name", "bad", "--out", out)
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and expected.lower() in err.lower()
    assert not (out / "bad").exists()


def test_python_dash_m_training_runs_as_a_program() -> None:
    done = subprocess.run([sys.executable, "-m", "training", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("image", "tabular", "lr-find", "finetune", "interpret", "drift", "examples"):
        assert command in done.stdout


def test_examples_command_rejects_unknown_names(capsys) -> None:
    assert run_cli("examples", "mnist") == 2
    assert "mnist" in capsys.readouterr().err


def test_digits_images_are_real_png_files(digits: Path) -> None:
    from PIL import Image

    image = Image.open(next(digits.rglob("*.png")))
    assert image.format == "PNG" and image.size == (8, 8)
    assert np.asarray(image).max() > 100


def test_image_command_without_lr_saves_its_lr_find_plot_beside_the_other_reports(
    digits: Path, tmp_path: Path, capsys
) -> None:
    code = run_cli(
        "image",
        digits,
        "--arch",
        "simple_cnn",
        "--size",
        "16",
        "--method",
        "squish",
        "--no-flip",
        "--epochs",
        "1",
        "--bs",
        "32",
        "--name",
        "digits",
        "--out",
        tmp_path / "models",
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["lr_find_plot"]) == Path("reports") / "digits" / "1" / "lr_find.png"
    assert Path(result["lr_find_plot"]).read_bytes()[:4] == b"\x89PNG"
    assert Path(result["loss_plot"]).parent == Path(result["lr_find_plot"]).parent


def test_interpret_writes_its_own_report_folder_and_prints_the_accuracy(
    penguins_csv: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "models"
    assert (
        run_cli(
            "tabular", penguins_csv, "--target", "species", *FAST, "--name", "penguins", "--out", out, "--interpret"
        )
        == 0
    )
    trained = json.loads(capsys.readouterr().out)["reports"]
    training_matrix = Path(trained["confusion_matrix"]).read_bytes()

    assert run_cli("interpret", out / "penguins" / "1", penguins_csv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert Path(result["confusion_matrix"]).parent.parent == Path("reports") / "penguins" / "1" / "interpret"
    assert Path(trained["confusion_matrix"]).read_bytes() == training_matrix  # the training-time report is kept
    assert 0.0 <= result["accuracy"] <= 1.0 and result["items"] == len(penguins_frame().dropna(subset=["species"]))
    assert f"accuracy {result['accuracy']:.4f}" in captured.err


def test_tabular_defaults_train_small_data_for_enough_optimiser_steps(tmp_path: Path, capsys) -> None:
    from training.cli.examples import carseats_frame
    from training.defaults import MIN_STEPS

    carseats_frame().to_csv(tmp_path / "carseats.csv", index=False)
    assert (
        run_cli(
            "tabular",
            tmp_path / "carseats.csv",
            "--target",
            "Sales",
            "--name",
            "carseats",
            "--out",
            tmp_path / "models",
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    manifest = read_manifest(result["bundle"])
    batches = 320 // 64  # 400 rows, 20% held out, batches of 64
    assert manifest.training["epochs"] * batches >= MIN_STEPS
    assert result["metrics"]["rmse"] < 2.0  # predicting the mean scores about 2.9 on these rows


def test_a_missing_weights_error_names_the_commands_flags(digits: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import urllib.error

    def offline(url: str, *args, **kwargs) -> None:
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache, and no network
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    code = run_cli("image", digits, "--arch", "resnet18", "--size", "16", *FAST, "--name", "x", "--out", tmp_path)
    err = capsys.readouterr().err
    assert code == 2
    assert "--pretrained path/to/resnet18-f37072fd.pth" in err and "--no-pretrained" in err
    assert "pretrained=" not in err


@pytest.mark.parametrize("flag, value", [("--bs", "0"), ("--valid-pct", "1.5"), ("--epochs", "0")])
def test_out_of_range_numbers_are_refused_naming_the_flag(flag: str, value: str, digits: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        run_cli("image", digits, flag, value, "--name", "x")
    assert flag in capsys.readouterr().err
