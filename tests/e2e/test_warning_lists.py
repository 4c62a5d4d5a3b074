"""``EXCLUDE_WARNINGLISTS`` through the real services: the fetcher asks MATI for the ``misp``
flags only because the setting is on, the filter drops what sits on an excluded list with its
own counted reason, and the workspace holds exactly what the independent oracle accepts. What
the workspace holds live and MATI later finds on an excluded list is revoked."""

from __future__ import annotations

from datetime import UTC, datetime
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


def uploaded_since(pipeline: Pipeline, mark: int) -> list[str]:
    return [str(row["Data"]["id"]) for row in pipeline.sims.sentinel.rows[mark:]]


@pytest.mark.timeout(180)
async def test_a_live_indicator_that_mati_later_puts_on_an_excluded_list_is_revoked(
    tmp_path: Path, bus_env: dict[str, str]
) -> None:
    """Issue 14: after a first sync, MATI flags six uploaded indicators on the two excluded
    lists (three each), two on a list that is not excluded, and reports four others again
    unchanged. The next sync revokes exactly the six (same ids, ``revoked: true``), counted
    ``revoked_warninglist``, and uploads nothing else."""
    feed = Feed(seed=59, count=600, days=8)
    excluded = ("tranco", "public-dns-v4")
    env = {**bus_env, **ACCEPT_ALL, "EXCLUDE_WARNINGLISTS": ",".join(excluded)}
    async with Pipeline(tmp_path, feed=feed, env=env) as pipeline:
        await pipeline.first_sync()
        sentinel = pipeline.sims.sentinel
        first = pipeline.expected().objects
        assert set(sentinel.store) == set(first)
        objects: dict[str, list[str]] = {}  # MATI id -> the ids of its objects in Sentinel
        for key, obj in sentinel.store.items():
            objects.setdefault(mati_properties(obj)["mati_id"], []).append(key)
        live = sorted(objects)
        assert len(live) >= 12
        listed, elsewhere, again = live[:6], live[6:8], live[8:12]

        now = datetime.now(UTC)
        changes = {mati_id: {"misp": {excluded[n % 2]: True}} for n, mati_id in enumerate(listed)}
        changes |= {mati_id: {"misp": {"google": True}} for mati_id in elsewhere}
        feed.revise(changes, now)
        feed.rereport(again, now)
        for mati_id in listed:
            flags = feed.record(feed.index_of(mati_id))["misp"]
            assert {name for name, flag in flags.items() if flag} & set(excluded)
        _, before = await pipeline.counters()

        mark = len(sentinel.rows)
        assert await pipeline.sync_once() == 0
        await pipeline.wait_drained(timeout_s=90)

        revoked = {key for mati_id in listed for key in objects[mati_id]}
        assert sorted(uploaded_since(pipeline, mark)) == sorted(revoked), (
            "those, once each, nothing else"
        )
        assert revoked <= sentinel.revoked
        for key in revoked:
            assert sentinel.store[key]["revoked"] is True
        for mati_id in elsewhere + again:
            for key in objects[mati_id]:
                assert sentinel.store[key].get("revoked") is not True
                assert key not in sentinel.revoked
        assert set(pipeline.expected().objects) == set(first) - revoked

        _, after = await pipeline.counters()
        grew = {
            name: after.get(name, 0) - before.get(name, 0)
            for name in after
            if name.startswith("revoked_") and after.get(name, 0) != before.get(name, 0)
        }
        assert grew == {"revoked_warninglist": len(revoked)}
        assert after["forwarded_revoke"] - before.get("forwarded_revoke", 0) == len(revoked)
        assert after.get("dead_lettered", 0) == 0, "Sentinel refused nothing"
