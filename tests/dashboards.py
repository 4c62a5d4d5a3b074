"""The Grafana dashboard and the alert rules as files: their queries and the metric names they
use, for the tests that check them against the docs (unit) and against a scrape (e2e)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "mati2sentinel.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
METRIC = re.compile(r"\bmati2sentinel_[a-z0-9_]+")
GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")
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


def grouped_by(expr: str) -> set[str]:
    """The labels ``expr`` aggregates ``by``, which every series it answers must carry: a
    label the metric lacks sums everything into one series without it. ``le`` is left out:
    ``histogram_quantile`` consumes it."""
    labels = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",")}
    return labels - {"", "le"}
