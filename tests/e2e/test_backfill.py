"""A backfill and a second sync through the real services, checked against the feed itself.

After the backfill the simulated workspace must hold exactly the indicators the filters accept,
each once, with the right pattern, validity and labels. Then 5 % of the feed changes and 2 % is
re-reported by MATI while its copy in Sentinel is near the end of its validity: the second sync
must upload exactly those (and revoke the changed ones that no longer pass), and not the
re-reported indicators that are still valid for long.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harness.pipeline import DESTINATION, Pipeline, mati_properties
from shared.adapters.destination_state import DestinationState
from shared.core.filters import Observable, evaluate
from shared.core.fingerprint import SeenEntry, fingerprint
from shared.core.indicator import Indicator
from shared.core.parsing import parse_indicator, parse_timestamp
from shared.core.stix import StixPolicy, content, pattern, stix_id
from simulators.feed import Feed


@dataclass(frozen=True)
class Accepted:
    mati_id: str
    observable: Observable


def accepted(pipeline: Pipeline) -> dict[str, Accepted]:
    """STIX id -> what it stands for, for every indicator of the feed the filters accept."""
    policy = pipeline.settings.filter_policy()
    found: dict[str, Accepted] = {}
    for record in pipeline.feed.records(range(len(pipeline.feed))):
        indicator = parse_indicator(record)
        assert isinstance(indicator, Indicator)
        verdict = evaluate(indicator, policy)
        if isinstance(verdict, tuple):
            for observable in verdict:
                found[stix_id(indicator.id, observable.hash_type)] = Accepted(
                    indicator.id, observable
                )
    return found


def fingerprint_of(item: Accepted, stix_policy: StixPolicy) -> str:
    return fingerprint(content(item.observable, stix_policy))


def assert_workspace_holds_exactly(pipeline: Pipeline, uploads_each: int = 1) -> None:
    expected = pipeline.expected().objects
    store = pipeline.sims.sentinel.store
    assert set(store) >= set(expected)
    for key, fp in expected.items():
        assert mati_properties(store[key])["fingerprint"] == fp, key
    if uploads_each:
        assert {k: pipeline.sims.sentinel.uploads_for(k) for k in expected} == dict.fromkeys(
            expected, uploads_each
        )


@pytest.mark.timeout(150)
async def test_backfill_then_changes_and_refreshes(tmp_path: Path, bus_env: dict[str, str]) -> None:
    feed = Feed(seed=21, count=3000, days=29)
    async with Pipeline(tmp_path, feed=feed, env=bus_env) as pipeline:
        await pipeline.start_service("filter")
        await pipeline.start_service("uploader")
        assert await pipeline.sync_once() == 0
        await pipeline.wait_drained(timeout_s=90)

        # The workspace holds exactly the accepted set, each once ...
        first = accepted(pipeline)
        assert first, "the feed must yield accepted indicators"
        assert set(pipeline.sims.sentinel.store) == set(first)
        assert_workspace_holds_exactly(pipeline)
        # ... with the right pattern, validity per type and labels.
        stix_policy = pipeline.settings.stix_policy()
        for key, item in first.items():
            obj = pipeline.sims.sentinel.store[key]
            assert obj["pattern"] == pattern(item.observable)
            valid_from = parse_timestamp(obj["valid_from"])
            valid_until = parse_timestamp(obj["valid_until"])
            assert valid_from is not None
            assert valid_until is not None
            assert valid_until - valid_from == stix_policy.expiration_for(item.observable)
            assert "action:alert" in obj["labels"]
            assert obj.get("confidence") == item.observable.indicator.mscore
            assert mati_properties(obj)["mati_id"] == item.mati_id
            assert (
                mati_properties(obj).get("threat_score") == item.observable.indicator.threat_score
            )
            assert not [name for name in obj if name.startswith("x_")]

        # Second sync: 5 % changed; 2 % re-reported near the end of their validity in
        # Sentinel (their seen entries are moved to expire within the hour, as if uploaded six
        # and a half days ago); another 2 % re-reported while still valid for long.
        now = datetime.now(UTC)
        rng = random.Random(5)
        changed_ids = set(feed.mutate(0.05, seed=13, now=now))
        unchanged = sorted(k for k, item in first.items() if item.mati_id not in changed_ids)
        picked = rng.sample(unchanged, k=2 * max(1, len(first) // 50))
        near_end, still_valid = picked[: len(picked) // 2], picked[len(picked) // 2 :]
        assert pipeline.redis is not None
        state = DestinationState(pipeline.redis, DESTINATION)
        entries = await state.seen(near_end)
        await state.commit(
            [
                (key, SeenEntry(entry.fingerprint, now + timedelta(hours=1)))
                for key, entry in zip(near_end, entries, strict=True)
                if entry is not None
            ],
            now=now,
        )
        feed.rereport([first[k].mati_id for k in picked], now)

        second = accepted(pipeline)
        due = {
            key
            for key, item in second.items()
            if key not in first
            or fingerprint_of(item, stix_policy) != fingerprint_of(first[key], stix_policy)
        } | set(near_end)
        # A change that no longer passes revokes what the workspace holds (issue 14).
        revoked = set(first) - set(second)
        due |= revoked
        mark = len(pipeline.sims.sentinel.rows)
        assert await pipeline.sync_once() == 0
        await pipeline.wait_drained(timeout_s=90)
        uploaded = [str(row["Data"]["id"]) for row in pipeline.sims.sentinel.rows[mark:]]
        assert sorted(uploaded) == sorted(due)
        assert not set(uploaded) & set(still_valid)
        assert_workspace_holds_exactly(pipeline, uploads_each=0)
        _, counters = await pipeline.counters()
        assert counters["forwarded_refresh"] == len(near_end)
        assert counters.get("forwarded_revoke", 0) == len(revoked)
        assert revoked <= pipeline.sims.sentinel.revoked
        assert all(pipeline.sims.sentinel.store[k]["revoked"] is True for k in revoked)
        assert counters["dropped_unchanged"] >= len(still_valid)
