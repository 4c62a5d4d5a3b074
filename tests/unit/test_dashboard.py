"""The Grafana dashboard and the alert rules speak only of metrics the services export, and of
each destination on its own.

That each referenced metric really appears in a scrape is checked end to end in
tests/e2e/test_metrics.py; here: the files parse, every panel and rule has a query, and every
metric they name is one docs/metrics.md documents. One deployment feeds many destinations (one
Sentinel workspace each), so: every dashboard query on a destination's metric is filtered by the
`destination` variable, the panels that show whether a destination works break down by it, and
no alert rule adds destinations up (a healthy one would mask a broken one) or loses the label.
"""

from __future__ import annotations

import json

from tests.dashboards import (
    DASHBOARD,
    METRIC,
    ROOT,
    across_destinations,
    aggregations,
    alert_rules,
    dashboard,
    dashboard_panels,
    feed_metrics,
    grouped_by,
    referenced_metrics,
    reported_by,
    selectors,
)

#: How a query keeps to the destinations the variable selects.
VARIABLE = 'destination=~"$destination"'
#: What tells whether a destination works, each on a panel with a line or a tile per destination.
KEY_METRICS = (
    "mati2sentinel_indicators_uploaded_total",
    "mati2sentinel_queue_depth",
    "mati2sentinel_rate_budget_used_ratio",
    "mati2sentinel_upload_throttled_total",
    "mati2sentinel_circuit_state",
    "mati2sentinel_messages_dead_lettered_total",
    "mati2sentinel_ready",
)
#: The panels that add the selected destinations up, by design: what happened to the
#: indicators (pick one destination to see its own), by stage or by reason.
ADDED_UP = {
    "Funnel over the range: received, dropped, forwarded, uploaded, rejected",
    "Drops by reason",
    "Revocations by reason",
}
LABEL = "{{ $labels.destination }}"


def test_alert_rules_cover_what_the_issue_asks() -> None:
    rules = {str(rule["alert"]): rule for rule in alert_rules()}
    for name in (
        "Mati2SentinelCheckpointStuck",
        "Mati2SentinelDeadLettersGrowing",
        "Mati2SentinelCircuitOpen",
        "Mati2SentinelQuotaSaturated",
        "Mati2SentinelDestinationStalled",
    ):
        assert name in rules
    for rule in rules.values():
        assert "summary" in rule["annotations"]  # type: ignore[operator]


def test_dashboard_panels_cover_what_the_issue_asks() -> None:
    titles = " | ".join(
        panel["title"].lower() for panel in json.loads(DASHBOARD.read_text())["panels"]
    )
    for topic in ("funnel", "drops by reason", "revocations by reason", "quota", "429",
                  "queue depth", "lag", "dead letters", "checkpoint", "uploaded per minute",
                  "backlog", "circuit", "ready"):  # fmt: skip
        assert topic in titles, topic


def test_every_referenced_metric_is_documented() -> None:
    documented = set(METRIC.findall((ROOT / "docs" / "metrics.md").read_text()))
    missing = sorted(referenced_metrics() - documented)
    assert not missing, f"dashboard or alerts use undocumented metrics: {missing}"


# ---- per destination: the dashboard ---------------------------------------------------------


def test_the_destination_variable_selects_several_or_all() -> None:
    (variable,) = [v for v in dashboard()["templating"]["list"] if v["name"] == "destination"]
    assert variable["multi"] is True
    assert variable["includeAll"] is True
    # All means every series, also a destination whose processes export nothing right now.
    assert variable.get("allValue") == ".*"
    query = variable["query"]["query"]
    assert query.startswith("label_values("), query
    assert query.endswith(", destination)"), query
    # Listed once a filter or an uploader runs, whichever starts first; the fetcher's label
    # is not a destination it feeds.
    (metric,) = METRIC.findall(query)
    reporters = reported_by()[metric]
    assert "filter" in reporters, reporters
    assert "uploader" in reporters, reporters


def test_the_feed_metrics_are_the_fetchers_own() -> None:
    """The docs' "Reported by" column says which metrics are the one feed's: this guards the
    parse the next test relies on."""
    feed = feed_metrics()
    assert {
        "mati2sentinel_checkpoint_age_seconds",
        "mati2sentinel_last_sync_completed",
        "mati2sentinel_indicators_fetched_total",
        "mati2sentinel_syncs_total",
    } <= feed
    assert not feed & {"mati2sentinel_queue_depth", "mati2sentinel_ready", *KEY_METRICS}


