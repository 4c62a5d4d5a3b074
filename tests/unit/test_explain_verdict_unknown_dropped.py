"""``explain`` on an indicator that never reaches the upload queue: unknown to MATI, refused
by the parser, or dropped by a filter, named with its numbers and the setting to change, so the
operator knows whether to wait or to act."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.cli.explain_core import Verdict
from shared.core.filters import DropReason, FilterPolicy, HashSelection
from tests.unit.explain_rig import (
    AT,
    DEST,
    IPV4,
    IPV4_ID,
    OLD,
    POLICY,
    explain,
    found,
    refused,
    seen,
    unknown,
)
from tests.unit.strategies import example_record

# ---- not known, not readable ----------------------------------------------------------------


def test_unknown_says_so_and_has_nothing_to_show() -> None:
    answer = unknown()

    assert (
        answer.headline
        == "unknown to MATI: no indicator fqdn--00000000-0000-5000-8000-000000000000"
    )
    assert (answer.indicator, answer.stories) == (None, [])


def test_unknown_but_still_in_sentinel_from_an_earlier_upload() -> None:
    answer = explain(None, text=IPV4["id"], seen=seen(OLD, timedelta(days=3)))

    assert answer.verdict is Verdict.UNKNOWN
    (story,) = answer.stories
    assert (story.stix_id, story.verdict) == (IPV4_ID, Verdict.UPLOADED)
    assert story.summary.startswith("still in Sentinel from an earlier upload: uploaded ≈")


def test_refused_gives_the_parsers_reason_and_what_the_record_says() -> None:
    answer = refused()

    detail = "bad_field: 'value' must be a non-empty string, got number"
    assert answer.headline == f"refused by the parser: {detail}"
    assert answer.filter_detail == detail
    assert answer.indicator == {"id": IPV4["id"], "type": "ipv4", "value": 12345}


def test_an_accepted_record_refused_earlier_says_so() -> None:
    letter = found(entity=f"indicators/{DEST}", reason="invalid_record", description="bad_field")

    answer = explain(IPV4, refused=[letter])

    assert answer.verdict is Verdict.REFUSED
    assert answer.headline == f"refused by the parser: bad_field ({AT})"


# ---- dropped --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "policy", "reason", "detail"),
    [
        (
            {**IPV4, "mscore": 40},
            POLICY,
            DropReason.LOW_CONFIDENCE,
            "mscore 40 < MINIMUM_CONFIDENCE 80",
        ),
        (
            {**IPV4, "mscore": None},
            POLICY,
            DropReason.LOW_CONFIDENCE,
            "no mscore, and MINIMUM_CONFIDENCE 80 needs one",
        ),
        (
            {**IPV4, "threat_rating": {"threat_score": 10}},
            POLICY,
            DropReason.LOW_THREAT_SCORE,
            "threat_score 10 < MINIMUM_THREAT_SCORE 80",
        ),
        (
            {**IPV4, "threat_rating": None},
            POLICY,
            DropReason.LOW_THREAT_SCORE,
            "no threat_rating.threat_score, and MINIMUM_THREAT_SCORE 80 needs one",
        ),
        (
            example_record("url"),
            FilterPolicy(minimum_confidence=0, minimum_threat_score=0),
            DropReason.OSINT,
            "every source is OSINT (phishstats, urlhaus) and EXCLUDE_OSINT=true",
        ),
        (
            IPV4,
            FilterPolicy(include_ipv4=False),
            DropReason.TYPE_EXCLUDED,
            "type ipv4 is excluded (INCLUDE_IPV4=false)",
        ),
        (
            example_record("md5"),
            FilterPolicy(include_hash=False),
            DropReason.TYPE_EXCLUDED,
            "type md5 is excluded (INCLUDE_HASH=false)",
        ),
        (
            example_record("md5"),
            FilterPolicy(include_uncategorized=False),
            DropReason.UNCATEGORIZED,
            "no category, and INCLUDE_UNCATEGORIZED=false",
        ),
        (
            {**example_record("md5"), "associated_hashes": []},
            FilterPolicy(hash_selection=HashSelection.SHA256),
            DropReason.HASH_TYPE_MISSING,
            "no sha256 hash in associated_hashes (HASH_TYPE=sha256)",
        ),
    ],
)
def test_dropped_names_the_filter_the_numbers_and_the_setting(
    record: dict[str, Any], policy: FilterPolicy, reason: DropReason, detail: str
) -> None:
    answer = explain(record, policy=policy)

    assert answer.verdict is Verdict.DROPPED
    assert (answer.filter_reason, answer.filter_detail) == (reason.value, detail)
    assert answer.headline == f"dropped by {reason}: {detail}"
    assert answer.stories == []


def test_a_drop_is_never_blamed_on_mati() -> None:
    """The fetcher pushes no filter down (a record that stops passing must be fetched to be
    revoked), so no drop is said to happen server-side."""
    record = {**IPV4, "mscore": None, "threat_rating": None, "sources": []}
    for policy in (POLICY, FilterPolicy(minimum_confidence=0)):
        assert "server-side" not in explain(record, policy=policy).headline


def test_dropped_leaves_its_raw_messages_in_notes_and_its_uploads_in_stories() -> None:
    waiting = found(entity=f"indicators/{DEST}")
    refused_earlier = found(entity=f"indicators/{DEST}", description="bad_field")

    answer = explain(
        IPV4,
        policy=FilterPolicy(include_ipv4=False),
        waiting=[waiting],
        refused=[refused_earlier],
        seen=seen(OLD, timedelta(days=3)),
    )

    assert answer.verdict is Verdict.DROPPED
    assert answer.notes == [
        f"a raw message waits for the filter in indicators/{DEST} since {AT}",
        f"refused by the parser earlier: bad_field ({AT})",
    ]
    (story,) = answer.stories
    assert story.verdict is Verdict.UPLOADED
    assert not story.accepted
    assert story.summary.startswith("still in Sentinel from an earlier upload")
