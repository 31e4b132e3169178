"""docs/monitoring: the alert rules and the Grafana dashboard use the fixed metric names, and only them."""
import json
import os
import re

import yaml

from agentops_host import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, "docs", "monitoring")
NAME = re.compile(r"\bagentops_[a-z_]+\b")


def _exprs_of_dashboard():
    with open(os.path.join(DOCS, "agentops-grafana-dashboard.json"), encoding="utf-8") as handle:
        dashboard = json.load(handle)
    assert dashboard["panels"] and dashboard["uid"] == "agentops-fleet"
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def _rules():
    with open(os.path.join(DOCS, "agentops-alerts.rules.yml"), encoding="utf-8") as handle:
        return [rule for group in yaml.safe_load(handle)["groups"] for rule in group["rules"]]


def test_metric_names_are_the_fixed_ones():
    used = set()
    for expr in _exprs_of_dashboard() + [rule["expr"] for rule in _rules()]:
        used.update(NAME.findall(expr))
    assert used <= set(metrics.NAMES), used - set(metrics.NAMES)
    assert set(metrics.NAMES) <= used | {"agentops_heartbeat_duration_seconds"}, set(metrics.NAMES) - used


def test_rules_cover_stale_heartbeat_agent_down_and_no_progress():
    rules = dict((rule["alert"], rule) for rule in _rules())
    assert "agentops_heartbeat_last_run_timestamp_seconds" in rules["AgentopsHeartbeatStale"]["expr"]
    assert rules["AgentopsAgentDown"]["expr"].startswith("agentops_agent_up == 0")
    assert "agentops_agent_progress_age_seconds" in rules["AgentopsAgentNoProgress"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("critical", "warning") and rule["annotations"]["summary"]


def test_readme_lists_every_metric():
    with open(os.path.join(DOCS, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    for name in metrics.NAMES:
        assert "`%s`" % name in text, name
