"""``suppress`` through the real services (issue 14, "suppress now"): after a first sync, an
analyst suppresses an indicator the workspace holds: it is revoked in Sentinel under its id
without waiting for a sync; MATI then reports it changed and it is not uploaded again, only
counted; once the suppression is removed it is live again under its next generation's id,
and the revoked id stays revoked."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from harness.pipeline import Pipeline
from shared.core.stix import stix_id
from simulators.feed import Feed
from tests.e2e.pipeline_tools import run_cli
from tests.e2e.test_revocation import lineage, uploaded_since
from tests.helpers import wait_for


@pytest.mark.timeout(180)
async def test_suppressed_is_revoked_now_kept_out_and_back_once_removed(
    tmp_path: Path, bus_env: dict[str, str]
) -> None:
    feed = Feed(seed=43, count=300, days=3)
    async with Pipeline(tmp_path, feed=feed, env=bus_env) as pipeline:
        await pipeline.first_sync()
        sentinel = pipeline.sims.sentinel
        held = pipeline.expected().objects
        mati_id = next(
            feed.id(i)
            for i in range(len(feed))
            if feed.type_of(i) != "md5" and lineage(feed, feed.id(i)) in held
        )
        key = lineage(feed, mati_id)
        assert sentinel.store[key].get("revoked") is not True

        added = await run_cli(pipeline, "suppress", "add", mati_id, "--reason", "our own proxy")
        assert "1 object(s) queued for revocation" in added.stdout, added.stdout
        await wait_for(
            lambda: sentinel.store[key].get("revoked") is True, 60, what="the revocation"
        )
        assert key in sentinel.revoked
        listed = (await run_cli(pipeline, "suppress", "list", "--json")).json()
        assert [s["mati_id"] for s in listed["suppressions"]] == [mati_id]
        explained = (await run_cli(pipeline, "explain", mati_id, "--json")).json()
        assert explained["verdict"] == "suppressed"
        assert explained["suppression"]["reason"] == "our own proxy"

        # MATI reports it changed (and still passing): it stays out, counted.
        index = feed.index_of(mati_id)
        feed.revise(
            {mati_id: {"mscore": 99 if feed.mscore(index) != 99 else 98}}, datetime.now(UTC)
        )
        mark = len(sentinel.rows)
        assert await pipeline.sync_once() == 0
        await pipeline.wait_drained(timeout_s=90)
        assert uploaded_since(pipeline, mark) == []
        _, counters = await pipeline.counters()
        assert counters["dropped_suppressed"] == 1
        assert counters["revoked_suppressed"] == 1, "revoked once, by suppress add"

        # Removed: live again under the next generation's id; the revoked id stays revoked.
        removed = await run_cli(pipeline, "suppress", "remove", mati_id)
        assert "handed to the filter again" in removed.stdout, removed.stdout
        back = stix_id(mati_id, None, 1)

        def live_again() -> bool:
            return back in sentinel.store and sentinel.store[back].get("revoked") is not True

        await wait_for(live_again, 60, what="the indicator back under its next id")
        assert sentinel.store[key]["revoked"] is True
        listed = (await run_cli(pipeline, "suppress", "list", "--json")).json()
        assert listed["suppressions"] == []