def test_every_query_on_a_destinations_metric_uses_the_variable() -> None:
    """A destination's metric (its filters' and uploaders') is always filtered by the
    variable; the feed's (the one fetcher's, labelled with its own DESTINATION) never is, or
    picking a destination would empty the feed's panels."""
    feed = feed_metrics()
    unfiltered, filtered_feed = [], []
    for panel in dashboard_panels():
        for target in panel["targets"]:
            for metric, matchers in selectors(target["expr"]):
                if metric in feed and VARIABLE in matchers:
                    filtered_feed.append(f"{panel['title']!r} {target['refId']}: {metric}")
                if metric not in feed and VARIABLE not in matchers:
                    unfiltered.append(f"{panel['title']!r} {target['refId']}: {metric}")
    assert not unfiltered, "queries that ignore the destination variable:\n" + "\n".join(unfiltered)
    assert not filtered_feed, "feed queries filtered by destination:\n" + "\n".join(filtered_feed)


def test_the_key_panels_break_down_by_destination() -> None:
    """Uploads, backlog, quota, 429s, circuit, dead letters and readiness each have a panel
    with a line or a tile per destination, named in its legend: a broken one stands out."""
    missing = []
    for metric in KEY_METRICS:
        shown = [
            panel["title"]
            for panel in dashboard_panels()
            for target in panel["targets"]
            if metric in dict(selectors(target["expr"]))
            and "destination" in grouped_by(target["expr"])
            and "{{destination}}" in target["legendFormat"]
        ]
        if not shown:
            missing.append(metric)
    assert not missing, f"no panel shows these per destination: {missing}"


def test_only_the_funnel_and_the_reasons_add_destinations_up() -> None:
    """Every other query keeps the destination in each aggregation: one line per destination
    (or per queue of one), never a sum where a healthy destination hides a broken one."""
    added_up = {}
    for panel in dashboard_panels():
        for target in panel["targets"]:
            problems = across_destinations(target["expr"])
            if problems:
                added_up[panel["title"]] = problems
    assert set(added_up) == ADDED_UP, added_up


def test_the_destination_checks_can_fail() -> None:
    """The helpers the tests above rely on flag what they must."""
    assert across_destinations("sum(rate(m[5m]))")
    assert across_destinations("sum by (reason) (rate(m[5m]))")
    assert across_destinations("max without (destination) (m)")
    assert across_destinations("a > 0 unless on (queue) b")
    assert across_destinations("a > 0 and ignoring (destination) b")
    assert not across_destinations(
        "sum by (destination) (max by (destination, queue) (m)) > 0 unless on (destination) b"
    )
    assert grouped_by("sum by (destination) (max by (destination, queue) (m))") == {"destination"}
    assert grouped_by("histogram_quantile(0.5, sum by (destination, le) (rate(m[1m])))") == {
        "destination"
    }
    assert [a.how for a in aggregations("min_over_time(m[5m]) + count(m)")] == [None]
    assert selectors('rate(m_total{destination=~"$destination"}[1m])') == []
    assert selectors(
        'rate(mati2sentinel_x_total{destination=~"$destination"}[1m]) + mati2sentinel_y'
    ) == [
        ("mati2sentinel_x_total", '{destination=~"$destination"}'),
        ("mati2sentinel_y", ""),
    ]


# ---- per destination: the alert rules ------------------------------------------------------


def test_every_alert_rule_evaluates_per_destination() -> None:
    """Each rule keeps `destination` through every aggregation and join, so it fires for the
    broken destination alone and is labelled with it; its text names it."""
    wrong = {}
    for rule in alert_rules():
        name = str(rule["alert"])
        problems = across_destinations(str(rule["expr"]))
        labels = rule.get("labels") or {}
        assert isinstance(labels, dict)
        if "destination" in labels:
            problems.append("sets the destination label itself")
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        for key in ("summary", "description"):
            if LABEL not in str(annotations.get(key, "")):
                problems.append(f"its {key} does not name {LABEL}")
        if problems:
            wrong[name] = problems
    assert not wrong, wrong
