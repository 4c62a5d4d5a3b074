"""``mati2sentinel explain`` as an operator runs it, against the whole product: the real
services as processes, Redis, and the simulators. One sync meets a Sentinel that rejects a
record and a MATI page with broken records; a second sync runs with the uploader stopped, so
its indicators wait in the upload queue. Then ``explain`` must say, for each kind of
indicator, where it is: dropped (by which filter, with the numbers), uploaded (valid until
what Sentinel holds), rejected (with Sentinel's message), refused by the parser, and queued.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from harness.pipeline import DESTINATION, Pipeline, mati_properties
from shared.core.filters import DropReason, evaluate
from shared.core.indicator import Indicator
from shared.core.parsing import parse_indicator
from simulators.faults import FaultKind
from simulators.feed import Feed
from simulators.sentinel import STIX_ROUTE
from tests.e2e.pipeline_tools import PipelineFactory, queue_counts, run_cli
from tests.helpers import wait_for

SENTINEL_MESSAGE = "The object could not be ingested, please retry later"


async def explain(pipeline: Pipeline, indicator: str) -> dict[str, Any]:
    answer: dict[str, Any] = (await run_cli(pipeline, "explain", indicator, "--json")).json()
    return answer


def verdict_of(pipeline: Pipeline, mati_id: str) -> tuple[Indicator, object]:
    record = pipeline.feed.record(pipeline.feed.index_of(mati_id))
    indicator = parse_indicator(record)
    assert isinstance(indicator, Indicator)
    return indicator, evaluate(indicator, pipeline.settings.filter_policy())


@pytest.mark.timeout(120)
async def test_explain_says_where_each_indicator_is(make_pipeline: PipelineFactory) -> None:
    pipeline = await make_pipeline(feed=Feed(seed=5, count=160, days=5))
    sentinel = pipeline.sims.sentinel
    sentinel.faults.inject(FaultKind.PARTIAL_ERRORS, route=STIX_ROUTE, record_indexes=(0,))
    # Two broken records on the (only) page: the first loses its id, the second its value;
    # the second is one the filters accept, so nothing but the parser stands in its way.
    feed = pipeline.feed
    page = feed.window_ms(0, 2**50)
    accepted = next(
        n
        for n, i in enumerate(page)
        if n and isinstance(verdict_of(pipeline, feed.id(i))[1], tuple)
    )
    pipeline.sims.mati.faults.inject(
        FaultKind.PARTIAL_ERRORS, route="indicator", record_indexes=(0, accepted)
    )
    await pipeline.start_service("filter")
    uploader = await pipeline.start_service("uploader")
    assert await pipeline.sync_once(timeout_s=60) == 0
    await pipeline.wait_drained(timeout_s=60, settle_s=0.5)

    # Rejected: the first object of the first accepted request, with Sentinel's message.
    first = next(r for r in sentinel.recorder.of(STIX_ROUTE) if r.status == 200)
    rejected = first.json()["stixobjects"][0]
    assert rejected["id"] not in sentinel.store
    answer = await explain(pipeline, mati_properties(rejected)["mati_id"])
    assert answer["verdict"] == "rejected", answer
    assert answer["headline"].startswith("rejected by Sentinel: Error for Property=id: ")
    assert SENTINEL_MESSAGE in answer["headline"]

    # Uploaded, asked by value, in text: valid until what the workspace holds.
    uploaded = next(o for sid, o in sentinel.store.items() if sid != rejected["id"])
    indicator, _ = verdict_of(pipeline, mati_properties(uploaded)["mati_id"])
    text = (await run_cli(pipeline, "explain", indicator.value)).stdout
    assert text.startswith("UPLOADED: uploaded ≈"), text
    assert f"valid until {uploaded['valid_until']}; up to date" in text
    assert indicator.id in text

    # Dropped by the filter (not left out by MATI server-side), with the numbers.
    dropped = next(
        (i, v)
        for i, v in (verdict_of(pipeline, feed.id(n)) for n in page)
        if v is DropReason.LOW_THREAT_SCORE
    )
    answer = await explain(pipeline, dropped[0].id)
    assert answer["verdict"] == "dropped"
    assert answer["filter_reason"] == "low_threat_score"
    assert answer["headline"] == (
        f"dropped by low_threat_score: threat_score {dropped[0].threat_score} "
        "< MINIMUM_THREAT_SCORE 80"
    )

    # Refused by the parser: the broken record that kept its id.
    broken = next(b for b in pipeline.sims.mati.bad_records if b.kind == "missing_value")
    assert broken.id == feed.id(page[accepted])
    answer = await explain(pipeline, broken.id)
    assert answer["verdict"] == "refused", answer
    assert answer["headline"].startswith("refused by the parser: missing_field: 'value' is missing")

    # Queued: with the uploader stopped, new indicators wait in the upload queue.
    assert pipeline.processes is not None
    await pipeline.processes.stop(uploader, grace_s=10)
    added = pipeline.feed.add(30, now=datetime.now(UTC))
    assert await pipeline.sync_once(timeout_s=60) == 0

    async def filtered() -> bool:
        counts = await queue_counts(pipeline)
        return counts["subscription"][:2] == (0, 0) and counts["upload"][0] > 0

    await wait_for(filtered, 30, what="the second sync filtered into the upload queue")
    waiting = next(i for i in added if isinstance(verdict_of(pipeline, i)[1], tuple))
    answer = await explain(pipeline, waiting)
    assert answer["verdict"] == "queued", answer
    assert answer["headline"].startswith(f"queued for upload in upload.{DESTINATION} since ")
    assert answer["headline"].endswith(", new")
