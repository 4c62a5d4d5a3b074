"""The Grafana dashboard and the alert rules as files: their queries and the metric names they
use, for the tests that check them against the docs (unit) and against a scrape (e2e)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "mati2sentinel.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
METRICS_DOC = ROOT / "docs" / "metrics.md"
METRIC = re.compile(r"\bmati2sentinel_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
#: A metric and its label matchers, if any.
SELECTOR = re.compile(r"\b(mati2sentinel_[a-z0-9_]+)\s*(\{[^}]*\})?")
#: An aggregation, its ``by``/``without`` clause if written before the argument, and the
#: opening parenthesis of its argument (``sum(x) by (l)`` reads as an aggregation without one).
AGGREGATION = re.compile(
    r"\b(?P<op>sum|min|max|avg|group|count|count_values|stddev|stdvar|topk|bottomk|quantile)\s*"
    r"(?:(?P<how>by|without)\s*\((?P<labels>[^)]*)\)\s*)?\("
)
#: Vector matching: ``on (...)`` or ``ignoring (...)``.
MATCHING = re.compile(r"\b(?P<how>on|ignoring)\s*\((?P<labels>[^)]*)\)")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    """The panels that query (not the rows), each with at least one target."""
    panels = []
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        panels.append(panel)
    return panels


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


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


def reported_by() -> dict[str, str]:
    """Each metric docs/metrics.md lists in a table with a "Reported by" column, and that cell
    (``fetcher``, ``uploader``, ``filter, uploader``, ``every service``...)."""
    reporters: dict[str, str] = {}
    column: int | None = None
    for line in METRICS_DOC.read_text().splitlines():
        if not line.startswith("|"):
            column = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if column is None:  # the header row
            column = cells.index("Reported by") if "Reported by" in cells else -1
            continue
        if column < 0 or all(set(cell) <= set("-: ") for cell in cells):
            continue
        for name in METRIC.findall(cells[0]):
            reporters[name] = cells[column]
    return reporters


def feed_metrics() -> set[str]:
    """The metrics only the fetcher reports: the one feed of a deployment, labelled with the
    fetcher's own ``DESTINATION`` rather than with each destination it feeds."""
    return {name for name, by in reported_by().items() if by == "fetcher"}


def selectors(expr: str) -> list[tuple[str, str]]:
    """Each metric ``expr`` selects, with its label matchers (``""``: none)."""
    return [(match[1], match[2] or "") for match in SELECTOR.finditer(expr)]


@dataclass(frozen=True, slots=True)
class Aggregation:
    """One aggregation of an expression: ``how`` is ``by``, ``without`` or None, and
    ``start``/``end`` span it from its operator to its argument's closing parenthesis."""

    text: str
    how: str | None
    labels: frozenset[str]
    start: int
    end: int


def _closing(expr: str, opening: int) -> int:
    depth = 0
    for index in range(opening, len(expr)):
        if expr[index] == "(":
            depth += 1
        elif expr[index] == ")":
            depth -= 1
            if depth == 0:
                return index
    raise AssertionError(f"unbalanced parentheses in {expr!r}")


def aggregations(expr: str) -> list[Aggregation]:
    found = []
    for match in AGGREGATION.finditer(expr):
        labels = frozenset(label.strip() for label in (match["labels"] or "").split(","))
        end = _closing(expr, match.end() - 1) + 1
        found.append(
            Aggregation(expr[match.start() : end], match["how"], labels - {""}, match.start(), end)
        )
    return found


def grouped_by(expr: str) -> set[str]:
    """The labels the outermost aggregations of ``expr`` keep, which every series it answers
    must carry: a label the metric lacks sums everything into one series without it. An inner
    aggregation's labels are not asked of the answer (``sum by (d) (max by (d, q) (...))``
    answers series with ``d`` only). ``le`` is left out: ``histogram_quantile`` consumes it."""
    found = aggregations(expr)
    outermost = [a for a in found if not any(o.start < a.start < o.end for o in found)]
    return {label for a in outermost if a.how == "by" for label in a.labels} - {"le"}


def across_destinations(expr: str) -> list[str]:
    """The parts of ``expr`` that add destinations up or match series across them: every
    aggregation must keep ``destination`` (``by (destination, ...)``, or ``without`` labels
    other than it), every ``on (...)`` must match on it and no ``ignoring (...)`` drop it."""
    problems = []
    for found in aggregations(expr):
        if found.how is None:
            problems.append(f"{found.text} (no by clause)")
        elif (found.how == "by") != ("destination" in found.labels):
            problems.append(f"{found.text} ({found.how} {sorted(found.labels)})")
    for match in MATCHING.finditer(expr):
        labels = {label.strip() for label in match["labels"].split(",")}
        if (match["how"] == "on") != ("destination" in labels):
            problems.append(match[0])
    return problems
