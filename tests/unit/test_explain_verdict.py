"""``explain``'s verdict on plain data: the facts ``gather`` would read (a MATI record, seen
entries, claims, messages found in queues and dead-letter queues) built by hand, and ``judge``
asked where the indicator is. Every ``Verdict`` has a case here; ``tests/services`` proves the
facts are read right from real Redis, bus and MATI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.cli.explain_core import Explanation, Facts, Found, Scan, Verdict, judge, read_query
from services.fetcher.pushdown import PushDown
from services.uploader.reasons import MALFORMED_MESSAGE, REJECTED_BY_SENTINEL
from shared.core.filters import DropReason, FilterPolicy, HashSelection, evaluate
from shared.core.fingerprint import SeenEntry, fingerprint
from shared.core.indicator import HashType
from shared.core.parsing import format_timestamp
from shared.core.stix import StixPolicy, content, stix_id
from tests.unit.strategies import example_indicator, example_record, must_parse

DEST = "soc"
#: A day after the §6 examples' ``last_updated`` (2025-03-09).
NOW = datetime(2025, 3, 10, 12, tzinfo=UTC)
AT = "2025-03-10T11:00:00.000Z"
POLICY = FilterPolicy()
STIX = StixPolicy()
RATIO = 0.5
OLD = "0" * 32
SENTINEL_MESSAGE = "Error for Property=pattern: The pattern is invalid"
IPV4 = example_record("ipv4")
IPV4_ID = stix_id(IPV4["id"], None)


def explain(
    record: dict[str, Any] | None,
    *,
    text: str | None = None,
    policy: FilterPolicy = POLICY,
    **facts: Any,
) -> Explanation:
    """``judge`` on ``record`` as MATI holds it now and ``facts`` as ``gather`` would read them;
    the operator typed ``text``, or the record's id."""
    query = read_query(text or str(record and record["id"]))
    return judge(query, Facts(NOW, DEST, record, **facts), policy, STIX, RATIO)


def current(record: dict[str, Any], policy: FilterPolicy = POLICY) -> str:
    """The fingerprint of what the filters would upload for ``record`` now (its first STIX id)."""
    observables = evaluate(must_parse(record), policy)
    assert isinstance(observables, tuple)
    return fingerprint(content(observables[0], STIX))


def found(**fields: Any) -> Found:
    return Found(**{"entity": f"upload.{DEST}", "message_id": "m-1", "at": AT, **fields})


def seen(fp: str, valid_for: timedelta) -> dict[str, SeenEntry | None]:
    return {IPV4_ID: SeenEntry(fp, NOW + valid_for)}


# ---- one case per verdict -------------------------------------------------------------------


def unknown() -> Explanation:
    return explain(None, text="fqdn--00000000-0000-5000-8000-000000000000")


def refused() -> Explanation:
    return explain({**IPV4, "value": 12345})


def dropped() -> Explanation:
    return explain({**IPV4, "mscore": 40})


def waiting_for_filter() -> Explanation:
    return explain(IPV4, waiting=[found(entity=f"indicators/{DEST}")])


def queued() -> Explanation:
    return explain(IPV4, queued=[found(stix_id=IPV4_ID, forward_reason="new")])


def in_flight() -> Explanation:
    return explain(IPV4, queued=[found(stix_id=IPV4_ID, locked=True)])


def uploaded() -> Explanation:
    return explain(IPV4, seen=seen(current(IPV4), timedelta(days=6)))


def stale() -> Explanation:
    return explain(IPV4, seen=seen(OLD, timedelta(days=6)))


def rejected() -> Explanation:
    letter = found(stix_id=IPV4_ID, reason=REJECTED_BY_SENTINEL, description=SENTINEL_MESSAGE)
    return explain(IPV4, rejected=[letter])


def not_uploaded() -> Explanation:
    return explain(IPV4)


