"""The Grafana dashboard against a real Prometheus: every panel's query returns data after a
demo-sized sync and a second one that revokes what MATI reported again failing, and the
funnel, revocation and sync panels say what happened; the per-destination lines and tiles
carry the destination's label.

Debian's ``prometheus`` (``scripts/ensure-prometheus.sh``) runs on a free loopback port with a
temporary configuration and storage, scrapes the four service processes (two uploaders, so the
queries aggregate replicas as in production) every second, and loads the alert rules. Each
target of ``deploy/grafana/mati2sentinel.json`` is then run the way Grafana runs it: template
variables substituted as Grafana does (``$destination`` from the variable's own query,
``$__rate_interval`` from the scrape interval, ``$__range`` the run's span), instant targets as
instant queries, the others as range queries over the run.

Prometheus must see every counter at 0 before it moves: ``increase()`` cannot count what a
series held when it was first scraped. The uploaders and the filter idle until work arrives;
the simulated MATI holds the fetcher's first page until Prometheus has scraped the fetcher.
The second sync is the fetcher's own sync at start, restarted on the same port (a counter
reset, which ``increase()`` and ``rate()`` follow), its first page held the same way.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harness.pipeline import DESTINATION, Pipeline, mati_properties
from services.cli.redis_server import free_port
from services.cli.supervisor import Child
from services.fetcher.sync import Outcome
from shared.core.filters import DropReason
from simulators.feed import Feed
from tests.dashboards import DASHBOARD, grouped_by
from tests.e2e.pipeline_tools import PipelineFactory, log_events, synced_and_drained
from tests.e2e.prometheus_rig import SCRAPE_S, SERVICES, Json, Prometheus, running
from tests.helpers import wait_for
from tests.prometheus_tools import ensure_prometheus

#: The range queries' step, Grafana's $__interval: one scrape interval.
STEP_S = SCRAPE_S
#: Grafana's $__rate_interval: max($__interval + scrape interval, 4 × scrape interval).
RATE_INTERVAL = f"{max(STEP_S + SCRAPE_S, 4 * SCRAPE_S)}s"
#: How long the simulated MATI holds the fetcher's first page: longer than a scrape interval,
#: so Prometheus sees the fetcher's counters at 0 before they move.
FIRST_PAGE_HOLD_S = 4 * SCRAPE_S

#: How long each simulated upload takes: the uploads' latency histogram then moves across
#: scrapes (the run makes some thirty calls), as it does in production.
UPLOAD_LATENCY_S = 0.4

#: What MATI changes in uploaded indicators before the second sync (the filter reason each
#: then fails with): how many indicators, and the change.
REVOKING: dict[str, tuple[int, dict[str, Any]]] = {
    "low_confidence": (2, {"mscore": 10}),
    "osint": (1, {"osint_only": True}),
}
REVOKED_PANEL = "Revocations by reason"


@pytest.fixture
def prometheus_binary() -> str:
    return ensure_prometheus("prometheus")


async def start_on_port(pipeline: Pipeline, label: str, port: int) -> Child:
    """Start a service (by its label) with its probes and /metrics on ``port``, where the
    Prometheus configuration already expects it."""
    processes = pipeline.processes
    assert processes is not None
    before = processes.env["HEALTH_PORT"]
    processes.env["HEALTH_PORT"] = str(port)
    try:
        return await pipeline.start_service(SERVICES[label], label=label)
    finally:
        processes.env["HEALTH_PORT"] = before


# ---- the dashboard, as Grafana runs it ------------------------------------------------------


def panels() -> list[Json]:
    found: list[Json] = json.loads(DASHBOARD.read_text())["panels"]
    return [panel for panel in found if panel["type"] != "row"]


def variable_query(name: str) -> str:
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if variable["name"] == name:
            query: str = variable["query"]["query"]
            return query
    raise AssertionError(f"no template variable {name}")


def grafana_regex(values: list[str]) -> str:
    """A multi-value variable in a regex matcher, as Grafana formats it (a destination is
    ``[a-z0-9-]``: nothing to escape)."""
    assert all(re.fullmatch(r"[a-z0-9-]+", v) for v in values), values
    return values[0] if len(values) == 1 else "(" + "|".join(values) + ")"


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in variables, f"template variable ${name} in {expr!r} is not known here"
        return variables[name]

    substituted = re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)
    assert "$" not in substituted, substituted
    return substituted


def finite_values(result: list[Json]) -> list[float]:
    """Every finite sample of an instant or range query's result."""
    values = []
    for series in result:
        samples = series["values"] if "values" in series else [series["value"]]
        values += [float(v) for _, v in samples if math.isfinite(float(v))]
    return values


