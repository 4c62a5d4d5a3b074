"""Malformed MATI input (DESIGN §4): a page that is not JSON is retried; broken records on a
page are counted and dead-lettered with a reason (or, for a wrongly typed optional field, read
leniently as ``shared.core.parsing`` documents); the sync goes on and everything else arrives.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from harness.pipeline import DESTINATION
from shared.core.parsing import parse_json
from simulators.faults import FaultKind
from simulators.feed import Feed
from simulators.mati_bad_records import BAD_RECORD_KINDS, corrupt
from tests.e2e.pipeline_tools import PipelineFactory, assert_delivered, run_cli

#: Corruptions that break a required field (``id``, ``value``): the record cannot be an
#: indicator, so the filter dead-letters it (``invalid_record``). The other kinds break an
#: optional field, which the parser ignores (a non-numeric ``mscore`` becomes no score).
UNPARSEABLE = {"missing_id", "missing_value", "value_not_string", "duplicate_key"}
#: One position per kind (the simulator breaks them in ``BAD_RECORD_KINDS`` order).
BAD_POSITIONS = (3, 50, 101, 222, 400, 512, 999)


@pytest.mark.timeout(120)
async def test_malformed_page_and_broken_records_are_counted_and_the_sync_goes_on(
    make_pipeline: PipelineFactory,
) -> None:
    # The default filters: about 1100 of these 3500 indicators are served, two pages' worth.
    feed = Feed(seed=51, count=3500, days=20)
    pipeline = await make_pipeline(feed=feed)
    mati = pipeline.sims.mati
    mati.faults.inject(FaultKind.PARTIAL_ERRORS, route="indicator", record_indexes=BAD_POSITIONS)
    mati.faults.inject(FaultKind.MALFORMED_JSON, route="indicator", after=1)

    await pipeline.start_service("filter")
    await pipeline.start_service("uploader")
    assert await pipeline.sync_once(timeout_s=60) == 0
    await pipeline.wait_drained(timeout_s=60, settle_s=0.5)

    # Both faults were served: the malformed page on the second request, then retried.
    assert not mati.faults.pending
    pages = mati.recorder.of("indicator")
    assert [r.fault for r in pages].count(FaultKind.MALFORMED_JSON) == 1
    assert pages[1].fault is FaultKind.MALFORMED_JSON
    assert mati.indicators_served > 1000, "the malformed answer must stand in for a full page"
    assert pages[2].query == pages[1].query, "the malformed page was not asked for again"
    assert [b.kind for b in mati.bad_records] == list(BAD_RECORD_KINDS)
    assert [b.position for b in mati.bad_records] == list(BAD_POSITIONS)

    # What MATI served: the feed, with the broken records as the simulator broke them.
    broken: dict[str, Any] = {
        bad.id: parse_json(corrupt(feed.record(feed.index_of(bad.id)), bad.kind))
        for bad in mati.bad_records
    }
    assert all(isinstance(record, dict) for record in broken.values())
    served = [broken.get(record["id"], record) for record in feed.records(range(len(feed)))]
    expected = pipeline.expected(served)
    assert_delivered(pipeline, expected, max_uploads=1)

    # The unparseable ones: counted by reason and dead-lettered as invalid_record.
    _, counters = await pipeline.counters()
    rejected = {k: v for k, v in counters.items() if k.startswith("rejected_")}
    assert rejected == {k: v for k, v in expected.drops.items() if k.startswith("rejected_")}
    assert sum(rejected.values()) == len(UNPARSEABLE)
    letters = (await run_cli(pipeline, "dlq", "list", "--queue", "indicators", "--json")).json()
    assert {letter["reason"] for letter in letters} == {"invalid_record"}
    dead = Counter(letter["indicator_id"] for letter in letters)
    assert dead == Counter(
        "" if bad.kind == "missing_id" else bad.id
        for bad in mati.bad_records
        if bad.kind in UNPARSEABLE
    )
    reasons = Counter(letter["description"].split(":", 1)[0] for letter in letters)
    assert reasons == Counter({k.removeprefix("rejected_"): v for k, v in rejected.items()})

    status = (await run_cli(pipeline, "status", "--json")).json()
    subscription = next(e for e in status["entities"] if e["entity"] == f"indicators/{DESTINATION}")
    assert subscription["dead_letter"] == len(UNPARSEABLE)
    assert status["feed_counters"]["sync_completed"] == 1
    assert status["feed_counters"]["fetched"] == mati.indicators_served