CASES: dict[Verdict, Callable[[], Explanation]] = {
    Verdict.UNKNOWN: unknown,
    Verdict.REFUSED: refused,
    Verdict.DROPPED: dropped,
    Verdict.WAITING_FOR_FILTER: waiting_for_filter,
    Verdict.QUEUED: queued,
    Verdict.IN_FLIGHT: in_flight,
    Verdict.UPLOADED: uploaded,
    Verdict.STALE: stale,
    Verdict.REJECTED: rejected,
    Verdict.NOT_UPLOADED: not_uploaded,
}


def test_every_verdict_has_a_case() -> None:
    assert set(CASES) == set(Verdict)


@pytest.mark.parametrize("verdict", list(Verdict))
def test_each_case_gets_its_verdict(verdict: Verdict) -> None:
    answer = CASES[verdict]()

    assert answer.verdict is verdict
    assert answer.destination == DEST
    assert answer.checked_at == format_timestamp(NOW)


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
            "mscore 40 < MINIMUM_CONFIDENCE 80; MATI leaves it out server-side (gte_mscore=80), "
            "so it is never fetched",
        ),
        (
            {**IPV4, "mscore": None},
            POLICY,
            DropReason.LOW_CONFIDENCE,
            "no mscore, and MINIMUM_CONFIDENCE 80 needs one; MATI leaves it out server-side "
            "(gte_mscore=80), so it is never fetched",
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
            "every source is OSINT (phishstats, urlhaus) and EXCLUDE_OSINT=true; MATI leaves it "
            "out server-side (exclude_osint=true), so it is never fetched",
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


def test_a_drop_is_blamed_on_mati_exactly_when_the_fetchers_query_leaves_it_out() -> None:
    """The one definition of the push-down decides: a minimum of 0 is not sent as a filter,
    so nothing is said to be left out server-side."""
    record = {**IPV4, "mscore": None, "threat_rating": None}
    for policy in (POLICY, FilterPolicy(minimum_confidence=0)):
        answer = explain(record, policy=policy)
        server_side = PushDown.of(policy).leaves_out(must_parse(record))
        assert ("MATI leaves it out server-side" in answer.headline) is (server_side is not None)
        if server_side is not None:
            assert f"({server_side})" in answer.headline


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
        f"messages scanned in upload.{DEST}"
    )
    assert answer.stories[0].claim == fp


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


# ---- several STIX ids, cut scans ------------------------------------------------------------


def test_the_stix_id_that_needs_attention_leads() -> None:
    """``HASH_TYPE=all``: one STIX id per hash; one rejected outranks the others uploaded."""
    record = example_record("md5")
    policy = FilterPolicy(hash_selection=HashSelection.ALL)
    indicator = example_indicator("md5")
    observables = evaluate(indicator, policy)
    assert isinstance(observables, tuple)
    ids = {o.hash_type: stix_id(indicator.id, o.hash_type) for o in observables}
    fps = {o.hash_type: fingerprint(content(o, STIX)) for o in observables}
    until = NOW + timedelta(days=80)
    letter = found(
        stix_id=ids[HashType.SHA1], reason=REJECTED_BY_SENTINEL, description=SENTINEL_MESSAGE
    )

    answer = explain(
        record,
        policy=policy,
        seen={ids[h]: SeenEntry(fps[h], until) for h in (HashType.MD5, HashType.SHA256)},
        rejected=[letter],
    )

    assert answer.verdict is Verdict.REJECTED
    assert answer.filter_detail == "accepted as 3 STIX indicator(s)"
    verdicts = {s.hash_type: s.verdict for s in answer.stories}
    assert verdicts == {
        "md5": Verdict.UPLOADED,
        "sha1": Verdict.REJECTED,
        "sha256": Verdict.UPLOADED,
    }


def test_a_cut_scan_is_noted() -> None:
    scans = [Scan(f"upload.{DEST}", 1, True), Scan(f"indicators/{DEST}", 0, False)]

    answer = explain(IPV4, scans=scans)

    assert answer.notes == [f"upload.{DEST}: only the first 1 were scanned"]


def test_the_answer_is_json_with_the_verdicts_value() -> None:
    answer = replace(not_uploaded(), notes=["n"])

    assert b'"verdict": "not_uploaded"' in answer.to_json()