async def run_target(
    prometheus: Prometheus, expr: str, *, instant: bool, start: float, end: float
) -> list[Json]:
    if instant:
        return await prometheus.instant(expr, end)
    data = await prometheus.api("query_range", query=expr, start=start, end=end, step=STEP_S)
    result: list[Json] = data["result"]
    return result


async def run_every_panel(
    prometheus: Prometheus, variables: Mapping[str, str], *, start: float, end: float
) -> dict[tuple[str, str], list[Json]]:
    """Every target's answer by (panel title, legend); each must hold data, and every series
    the label(s) its query groups by (one the metric lacks sums all into a series without)."""
    answers: dict[tuple[str, str], list[Json]] = {}
    empty = []
    unlabelled = []
    for panel in panels():
        for target in panel["targets"]:
            expr = substitute(target["expr"], variables)
            instant = bool(target.get("instant"))
            result = await run_target(prometheus, expr, instant=instant, start=start, end=end)
            answers[(panel["title"], target.get("legendFormat", target["refId"]))] = result
            if not finite_values(result):
                empty.append(f"{panel['title']!r} {target['refId']}: {expr}")
            for label in grouped_by(target["expr"]):
                if any(not series["metric"].get(label) for series in result):
                    unlabelled.append(f"{panel['title']!r} {target['refId']}: {label}")
    assert not empty, "panels without data from a healthy run:\n" + "\n".join(empty)
    assert not unlabelled, "series without the label grouped by:\n" + "\n".join(unlabelled)
    return answers


async def revoked_over(prometheus: Prometheus, range_: str, end: float) -> dict[str, float]:
    """``increase()`` of the revocations over the run, by reason."""
    result = await prometheus.instant(
        "sum by (reason) (increase(mati2sentinel_indicators_revoked_total"
        f'{{destination="{DESTINATION}"}}[{range_}]))',
        end,
    )
    return {series["metric"]["reason"]: float(series["value"][1]) for series in result}


#: The legend of a line or a tile per destination.
PER_DESTINATION = "{{destination}}"


def check_the_healthy_destination(answers: Mapping[tuple[str, str], list[Json]]) -> None:
    """The lines and tiles per destination carry its label and say it is healthy: circuit
    closed, ready, nothing dead-lettered, its backlog drained after uploads, the last sync
    completed, its quota and its upload latency shown."""

    def last(title: str, legend: str) -> float:
        return finite_values(answers[(title, legend)])[-1]

    for (_, legend), result in answers.items():
        if PER_DESTINATION in legend:
            assert {series["metric"]["destination"] for series in result} == {DESTINATION}
    assert last("Circuit, by destination", PER_DESTINATION) == 0
    assert last("Ready, by destination", PER_DESTINATION) == 1
    assert last("Dead-lettered over the range, by destination", PER_DESTINATION) == 0
    assert last("Upload backlog, by destination (waiting and in flight)", PER_DESTINATION) == 0
    uploaded = answers[("Uploaded per minute, by destination", PER_DESTINATION)]
    assert max(finite_values(uploaded)) > 0
    assert last("Last sync completed", PER_DESTINATION) == 1
    quota = f"{PER_DESTINATION} quota (requests a minute, SENTINEL_REQUESTS_PER_MINUTE)"
    assert last("Upload requests per minute against the quota", quota) == 100
    latency = answers[("Upload latency (p50, p95), by destination", f"{PER_DESTINATION} p95")]
    assert max(finite_values(latency)) > 0


# ---- the test -------------------------------------------------------------------------------


async def held_until_scraped(pipeline: Pipeline, scraped: Callable[[], Awaitable[bool]]) -> None:
    """Serve MATI's pages again once Prometheus has ``scraped`` the fetcher's counters at 0, so
    that ``increase()`` counts all that follows."""
    await wait_for(scraped, 30, what="Prometheus to scrape the fetcher at 0")
    pipeline.sims.mati.page_latency_s = 0.0


