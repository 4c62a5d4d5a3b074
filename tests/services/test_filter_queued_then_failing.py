"""A version queued for upload (or in flight) that fails the filters by the time its
indicator is judged again (MATI reported it failing, or a minimum was raised and ``sync
--once --full`` re-judged it) never stays live. The seen cache does not hold it live, but its
claim is held: the filter revokes it under the id the upload carries, through the priority
lane, and the revocation takes the claim, so the uploader skips the queued upload as
superseded (and an upload whose answer was lost before its commit is revoked in Sentinel).
Found by ``make chaos``: a full sync during a back-fill left every queued indicator below
the new minimum live in the workspace."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.uploader.batching import prepare
from shared.adapters.suppressions import Suppression
from shared.contract.bus import Queue
from shared.contract.messages import UploadRequest, raw_message, read_upload
from shared.core.filters import FilterPolicy
from shared.core.stix import stix_id
from tests.services.filter_rig import QUEUE, URGENT, Rig, again, of_type, passing, sync, take


def _reported_failing(record: dict[str, Any]) -> tuple[object, dict[str, Any]]:
    failing = again(record)
    failing["mscore"] = 10
    return failing, {}


def _minimum_raised(record: dict[str, Any]) -> tuple[object, dict[str, Any]]:
    full = raw_message(record, run_id="full-1", full=True)
    return full, {"filter_policy": FilterPolicy(minimum_confidence=96)}


@pytest.mark.parametrize("judged_again", [_reported_failing, _minimum_raised])
async def test_a_queued_upload_of_what_now_fails_is_revoked_and_skipped(
    rig: Rig, judged_again: Any
) -> None:
    record = passing(of_type("fqdn"))  # mscore 95
    await sync(rig, rig.worker(), record)  # queued; no uploader has taken it yet
    message, options = judged_again(record)
    never_queued = passing(of_type("url"))
    never_queued["mscore"] = 10
    outcome = await sync(rig, rig.worker(**options), message, never_queued)
    assert outcome["dropped_low_confidence"] == 2
    assert (outcome["forwarded_revoke"], outcome["revoked_low_confidence"]) == (1, 1)

    lineage = stix_id(record["id"], None)
    (revoke,) = await uploads_in(rig, URGENT)
    assert (revoke.stix_id, revoke.revoked, revoke.generation) == (lineage, True, 0)
    queued = await take(rig.bus, QUEUE, 1)
    prepared = await prepare(queued, rig.state, now=rig.clock.now, refresh_ratio=0.5)
    assert [item.stix_id for item in prepared.superseded] == [lineage]
    assert prepared.upload == []
    # Only a held claim is revoked: what was never queued costs nothing.
    assert await rig.state.claims([stix_id(never_queued["id"], None)]) == [None]


async def uploads_in(rig: Rig, queue: Queue) -> list[UploadRequest]:
    got = await take(rig.bus, queue, 1)
    await rig.bus.complete(queue, got)
    return [read_upload(delivery.body) for delivery in got]


async def test_a_record_judged_suppressed_leaves_a_queued_upload_alone(rig: Rig) -> None:
    """``suppress add`` takes the claims of what is queued itself. A batch judged while the
    indicator was still suppressed must not revoke what ``suppress remove`` queued since: the
    upload queued here stands for the removal's, the suppression for the batch's stale view."""
    record = passing(of_type("ipv4"))
    await sync(rig, rig.worker(), record)
    suppression = Suppression(record["id"], record["value"], "ipv4", "a test", datetime.now(UTC))
    await rig.state.suppressions.add(suppression)
    outcome = await sync(rig, rig.worker(), again(record))
    assert outcome["dropped_suppressed"] == 1
    assert outcome["forwarded_revoke"] == 0

    queued = await take(rig.bus, QUEUE, 1)
    prepared = await prepare(queued, rig.state, now=rig.clock.now, refresh_ratio=0.5)
    assert [item.stix_id for item in prepared.upload] == [stix_id(record["id"], None)]
