"""Revocation through the real services (issue 14), on both buses: after a first sync, MATI
changes N indicators so they fail (each MATI-side reason at least once) and M so they still
pass; the next sync revokes exactly the N (same ids, ``revoked: true``), updates the M, and
uploads nothing else. An indicator revoked and then passing again is live under a new id, and
no id ever goes from revoked back to live (the Sentinel simulator refuses that). Both
Sentinel APIs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harness.pipeline import Pipeline, mati_properties
from shared.core.indicator import HashType
from shared.core.stix import stix_id
from simulators.feed import Feed
from simulators.sentinel import LEGACY_ROUTE, STIX_ROUTE

#: (change, the filter reason it must fail with), two indicators each.
FAILING: list[tuple[dict[str, Any], str]] = [
    ({"mscore": 10}, "low_confidence"),
    ({"threat_score": 10}, "low_threat_score"),
    ({"osint_only": True}, "osint"),
    ({"categories": ()}, "uncategorized"),
]


def lineage(feed: Feed, mati_id: str) -> str:
    hash_type = HashType.MD5 if feed.type_of(feed.index_of(mati_id)) == "md5" else None
    return stix_id(mati_id, hash_type)


def uploaded_since(pipeline: Pipeline, mark: int) -> list[str]:
    return [str(row["Data"]["id"]) for row in pipeline.sims.sentinel.rows[mark:]]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("api", ["stix-objects", "upload-indicators"])
async def test_what_no_longer_passes_is_revoked_and_comes_back_under_a_new_id(
    tmp_path: Path, bus_env: dict[str, str], api: str
) -> None:
    feed = Feed(seed=31, count=600, days=6)
    env = {**bus_env, "INCLUDE_UNCATEGORIZED": "false", "SENTINEL_API": api}
    async with Pipeline(tmp_path, feed=feed, env=env) as pipeline:
        await pipeline.first_sync()
        sentinel = pipeline.sims.sentinel
        first = pipeline.expected().objects
        assert set(sentinel.store) == set(first)

        accepted = [feed.id(i) for i in range(len(feed)) if lineage(feed, feed.id(i)) in first]
        assert len(accepted) >= 2 * len(FAILING) + 3
        now = datetime.now(UTC)
        changes: dict[str, dict[str, Any]] = {}
        reasons: dict[str, str] = {}
        for n, (change, reason) in enumerate(FAILING):
            for mati_id in accepted[2 * n : 2 * n + 2]:
                changes[mati_id] = change
                reasons[mati_id] = reason
        still = accepted[2 * len(FAILING) : 2 * len(FAILING) + 3]
        for mati_id in still:  # changed, still passing: updated in place
            changes[mati_id] = {"mscore": 99 if feed.mscore(feed.index_of(mati_id)) != 99 else 98}
        feed.revise(changes, now)

        mark = len(sentinel.rows)
        assert await pipeline.sync_once() == 0
        await pipeline.wait_drained(timeout_s=90)
        revoked = {lineage(feed, mati_id) for mati_id in reasons}
        updated = {lineage(feed, mati_id) for mati_id in still}
        uploaded = uploaded_since(pipeline, mark)
        assert sorted(uploaded) == sorted(revoked | updated), "those, once each, nothing else"
        assert revoked <= sentinel.revoked
        assert not updated & sentinel.revoked
        for key in revoked:
            assert sentinel.store[key]["revoked"] is True
        second = pipeline.expected().objects
        assert set(second) == set(first) - revoked
        for key in updated:
            assert mati_properties(sentinel.store[key])["fingerprint"] == second[key]
        _, counters = await pipeline.counters()
        for reason in {reason for _, reason in FAILING}:
            assert counters.get(f"revoked_{reason}") == 2, reason
        assert counters["forwarded_revoke"] == len(revoked)

        # Reported failing again: nothing to do, it is revoked already.
        mark = len(sentinel.rows)
        received = counters["received"]
        feed.rereport(list(reasons), datetime.now(UTC))
        assert await pipeline.sync_once() == 0
        await pipeline.wait_drained(timeout_s=90)
        assert uploaded_since(pipeline, mark) == []
        _, counters = await pipeline.counters()
        assert counters["received"] >= received + len(reasons), "they were fetched and judged"

        # Passing again: live under the next generation's id; the revoked id stays revoked.
        back = [mati_id for mati_id, reason in reasons.items() if reason == "low_confidence"]
        feed.revise({mati_id: {"mscore": 95} for mati_id in back}, datetime.now(UTC))
        mark = len(sentinel.rows)
        assert await pipeline.sync_once() == 0
        await pipeline.wait_drained(timeout_s=90)
        index = {mati_id: feed.index_of(mati_id) for mati_id in back}
        fresh = {
            stix_id(m, HashType.MD5 if feed.type_of(i) == "md5" else None, 1)
            for m, i in index.items()
        }
        assert sorted(uploaded_since(pipeline, mark)) == sorted(fresh)
        for key in fresh:
            assert sentinel.store[key].get("revoked") is not True
            assert key not in sentinel.revoked
        for mati_id in back:
            assert sentinel.store[lineage(feed, mati_id)]["revoked"] is True
        _, counters = await pipeline.counters()
        assert counters.get("dead_lettered", 0) == 0, "Sentinel refused nothing"
        route = STIX_ROUTE if api == "stix-objects" else LEGACY_ROUTE
        assert {r.route for r in sentinel.request_log} == {route}


@pytest.mark.timeout(180)
async def test_a_full_sync_after_a_settings_change_revokes_what_the_settings_now_leave_out(
    tmp_path: Path, bus_env: dict[str, str]
) -> None:
    """No longer taking URLs, and only md5 of the hashes: the full sync revokes exactly the
    URLs and the sha1/sha256 indicators the workspace holds, and re-uploads nothing else."""
    feed = Feed(seed=37, count=400, days=6)
    async with Pipeline(tmp_path, feed=feed, env={**bus_env, "HASH_TYPE": "all"}) as pipeline:
        filter_ = await pipeline.first_sync()
        sentinel = pipeline.sims.sentinel
        first = pipeline.expected().objects
        assert set(sentinel.store) == set(first)

        pipeline.change_settings({"HASH_TYPE": "md5", "INCLUDE_URL": "false"})
        assert await pipeline.stop_service(filter_) == 0
        await pipeline.start_service("filter")
        mark = len(sentinel.rows)
        assert await pipeline.sync_once(full=True) == 0
        await pipeline.wait_drained(timeout_s=90)

        revoked = set(first) - set(pipeline.expected().objects)
        urls = {k for k in first if sentinel.store[k]["pattern"].startswith("[url:")}
        hashes = {
            k
            for k in first
            if sentinel.store[k]["pattern"].startswith(
                ("[file:hashes.'SHA-1'", "[file:hashes.'SHA-256'")
            )
        }
        assert urls
        assert hashes
        assert revoked == urls | hashes
        assert sorted(uploaded_since(pipeline, mark)) == sorted(revoked)
        assert revoked <= sentinel.revoked
        _, counters = await pipeline.counters()
        assert counters["revoked_type_excluded"] == len(urls)
        assert counters["revoked_hash_type_unselected"] == len(hashes)