def revoke_some(feed: Feed, store: Mapping[str, Json]) -> dict[str, set[str]]:
    """MATI reports uploaded indicators again, now failing the filters (``REVOKING``); the
    objects each reason must revoke."""
    objects: dict[str, list[str]] = {}  # MATI id -> the ids of its objects in Sentinel
    for key, obj in store.items():
        objects.setdefault(mati_properties(obj)["mati_id"], []).append(key)
    live = iter(sorted(objects))
    changes: dict[str, dict[str, Any]] = {}
    revoking: dict[str, set[str]] = {}
    for reason, (count, change) in REVOKING.items():
        for mati_id in [next(live) for _ in range(count)]:
            changes[mati_id] = change
            revoking.setdefault(reason, set()).update(objects[mati_id])
    feed.revise(changes, datetime.now(UTC))
    return revoking


@pytest.mark.timeout(120)
async def test_every_dashboard_panel_has_data_from_a_real_prometheus(
    make_pipeline: PipelineFactory, prometheus_binary: str, tmp_path: Path
) -> None:
    feed = Feed(seed=7, count=20_000, days=29)
    pipeline = await make_pipeline(feed=feed)
    ports = {label: free_port() for label in SERVICES}
    prometheus = Prometheus(
        tmp_path / "prometheus",
        prometheus_binary,
        {label: (ports[label], component) for label, component in SERVICES.items()},
    )
    async with running(prometheus):
        pipeline.sims.mati.page_latency_s = FIRST_PAGE_HOLD_S
        # Uploads spread over several scrapes, as they do against Sentinel: a latency series
        # that appears already at its final count never moves, and rate() finds nothing in it.
        pipeline.sims.sentinel.upload_latency_s = UPLOAD_LATENCY_S
        children = {}
        for label in SERVICES:
            children[label] = await start_on_port(pipeline, label, ports[label])
        for label in SERVICES:
            started = await wait_for(
                lambda label=label: [
                    e for e in log_events(pipeline, label) if e.get("event") == "service.started"
                ],
                30,
                what=f"{label} to start",
            )
            assert started[0]["health_port"] == ports[label]

        # Every counter seen at 0, the fetcher's included, before the first page is served.
        async def all_scraped() -> bool:
            up = await prometheus.scalar('count(up{job="mati2sentinel"} == 1)')
            fetched = await prometheus.scalar("sum(mati2sentinel_indicators_fetched_total)")
            return up == len(SERVICES) and fetched is not None

        await held_until_scraped(pipeline, all_scraped)
        first = await prometheus.scalar("min_over_time(mati2sentinel_indicators_fetched_total[1m])")
        assert first == 0, "the first page came before Prometheus scraped the fetcher"

        store = await synced_and_drained(pipeline)
        assert store
        uploaded_first = len(store)

        # Prometheus has scraped the end state: all uploaded, nothing in flight, the sync
        # counted and its gauges read (they follow within a scrape or two).
        uploaded = f'sum(mati2sentinel_indicators_uploaded_total{{destination="{DESTINATION}"}})'

        async def caught_up(total: int, revoked: int) -> bool:
            got = await prometheus.scalar(uploaded)
            in_flight = await prometheus.scalar("max(mati2sentinel_queue_in_flight)")
            syncs = await prometheus.scalar('sum(mati2sentinel_syncs_total{outcome="completed"})')
            completed = await prometheus.scalar("min(mati2sentinel_last_sync_completed)")
            revocations = await prometheus.scalar("sum(mati2sentinel_indicators_revoked_total)")
            return (got, in_flight, syncs, completed, revocations) == (total, 0, 1, 1, revoked)

        await wait_for(
            lambda: caught_up(uploaded_first, 0),
            20,
            what="Prometheus to scrape the first sync's end state",
            interval=0.2,
        )

        # MATI reports some of them again, now failing; the fetcher's next sync (at its
        # restart) revokes them. The restarted fetcher's counters are seen at 0 first.
        revoking = revoke_some(feed, store)
        revoked = set().union(*revoking.values())
        assert await pipeline.stop_service(children["fetcher"]) == 0
        pipeline.sims.mati.page_latency_s = FIRST_PAGE_HOLD_S
        children["fetcher"] = await start_on_port(pipeline, "fetcher", ports["fetcher"])

        async def restarted_scraped() -> bool:
            # The stopped process's series went stale: these are the new process's.
            fetched = await prometheus.scalar("sum(mati2sentinel_indicators_fetched_total)")
            syncs = await prometheus.scalar('sum(mati2sentinel_syncs_total{outcome="completed"})')
            return fetched == 0 and syncs == 0

        await held_until_scraped(pipeline, restarted_scraped)

        async def synced_again() -> bool:
            feed_counters, _ = await pipeline.counters()
            return feed_counters.get("sync_completed", 0) >= 2

        await wait_for(synced_again, 60, what="the fetcher's second sync", interval=0.2)
        await pipeline.wait_drained(timeout_s=60)
        feed_counters, destination_counters = await pipeline.counters()
        assert destination_counters["uploaded"] == uploaded_first + len(revoked)
        for key in revoked:
            assert store[key]["revoked"] is True
        await wait_for(
            lambda: caught_up(destination_counters["uploaded"], len(revoked)),
            20,
            what="Prometheus to scrape the second sync's end state",
            interval=0.2,
        )
        end = time.time()
        # Range queries step back from `end`, so their last point sees the end state.
        start = end - math.ceil((end - prometheus.started_at) / STEP_S) * STEP_S

        # $destination: the variable's own query (label_values), formatted as Grafana does.
        match = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable_query("destination"))
        assert match, variable_query("destination")
        destinations = await prometheus.api(f"label/{match[2]}/values", **{"match[]": match[1]})
        assert destinations == [DESTINATION]
        variables = {
            "destination": grafana_regex(destinations),
            "__rate_interval": RATE_INTERVAL,
            "__interval": f"{STEP_S}s",
            "__range": f"{math.ceil(end - prometheus.started_at) + SCRAPE_S}s",
        }

        answers = await run_every_panel(prometheus, variables, start=start, end=end)

        # The funnel over the run says what the services counted. increase() extrapolates from
        # a series' last sample to the window's end: up to a scrape interval's worth more, which
        # over a run of seconds is several percent (over a day, nothing).
        def counted(value: float, expected: float) -> bool:
            observed_s = end - prometheus.scraping_since
            return expected <= value <= expected * (1 + 2 * SCRAPE_S / observed_s)

        def funnel(legend: str) -> float:
            (series,) = answers[("Funnel over the range: received, dropped, forwarded, "
                                 "uploaded, rejected", legend)]  # fmt: skip
            return float(series["value"][1])

        # The feed's panel: what the one fetcher read; the funnel: what the destination received.
        (fetched,) = answers[("Fetched from MATI over the range", PER_DESTINATION)]
        assert fetched["metric"]["destination"] == DESTINATION
        assert counted(float(fetched["value"][1]), feed_counters["fetched"]), fetched
        received = destination_counters["received"]
        assert counted(funnel("received"), received), funnel("received")
        uploads = destination_counters["uploaded"]
        assert counted(funnel("uploaded"), uploads), funnel("uploaded")
        assert destination_counters["forwarded"] == uploads
        assert counted(funnel("forwarded"), uploads), funnel("forwarded")
        dropped = sum(v for k, v in destination_counters.items() if k.startswith("dropped_"))
        assert counted(funnel("dropped"), dropped), funnel("dropped")
        for legend in ("unparseable", "rejected by Sentinel", "dead-lettered"):
            assert funnel(legend) == 0, legend

        # Revocations by reason: a series for every reason the filter can revoke for, and the
        # ones the second sync revoked for, alone, moved.
        rates = {
            series["metric"]["reason"]: max(finite_values([series]))
            for series in answers[(REVOKED_PANEL, "{{reason}}")]
        }
        assert set(rates) >= {r.value for r in DropReason} | {"hash_type_unselected"}
        assert {reason for reason, rate in rates.items() if rate > 0} == set(revoking)
        # What each moved by over the run is what the filter counted.
        increases = await revoked_over(prometheus, variables["__range"], end)
        assert {reason for reason, value in increases.items() if value > 0} == set(revoking)
        for reason, objects in revoking.items():
            assert destination_counters[f"revoked_{reason}"] == len(objects), reason
            assert counted(increases[reason], len(objects)), (reason, increases)

        # Syncs by outcome: every outcome shown, the two syncs as completed.
        outcomes = {
            series["metric"]["outcome"]: finite_values([series])[-1]
            for series in answers[
                ("Syncs by outcome over the range", "{{destination}} {{outcome}}")
            ]
        }
        assert set(outcomes) == {outcome.value for outcome in Outcome}
        assert counted(outcomes.pop("completed"), 2), outcomes
        assert set(outcomes.values()) == {0}

        check_the_healthy_destination(answers)

        # The alert rules evaluate cleanly against real series, and none fires in a healthy run.
        groups = (await prometheus.api("rules", type="alert"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert rules
        assert all(rule["health"] == "ok" for rule in rules), rules
        firing = [rule["name"] for rule in rules if rule["state"] == "firing"]
        assert not firing
