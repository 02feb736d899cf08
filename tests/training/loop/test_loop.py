"""The whole loop against a live service: the ranger's answers tonight, a shadow candidate tomorrow.

v1 serves; campsite-2's traffic is a shifted slice (inverted digits); answers arrive through the
review queue and the feedback API; the nightly run builds the day's dataset, exports v2 with its
lineage and hands it over in shadow while v1 keeps answering; an admin moves it to the first canary
step from the command line; a nightly over deliberately wrong labels is refused and exports nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bundle.manifest import read_manifest
from tests.training.loop.conftest import ADMIN, nightly_args
from training.cli import main

ROOT = Path(__file__).resolve().parents[3]
COURSE = """
models: {}
templates:
  course:              # shadow, then one campsite for a day, both for a week, then everyone
    shadow: {percent: 100}
    steps:
      - {regions: {campsite-1: 100}, hold: 1d}
      - {regions: {campsite-1: 100, campsite-2: 100}, hold: 7d}
      - {regions: {"*": 100}}
"""


def predict(url: str, region: str, version: int | None = None) -> int:
    from tests.training.loop.conftest import digits, png

    path = "/v1/models/digits/predict" if version is None else f"/v1/models/digits/versions/{version}/predict"
    image = png(digits(0, 1)[0][0])
    answer = httpx.post(url + path, content=image, headers={"Content-Type": "image/png", "X-Region": region})
    assert answer.status_code == 200, answer.text
    return answer.json()["version"]


def test_answers_become_a_shadow_candidate_an_admin_advances_and_wrong_answers_are_refused(
    campsites, tmp_path: Path, capsys
) -> None:
    (tmp_path / "rollout.yaml").write_text(COURSE)
    world = campsites(rollout=tmp_path / "rollout.yaml", rollout_tick_s=0.05, rollout_poll_s=0.1)
    assert predict(world.url, "campsite-2") == 1

    world.serve_traffic(240, 540)  # half of it from campsite-2, inverted
    answered = world.answer()
    assert answered["review"] > 0 and answered["feedback"] > 0
    nightly = nightly_args(world, "--template", "course")

    assert main([*nightly, "--day", "2026-12-06"]) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)

    assert result["outcome"] == "exported" and result["new_version"] == 2 and result["stable_version"] == 1
    assert result["rollout"]["stage"] == "shadow" and result["rollout"]["candidate"] == 2
    lineage = read_manifest(world.repo / "digits" / "2").training["lineage"]
    assert lineage["parent_version"] == 1 and lineage["items"] == 300
    assert predict(world.url, "campsite-1") == 1 and predict(world.url, "campsite-2") == 1  # v1 keeps answering
    assert predict(world.url, "campsite-2", version=2) == 2  # v2 is loaded and reachable pinned

    advanced = subprocess.run(
        [sys.executable, "-m", "service", "rollout", "advance", "digits", "--url", world.url, "--token", ADMIN],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert advanced.returncode == 0, advanced.stderr
    state = httpx.get(f"{world.url}/v1/rollouts/digits").json()
    assert state["stage"] == "canary" and state["candidate"] == 2
    assert predict(world.url, "campsite-1") == 2 and predict(world.url, "campsite-2") == 1  # the first step

    since = time.time()
    world.serve_traffic(540, 840)
    world.answer(wrong=True)
    window = f"{time.time() - since + 1:.0f}"  # only the wrong answers

    assert main([*nightly, "--day", "2026-12-07", "--since", window]) == 2
    assert "refused, nothing exported" in capsys.readouterr().err
    assert sorted(p.name for p in (world.repo / "digits").iterdir() if p.name.isdigit()) == ["1", "2"]
