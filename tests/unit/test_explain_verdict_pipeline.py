"""``explain`` on an indicator the filters accept: on its way (waiting, queued, in flight),
in Sentinel (up to date or stale), set aside (rejected, dead-lettered), or nowhere, with what
the checkpoint means for when it comes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.cli.explain_core import Verdict
from services.uploader.reasons import MALFORMED_MESSAGE, REJECTED_BY_SENTINEL
from shared.core.parsing import format_timestamp
from tests.unit.explain_rig import (
    AT,
    DEST,
    IPV4,
    IPV4_ID,
    NOW,
    OLD,
    SENTINEL_MESSAGE,
    STIX,
    current,
    explain,
    found,
    in_flight,
    queued,
    rejected,
    seen,
    stale,
    uploaded,
    waiting_for_filter,
)

# ---- on its way -----------------------------------------------------------------------------


def test_waiting_for_the_filter_names_the_subscription() -> None:
    assert waiting_for_filter().headline == (
        f"waiting for the filter in indicators/{DEST} since {AT}"
    )


def test_queued_says_since_when_and_why_it_was_forwarded() -> None:
    answer = queued()

    assert answer.headline == f"queued for upload in upload.{DEST} since {AT}, new"
    (story,) = answer.stories
    assert (story.stix_id, story.fingerprint) == (IPV4_ID, current(IPV4))


def test_in_flight_while_an_uploader_holds_it() -> None:
    assert in_flight().headline == f"in flight: an uploader holds it (upload.{DEST}, queued {AT})"


def test_in_flight_when_only_its_claim_is_found() -> None:
    fp = current(IPV4)

    answer = explain(IPV4, claims={IPV4_ID: fp})

    assert answer.verdict is Verdict.IN_FLIGHT
    assert answer.headline == (
        f"in flight: claimed for upload (fingerprint {fp[:12]}…), its message not among the "
        f"messages scanned in upload.{DEST} and revoke.{DEST}"
    )
    assert answer.stories[0].claim == fp


def test_a_revocation_in_the_priority_lane_names_the_lane() -> None:
    """What a suppression or a failing record queued waits in ``revoke.<d>``, not the
    upload queue: explain says where it is, and held there is in flight like anywhere."""
    lane = f"revoke.{DEST}"
    queued_there = [found(stix_id=IPV4_ID, entity=lane, forward_reason="revoke")]
    answer = explain(IPV4, seen=seen(current(IPV4), timedelta(days=6)), queued=queued_there)
    assert answer.headline == f"queued for upload in {lane} since {AT}, revoke"
    held = [found(stix_id=IPV4_ID, entity=lane, locked=True)]
    assert explain(IPV4, queued=held).headline == (
        f"in flight: an uploader holds it ({lane}, queued {AT})"
    )


def test_a_queued_message_is_more_current_than_a_seen_entry() -> None:
    answer = explain(
        IPV4,
        seen=seen(OLD, timedelta(days=6)),
        queued=[found(stix_id=IPV4_ID, forward_reason="changed")],
    )

    assert answer.verdict is Verdict.QUEUED
    assert answer.headline.endswith(", changed")


# ---- in Sentinel ----------------------------------------------------------------------------


def test_uploaded_and_up_to_date_says_when_and_until_when() -> None:
    answer = uploaded()

    until = NOW + timedelta(days=6)
    at = format_timestamp(until - STIX.ipv4_expiration)
    assert answer.headline == f"uploaded ≈{at}, valid until {format_timestamp(until)}; up to date"
    (story,) = answer.stories
    assert (story.uploaded_fingerprint, story.uploaded_at_approx) == (current(IPV4), at)
    assert story.valid_until == format_timestamp(until)


def test_uploaded_with_a_refresh_due() -> None:
    """6 of 7 days gone: past the refresh ratio of 0.5."""
    answer = explain(IPV4, seen=seen(current(IPV4), timedelta(days=1)))

    assert answer.verdict is Verdict.UPLOADED
    assert answer.headline.endswith("up to date; a refresh is due (the next sync re-uploads it)")


def test_a_seen_entry_past_its_valid_until_counts_for_nothing() -> None:
    answer = explain(IPV4, seen=seen(current(IPV4), timedelta(seconds=-1)))

    assert answer.verdict is Verdict.NOT_UPLOADED


def test_stale_names_both_fingerprints() -> None:
    fp = current(IPV4)

    answer = stale()

    assert f"MATI's current version differs (fingerprint {fp[:12]}… ≠ {OLD[:12]}…)" in (
        answer.headline
    )
    assert answer.headline.endswith("the next sync that reports it uploads it")


# ---- set aside ------------------------------------------------------------------------------


def test_rejected_by_sentinel_with_its_message() -> None:
    assert rejected().headline == f"rejected by Sentinel: {SENTINEL_MESSAGE} ({AT})"


def test_dead_lettered_by_the_uploader_for_its_own_reason() -> None:
    letter = found(stix_id=IPV4_ID, reason=MALFORMED_MESSAGE, description="not JSON")

    answer = explain(IPV4, rejected=[letter])

    assert answer.verdict is Verdict.REJECTED
    assert (
        answer.headline == f"dead-lettered by the uploader ({MALFORMED_MESSAGE}): not JSON ({AT})"
    )


def test_a_newer_version_rejected_while_the_older_one_stays_in_sentinel() -> None:
    letter = found(
        stix_id=IPV4_ID,
        fingerprint=current(IPV4),
        reason=REJECTED_BY_SENTINEL,
        description=SENTINEL_MESSAGE,
    )

    answer = explain(IPV4, seen=seen(OLD, timedelta(days=6)), rejected=[letter])

    assert answer.verdict is Verdict.REJECTED
    assert answer.headline.startswith(f"rejected by Sentinel: {SENTINEL_MESSAGE} ({AT}) (the ")
    assert answer.headline.endswith("stays)")


# ---- nowhere --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checkpoint", "ending"),
    [
        (None, ": the next sync that fetches it uploads it"),
        (
            datetime(2025, 3, 9, tzinfo=UTC),
            ": MATI updated it at 2025-03-09T08:02:44.617Z, after the checkpoint, so the next "
            "sync does",
        ),
        (
            NOW,
            ": MATI last updated it at 2025-03-09T08:02:44.617Z, before the checkpoint "
            f"{format_timestamp(NOW)}, so no sync fetches it until MATI reports it again",
        ),
    ],
)
def test_nowhere_says_what_the_checkpoint_means(checkpoint: datetime | None, ending: str) -> None:
    answer = explain(IPV4, checkpoint=checkpoint)

    assert answer.verdict is Verdict.NOT_UPLOADED
    assert answer.headline == "not in Sentinel and not on its way" + ending
