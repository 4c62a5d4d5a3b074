"""Revocation (issue 14): a record MATI reports again that no longer passes is revoked where the
workspace holds it live, under the id it went out with; an md5's hashes ``HASH_TYPE`` no longer
selects likewise; an indicator passing again after its revocation goes out under the next
generation's id, never un-revoking one; and the source-tag shortcut never skips a record that
needs either."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from shared.core.filters import FilterPolicy, HashSelection
from shared.core.fingerprint import ForwardReason, SeenEntry
from shared.core.indicator import HashType
from shared.core.stix import stix_id
from tests.services.filter_rig import (
    STIX,
    Rig,
    again,
    assert_settled,
    commit,
    of_type,
    passing,
    sync,
    uploads,
)

DAYS = STIX.fqdn_expiration


def _low_confidence(record: dict[str, Any]) -> None:
    record["mscore"] = 10


def _low_threat_score(record: dict[str, Any]) -> None:
    record["threat_rating"]["threat_score"] = 10


def _osint(record: dict[str, Any]) -> None:
    for source in record["sources"]:
        source["osint"] = True


@pytest.mark.parametrize(
    ("fail", "reason"),
    [
        (_low_confidence, "low_confidence"),
        (_low_threat_score, "low_threat_score"),
        (_osint, "osint"),
    ],
)
async def test_a_held_record_that_no_longer_passes_is_revoked_once_under_its_id(
    rig: Rig, fail: Any, reason: str
) -> None:
    worker = rig.worker()
    record = passing(of_type("fqdn"))
    await sync(rig, worker, record)
    (first,) = await uploads(rig.bus)
    await commit(rig, [first], rig.clock.now + DAYS)

    failing = again(record)
    fail(failing)
    outcome = await sync(rig, worker, failing)
    assert outcome[f"dropped_{reason}"] == 1
    assert (outcome["forwarded_revoke"], outcome[f"revoked_{reason}"]) == (1, 1)
    (revoke,) = await uploads(rig.bus)
    assert revoke.reason is ForwardReason.REVOKE
    assert revoke.stix_id == revoke.draft.stix_id == first.stix_id
    assert revoke.revoked
    assert revoke.draft.body["revoked"] is True
    assert revoke.fingerprint != first.fingerprint
    await assert_settled(rig)

    # Once Sentinel took it, the entry is revoked: reported failing again, nothing is sent.
    await commit(rig, [revoke], rig.clock.now + DAYS)
    outcome = await sync(rig, worker, again(failing))
    assert outcome[f"dropped_{reason}"] == 1
    assert outcome["forwarded"] == 0
    assert await uploads(rig.bus) == []


async def test_a_type_no_longer_included_is_revoked(rig: Rig) -> None:
    record = passing(of_type("url"))
    await sync(rig, rig.worker(), record)
    (first,) = await uploads(rig.bus)
    await commit(rig, [first], rig.clock.now + DAYS)

    outcome = await sync(
        rig, rig.worker(filter_policy=FilterPolicy(include_url=False)), again(record)
    )
    assert outcome["revoked_type_excluded"] == 1
    (revoke,) = await uploads(rig.bus)
    assert (revoke.stix_id, revoke.revoked) == (first.stix_id, True)


async def test_a_record_fetched_without_warning_list_flags_revokes_nothing(rig: Rig) -> None:
    """Filter and fetcher out of step (lists excluded, flags not asked for): the record says
    nothing about warning lists, so what is live stays live, not revoked on a guess."""
    record = passing(of_type("fqdn"))
    record.pop("misp", None)
    await sync(rig, rig.worker(), record)
    (first,) = await uploads(rig.bus)
    await commit(rig, [first], rig.clock.now + DAYS)

    excluding = FilterPolicy(exclude_warninglists=frozenset({"tranco"}))
    outcome = await sync(rig, rig.worker(filter_policy=excluding), again(record))
    assert outcome["dropped_warninglist_unknown"] == 1
    assert outcome["forwarded"] == 0
    assert await uploads(rig.bus) == []


async def test_nothing_is_revoked_that_the_workspace_does_not_hold_live(rig: Rig) -> None:
    """Never uploaded, or expired in Sentinel already: revoking would only cost quota."""
    worker = rig.worker()
    never = passing(of_type("ipv4", 0))
    expired = passing(of_type("ipv4", 1))
    await sync(rig, worker, expired)
    (request,) = await uploads(rig.bus)
    await commit(rig, [request], rig.clock.now + timedelta(seconds=30))
    rig.clock.now += timedelta(minutes=1)

    for record in (never, expired):
        _low_confidence(record)
    outcome = await sync(rig, worker, again(never), again(expired))
    assert outcome["dropped_low_confidence"] == 2
    assert outcome["forwarded"] == 0
    assert await uploads(rig.bus) == []


async def test_hashes_hash_type_no_longer_selects_are_revoked(rig: Rig) -> None:
    record = passing(of_type("md5"))
    await sync(
        rig, rig.worker(filter_policy=FilterPolicy(hash_selection=HashSelection.ALL)), record
    )
    everything = await uploads(rig.bus)
    assert len(everything) == 3
    await commit(rig, everything, rig.clock.now + STIX.hash_expiration)

    md5_only = rig.worker(filter_policy=FilterPolicy(hash_selection=HashSelection.MD5))
    outcome = await sync(rig, md5_only, again(record))
    assert outcome["dropped_unchanged"] == 1
    assert outcome["revoked_hash_type_unselected"] == 2
    revoked = await uploads(rig.bus)
    assert {r.stix_id for r in revoked} == {
        stix_id(record["id"], HashType.SHA1),
        stix_id(record["id"], HashType.SHA256),
    }
    assert all(r.revoked and r.reason is ForwardReason.REVOKE for r in revoked)


async def test_passing_again_after_a_revocation_goes_out_under_a_new_id(rig: Rig) -> None:
    worker = rig.worker()
    record = passing(of_type("fqdn"))
    lineage = stix_id(record["id"], None)
    await sync(rig, worker, record)
    (live,) = await uploads(rig.bus)
    await commit(rig, [live], rig.clock.now + DAYS)
    current = record
    for generation in (1, 2):
        failing = again(current)
        _low_confidence(failing)
        await sync(rig, worker, failing)
        (revoke,) = await uploads(rig.bus)
        assert revoke.draft.stix_id == stix_id(record["id"], None, generation - 1)
        assert (revoke.stix_id, revoke.generation) == (lineage, generation - 1)
        await commit(rig, [revoke], rig.clock.now + DAYS)

        current = {**again(failing), "mscore": 95}
        outcome = await sync(rig, worker, current)
        assert outcome["forwarded_new"] == 1
        (back,) = await uploads(rig.bus)
        assert back.draft.stix_id == stix_id(record["id"], None, generation)
        assert back.draft.stix_id != lineage
        assert (back.stix_id, back.generation, back.revoked) == (lineage, generation, False)
        await commit(rig, [back], rig.clock.now + DAYS)

        # Live under its new id: reported unchanged, it is left alone, not re-sent.
        assert (await sync(rig, worker, again(current)))["dropped_unchanged"] == 1
        assert await uploads(rig.bus) == []
        current = again(current, 2)


async def test_the_shortcut_never_skips_a_record_whose_entry_was_revoked(rig: Rig) -> None:
    """The entry carries this very record's tag, but it is revoked: the record passes, so it
    must go out again (under the next generation), not be recognised as unchanged."""
    bus = rig.undeduplicated_bus()
    worker = rig.worker(bus)
    record = passing(of_type("ipv4"))
    await sync(rig, worker, record)
    (first,) = await uploads(rig.bus)
    entry = SeenEntry(first.fingerprint, rig.clock.now + DAYS, first.source_tag, revoked=True)
    await rig.state.commit([(first.stix_id, entry)], now=rig.clock.now)

    outcome = await sync(rig, worker, record, bus=bus)  # the very same bytes
    assert outcome["dropped_unchanged"] == 0
    assert outcome["forwarded_new"] == 1
    (back,) = await uploads(rig.bus)
    assert back.draft.stix_id == stix_id(record["id"], None, 1)


async def test_the_shortcut_never_skips_a_held_record_that_now_fails(rig: Rig) -> None:
    """A downgrade changes the record's bytes, so its tag; the shortcut must let it through
    to judging, which revokes it."""
    worker = rig.worker()
    assert worker.config.deduplication
    record = passing(of_type("ipv4"))
    await sync(rig, worker, record)
    (first,) = await uploads(rig.bus)
    await commit(rig, [first], rig.clock.now + DAYS)
    assert (await sync(rig, worker, again(record)))["dropped_unchanged"] == 1  # recognised

    failing = again(record, 2)
    _low_confidence(failing)
    assert (await sync(rig, worker, failing))["revoked_low_confidence"] == 1
