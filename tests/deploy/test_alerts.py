"""deploy/prometheus: the alert rules pass promtool's checks and unit tests, every alert is shown firing and
staying quiet, and the Kubernetes PrometheusRule carries exactly these rules."""

from __future__ import annotations

import yaml

from tests.deploy_tools import K8S, RULES, RULES_TESTS, run_tool, tool

REQUIRED_ALERTS = {
    "FastprodHighErrorRate",
    "FastprodHighLatencyP99",
    "FastprodQueueSaturated",
    "FastprodDriftHigh",
    "FastprodAutomaticRollback",
    "FastprodLiveAccuracyLow",
    "FastprodCanaryStalled",
}


def alerts() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_rules_pass_promtool_check():
    run_tool(tool("promtool"), "check", "rules", RULES)


def test_rules_pass_their_promtool_unit_tests():
    run_tool(tool("promtool"), "test", "rules", RULES_TESTS.name, cwd=RULES_TESTS.parent)


def test_rules_cover_every_failure_the_operations_guide_names():
    assert REQUIRED_ALERTS <= set(alerts())


def test_every_alert_is_tested_firing_and_staying_quiet():
    cases = yaml.safe_load(RULES_TESTS.read_text())["tests"]
    fired, quiet = set(), set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])

    assert set(alerts()) - fired == set(), "alerts never shown firing"
    assert set(alerts()) - quiet == set(), "alerts never shown quiet on a healthy series"


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section():
    guide = (K8S.parent.parent / "docs" / "operations.md").read_text().lower()
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in {"page", "warning"}, name
        assert rule["annotations"]["summary"], name
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert f"### {name.lower()}" in guide, f"docs/operations.md has no '### {name}' section for #{anchor}"
        assert anchor == name.lower()


def test_prometheusrule_carries_exactly_the_rules_file():
    resource = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text())

    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"] == yaml.safe_load(RULES.read_text()), (
        "deploy/k8s/base/prometheusrule.yaml must carry deploy/prometheus/rules.yaml's groups verbatim"
    )
