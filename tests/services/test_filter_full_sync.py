"""A full sync's records (``sync=full``) are re-judged, not reported again: what changed is
updated, what is live and unchanged uploads nothing even past its refresh point, and what the
workspace let expire comes back only if MATI's last report of it is still within its
expiration."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.contract.messages import raw_message
from shared.core.fingerprint import ForwardReason
from tests.services.filter_rig import Rig, commit, expected, of_type, passing, sync, uploads


def reported(record: dict[str, Any], at: datetime) -> dict[str, Any]:
    return {**record, "last_updated": at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}


async def test_a_full_sync_updates_what_changed_and_brings_back_nothing_stale(rig: Rig) -> None:
    worker = rig.worker(refresh_ratio=0.5)
    now = rig.clock.now
    live, changing = passing(of_type("ipv4")), passing(of_type("fqdn"))
    await sync(rig, worker, live, changing)
    first = await uploads(rig.bus)
    # Uploaded four days ago with a week's validity: past the refresh point of a normal sync.
    await commit(rig, first, now + timedelta(days=3))

    never_seen_recent = reported(passing(of_type("ipv4", 1)), now - timedelta(days=2))
    never_seen_old = reported(passing(of_type("ipv4", 2)), now - timedelta(days=8))
    changed = {**changing, "mscore": 99}
    records = [live, changed, never_seen_recent, never_seen_old]
    full = [raw_message(r, run_id="full-1", full=True) for r in records]
    outcome = await sync(rig, worker, *full)

    assert outcome["dropped_unchanged"] == 1  # live: no refresh from a full sync
    assert outcome["dropped_stale"] == 1  # last reported 8 days ago, a week's expiration
    assert (outcome["forwarded_changed"], outcome["forwarded_new"]) == (1, 1)
    forwarded = {(r.stix_id, r.fingerprint, r.reason) for r in await uploads(rig.bus)}
    assert forwarded == {
        (*expected(changed), ForwardReason.CHANGED),
        (*expected(never_seen_recent), ForwardReason.NEW),
    }

    # The same records from a normal sync are MATI reporting them again: the live one is
    # refreshed and the old one, reported now, is new.
    again = [reported(r, now) for r in (live, never_seen_old)]
    normal = await sync(rig, worker, *again)
    assert (normal["forwarded_refresh"], normal["forwarded_new"]) == (1, 1)
