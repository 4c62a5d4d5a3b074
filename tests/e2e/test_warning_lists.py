"""``EXCLUDE_WARNINGLISTS`` through the real services: the fetcher asks MATI for the ``misp``
flags only because the setting is on, the filter drops what sits on an excluded list with its
own counted reason, and the workspace holds exactly what the independent oracle accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.pipeline import ACCEPT_ALL, Pipeline, mati_properties
from simulators.feed import Feed


@pytest.mark.timeout(120)
async def test_indicators_on_an_excluded_list_never_reach_sentinel(
    tmp_path: Path, bus_env: dict[str, str]
) -> None:
    feed = Feed(seed=57, count=800, days=10)
    env = {**bus_env, **ACCEPT_ALL, "EXCLUDE_WARNINGLISTS": "all"}
    async with Pipeline(tmp_path, feed=feed, env=env) as pipeline:
        await pipeline.start_service("filter")
        await pipeline.start_service("uploader")
        assert await pipeline.sync_once() == 0
        await pipeline.wait_drained(timeout_s=90)

        flagged = [
            feed.id(i)
            for i, record in enumerate(feed.records(range(len(feed))))
            if any(flag is True for flag in (record.get("misp") or {}).values())
        ]
        assert len(flagged) > 20, "the feed must put some indicators on warning lists"
        expected = pipeline.expected().objects
        store = pipeline.sims.sentinel.store
        assert set(store) == set(expected)
        uploaded = {mati_properties(obj)["mati_id"] for obj in store.values()}
        assert uploaded
        assert uploaded.isdisjoint(flagged)
        _, counters = await pipeline.counters()
        assert counters["dropped_warninglist"] == len(flagged)
