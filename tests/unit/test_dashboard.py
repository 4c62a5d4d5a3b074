"""The Grafana dashboard and the alert rules speak only of metrics the services export.

That each referenced metric really appears in a scrape is checked end to end in
tests/e2e/test_metrics.py; here: the files parse, every panel and rule has a query, and every
metric they name is one docs/metrics.md documents.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "mati2sentinel.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
METRIC = re.compile(r"\bmati2sentinel_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def dashboard_queries() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in data["panels"]:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        queries += [target["expr"] for target in panel["targets"]]
    return queries


def alert_rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def referenced_metrics() -> set[str]:
    """Every metric name the dashboard and the alert rules use, histogram suffixes removed."""
    exprs = dashboard_queries() + [str(rule["expr"]) for rule in alert_rules()]
    names = set()
    for expr in exprs:
        for name in METRIC.findall(expr):
            for suffix in HISTOGRAM_SUFFIXES:
                if name.endswith(suffix) and "duration" in name:
                    name = name.removesuffix(suffix)
            names.add(name)
    return names


def test_alert_rules_cover_what_the_issue_asks() -> None:
    rules = {str(rule["alert"]): rule for rule in alert_rules()}
    for name in (
        "Mati2SentinelCheckpointStuck",
        "Mati2SentinelDeadLettersGrowing",
        "Mati2SentinelCircuitOpen",
        "Mati2SentinelQuotaSaturated",
    ):
        assert name in rules
    for rule in rules.values():
        assert "summary" in rule["annotations"]  # type: ignore[operator]


def test_dashboard_panels_cover_what_the_issue_asks() -> None:
    titles = " | ".join(
        panel["title"].lower() for panel in json.loads(DASHBOARD.read_text())["panels"]
    )
    for topic in ("funnel", "drops by reason", "quota", "429", "queue depth", "lag",
                  "dead letters", "checkpoint"):  # fmt: skip
        assert topic in titles, topic


def test_every_referenced_metric_is_documented() -> None:
    documented = set(METRIC.findall((ROOT / "docs" / "metrics.md").read_text()))
    missing = sorted(referenced_metrics() - documented)
    assert not missing, f"dashboard or alerts use undocumented metrics: {missing}"
