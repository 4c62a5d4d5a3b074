"""The Grafana dashboard and the alert rules speak only of metrics the services export.

That each referenced metric really appears in a scrape is checked end to end in
tests/e2e/test_metrics.py; here: the files parse, every panel and rule has a query, and every
metric they name is one docs/metrics.md documents.
"""

from __future__ import annotations

import json

from tests.dashboards import DASHBOARD, METRIC, ROOT, alert_rules, referenced_metrics


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
    for topic in ("funnel", "drops by reason", "revocations by reason", "quota", "429",
                  "queue depth", "lag", "dead letters", "checkpoint"):  # fmt: skip
        assert topic in titles, topic


def test_every_referenced_metric_is_documented() -> None:
    documented = set(METRIC.findall((ROOT / "docs" / "metrics.md").read_text()))
    missing = sorted(referenced_metrics() - documented)
    assert not missing, f"dashboard or alerts use undocumented metrics: {missing}"
