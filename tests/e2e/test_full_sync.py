"""``sync --once --full`` after a settings change, through the real services: every live
indicator the new settings map differently is uploaded again (same ids, new content), every
one they no longer accept is revoked, and nothing else is uploaded, although a normal sync
would have fetched only the checkpoint's overlap."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.pipeline import Pipeline, mati_properties
from simulators.feed import Feed


@pytest.mark.timeout(150)
async def test_a_full_sync_brings_a_settings_change_to_every_live_indicator(
    tmp_path: Path, bus_env: dict[str, str]
) -> None:
    feed = Feed(seed=61, count=1500, days=20)
    async with Pipeline(tmp_path, feed=feed, env=bus_env) as pipeline:
        filter_ = await pipeline.start_service("filter")
        await pipeline.start_service("uploader")
        assert await pipeline.sync_once() == 0
        await pipeline.wait_drained(timeout_s=90)
        store = pipeline.sims.sentinel.store
        before = pipeline.expected().objects
        assert before
        assert set(store) == set(before)

        # The operator changes what an upload looks like and redeploys the filter.
        pipeline.change_settings({"DEFAULT_ACTION": "block"})
        assert await pipeline.stop_service(filter_) == 0
        await pipeline.start_service("filter")
        assert await pipeline.sync_once(full=True) == 0
        await pipeline.wait_drained(timeout_s=90)

        after = pipeline.expected().objects
        assert set(after) == set(before), "the same ids: nothing new, nothing lost"
        assert set(store) == set(after)
        for stix_id, fingerprint in after.items():
            assert fingerprint != before[stix_id]
            assert mati_properties(store[stix_id])["fingerprint"] == fingerprint
            assert "action:block" in store[stix_id]["labels"]
            assert pipeline.sims.sentinel.uploads_for(stix_id) == 2, stix_id


@pytest.mark.timeout(150)
async def test_raising_minimum_confidence_revokes_exactly_the_live_indicators_below_it(
    tmp_path: Path, bus_env: dict[str, str]
) -> None:
    """Issue 14: after raising ``MINIMUM_CONFIDENCE`` (services restarted with it), a full
    sync revokes exactly the live indicators below the new minimum and uploads nothing else,
    although MATI reported none of them again."""
    feed = Feed(seed=67, count=1200, days=20)
    async with Pipeline(tmp_path, feed=feed, env=bus_env) as pipeline:
        filter_ = await pipeline.first_sync()
        sentinel = pipeline.sims.sentinel
        before = pipeline.expected().objects
        assert set(sentinel.store) == set(before)
        below = {
            key
            for key, obj in sentinel.store.items()
            if feed.mscore(feed.index_of(mati_properties(obj)["mati_id"])) < 90
        }
        assert below, "the feed must hold live indicators between the old and new minimum"
        assert below != set(before), "and some above the new one"

        pipeline.change_settings({"MINIMUM_CONFIDENCE": "90"})
        assert await pipeline.stop_service(filter_) == 0
        await pipeline.start_service("filter")
        mark = len(sentinel.rows)
        assert await pipeline.sync_once(full=True) == 0
        await pipeline.wait_drained(timeout_s=90)

        uploaded = [str(row["Data"]["id"]) for row in sentinel.rows[mark:]]
        assert sorted(uploaded) == sorted(below), "each revoked once, nothing else uploaded"
        assert below <= sentinel.revoked
        assert set(pipeline.expected().objects) == set(before) - below
        for key in set(before) - below:
            assert sentinel.store[key].get("revoked") is not True
        _, counters = await pipeline.counters()
        assert counters["revoked_low_confidence"] == len(below)
