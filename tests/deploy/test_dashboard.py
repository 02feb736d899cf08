"""deploy/grafana: the dashboard is valid Grafana JSON; its queries parse as PromQL and cover the contract's metrics."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.deploy_tools import (
    concrete,
    contract_metric_names,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    metric_names,
    run_tool,
    tool,
)

# What the dashboard must show, as (topic, a metric some panel must query).
TOPICS = {
    "throughput and outcomes": "serving_requests_total",
    "latency percentiles": "serving_request_duration_seconds_bucket",
    "batch size": "serving_batch_size_bucket",
    "queue depth": "serving_queue_depth",
    "drift per feature": "serving_drift_score",
    "OOD rate": "serving_ood_total",
    "canary share per region": "serving_rollout_candidate_share",
    "rollout stage": "serving_rollout_stage",
    "live accuracy": "serving_live_accuracy",
    "estimated accuracy": "serving_estimated_accuracy",
}


def test_every_panel_queries_prometheus_through_the_datasource_variable():
    board = dashboard()
    variables = {v["name"] for v in board["templating"]["list"]}
    panels = list(dashboard_panels())

    assert {"datasource", "model", "region"} <= variables
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["expr"] for t in panel["targets"]), panel["title"]


def test_panels_do_not_overlap():
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        g = panel["gridPos"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert g["x"] + g["w"] <= 24, panel["title"]
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_dashboard_shows_every_topic():
    used = set().union(*(metric_names(e) for e in dashboard_expressions()))

    missing = {topic: metric for topic, metric in TOPICS.items() if metric not in used}
    assert not missing


def test_dashboard_queries_every_contract_metric():
    used = set().union(*(metric_names(e) for e in dashboard_expressions()))
    used_bases = {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for name in used}

    assert contract_metric_names() - used_bases == set()


def test_every_query_is_valid_promql(tmp_path: Path):
    # promtool parses the expressions of a rules file: one recording rule per panel query.
    rules = [{"record": f"dashboard:query_{i}", "expr": concrete(expr)} for i, expr in enumerate(panel_queries())]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    run_tool(tool("promtool"), "check", "rules", path)


def panel_queries() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]
