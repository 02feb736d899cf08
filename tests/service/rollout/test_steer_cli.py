"""``python -m service rollout status|shadow|advance|promote|rollback MODEL`` against a live service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.bundle.test_rollout_client import POLICY, TOKEN

ROOT = Path(__file__).resolve().parents[3]


def rollout(url: str, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SERVING_URL": url, "SERVING_ADMIN_TOKEN": token}
    command = [sys.executable, "-m", "service", "rollout", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def test_an_operator_reads_starts_advances_and_promotes_from_the_command_line(make_repo, live_server, tmp_path):
    (tmp_path / "rollout.yaml").write_text(POLICY)
    repo = make_repo(("digits", 1), ("digits", 2))
    server = live_server(repo, rollout=tmp_path / "rollout.yaml", admin_token=TOKEN)

    status = rollout(server.url, "status", "digits")
    assert status.returncode == 0, status.stderr
    assert "digits: stage off" in status.stdout and "held (pinned only): v2" in status.stdout

    shadow = rollout(server.url, "shadow", "digits", "2", "--template", "course", "--reason", "nightly", "--json")
    assert shadow.returncode == 0, shadow.stderr
    assert json.loads(shadow.stdout)["stage"] == "shadow"

    refused = rollout(server.url, "promote", "digits", token="wrong")
    assert refused.returncode == 1 and "admin token" in refused.stderr

    advanced = rollout(server.url, "advance", "digits", "--reason", "shadow looked fine")
    assert advanced.returncode == 0, advanced.stderr
    assert "stage canary" in advanced.stdout and "plan: step 0 of 3" in advanced.stdout
    assert "candidate share: campsite-1 100%" in advanced.stdout
    assert "last decision: advance by admin" in advanced.stdout and "shadow looked fine" in advanced.stdout
