"""DESIGN §4 seen cache: fingerprint stability and sensitivity, the compact Redis encoding,
and the forward decision (new, changed, refresh, unchanged)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.core.fingerprint import (
    EXTENSION_ID,
    FINGERPRINT_PROPERTY,
    MAX_GENERATION,
    VOLATILE_PROPERTIES,
    ForwardReason,
    SeenEntry,
    decide,
    fingerprint,
    refresh_after_for,
)
from tests.unit.strategies import PROPERTY, json_values, utc_datetimes

NOW = datetime(2025, 3, 9, 8, 0, tzinfo=UTC)
FP = "0123456789abcdef0123456789abcdef"
OTHER_FP = "fedcba9876543210fedcba9876543210"
WEEK = timedelta(days=7)
HALF_WEEK = WEEK / 2

CONTENT: dict[str, Any] = {
    "type": "indicator",
    "spec_version": "2.1",
    "id": "indicator--cc9148fb-9bec-5ded-97a3-46181d4f3f20",
    "name": "MATI ipv4 203.0.113.77",
    "pattern": "[ipv4-addr:value = '203.0.113.77']",
    "labels": ["FAKEGATE", "action:alert"],
    "confidence": 92,
    "external_references": [{"source_name": "Mandiant", "external_id": "ipv4--1"}],
    "extensions": {
        EXTENSION_ID: {
            "extension_type": "property-extension",
            "mati_id": "ipv4--1",
            "threat_score": 88,
        }
    },
}


def with_ours(**properties: Any) -> dict[str, Any]:
    """``CONTENT`` with ``properties`` set in our extension."""
    extension = {**CONTENT["extensions"][EXTENSION_ID], **properties}
    return {**CONTENT, "extensions": {EXTENSION_ID: extension}}


# --- fingerprint ------------------------------------------------------------------------------


def test_a_fingerprint_is_32_lower_case_hex_digits() -> None:
    value = fingerprint(CONTENT)
    assert len(value) == 32
    assert set(value) <= set("0123456789abcdef")


def test_the_fingerprint_algorithm_is_pinned() -> None:
    # Changing the algorithm changes every fingerprint, so the next sync re-uploads every
    # indicator of every workspace. If that is really meant, update this value knowingly.
    assert fingerprint({"type": "indicator", "labels": ["b", "a"]}) == (
        "a30ed6d96274d16d77588310283494e7"
    )


def test_key_order_does_not_matter_at_any_depth() -> None:
    shuffled = dict(reversed(CONTENT.items()))
    shuffled["external_references"] = [{"external_id": "ipv4--1", "source_name": "Mandiant"}]
    assert fingerprint(shuffled) == fingerprint(CONTENT)


@pytest.mark.parametrize("key", sorted(VOLATILE_PROPERTIES))
def test_volatile_properties_do_not_count(key: str) -> None:
    assert fingerprint({**CONTENT, key: "2030-01-01T00:00:00.000Z"}) == fingerprint(CONTENT)


def test_a_whole_uploaded_object_fingerprints_like_its_content() -> None:
    uploaded = {
        **CONTENT,
        "created": "2025-03-02T11:04:19.000Z",
        "modified": "2025-03-09T08:00:00.000Z",
        "valid_from": "2025-03-09T08:00:00.000Z",
        "valid_until": "2025-03-16T08:00:00.000Z",
        "extensions": with_ours(**{FINGERPRINT_PROPERTY: fingerprint(CONTENT)})["extensions"],
    }
    assert fingerprint(uploaded) == fingerprint(CONTENT)


@PROPERTY
@given(st.text(max_size=40))
def test_the_fingerprint_never_covers_itself(value: str) -> None:
    stamped = with_ours(**{FINGERPRINT_PROPERTY: value})
    assert fingerprint(stamped) == fingerprint(CONTENT)
    assert stamped["extensions"][EXTENSION_ID][FINGERPRINT_PROPERTY] == value  # not mutated


def test_only_our_extension_loses_its_fingerprint_property() -> None:
    other = "extension-definition--00000000-0000-5000-8000-000000000000"
    foreign = {**CONTENT, "extensions": {**CONTENT["extensions"], other: {"fingerprint": "a"}}}
    assert fingerprint(foreign) != fingerprint(CONTENT)
    assert fingerprint({**CONTENT, FINGERPRINT_PROPERTY: FP}) != fingerprint(CONTENT)


@pytest.mark.parametrize(
    "change",
    [
        {"pattern": "[ipv4-addr:value = '203.0.113.78']"},
        {"labels": ["FAKEGATE", "action:block"]},
        {"labels": ["action:alert", "FAKEGATE"]},
        {"confidence": 91},
        {"confidence": "92"},
        {"name": "MATI ipv4 203.0.113.77 "},
        {"id": "indicator--cc9148fb-9bec-5ded-97a3-46181d4f3f21"},
        with_ours(threat_score=87),
        with_ours(mati_id="ipv4--2"),
        {"extensions": {}},
        {"x_mati_threat_score": 88},
        {"external_references": [{"source_name": "Mandiant", "external_id": "ipv4--2"}]},
        {"revoked": True},
    ],
)
def test_any_change_of_content_changes_the_fingerprint(change: dict[str, Any]) -> None:
    assert fingerprint({**CONTENT, **change}) != fingerprint(CONTENT)


def test_dropping_a_property_changes_the_fingerprint() -> None:
    without = {key: value for key, value in CONTENT.items() if key != "confidence"}
    assert fingerprint(without) != fingerprint(CONTENT)


@PROPERTY
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_fingerprint_is_a_function_of_content_only(content: dict[str, Any]) -> None:
    again = dict(reversed(content.items()))
    assert fingerprint(again) == fingerprint(content)
    stable = {k: v for k, v in content.items() if k not in VOLATILE_PROPERTIES}
    assert fingerprint({**content, "modified": "x"}) == fingerprint(stable)


# --- SeenEntry --------------------------------------------------------------------------------


TAG = bytes.fromhex("0011223344556677")


def test_an_entry_round_trips_through_its_encoding() -> None:
    entry = SeenEntry(FP, datetime(2025, 3, 16, 8, 0, 0, 123000, tzinfo=UTC), TAG)
    data = entry.encode()
    # The stored format is pinned: a change makes every remembered indicator unreadable,
    # so the next sync re-uploads every workspace. If that is really meant, update knowingly.
    assert data == b"1ASNFZ4mrze8BI0VniavN7wARIjNEVWZ3AAABlZ33iHs"
    assert SeenEntry.decode(data) == entry


def test_an_entry_without_a_source_reads_back_without_one() -> None:
    entry = SeenEntry(FP, NOW)
    decoded = SeenEntry.decode(entry.encode())
    assert decoded == entry
    assert decoded is not None
    assert decoded.source == b""


@pytest.mark.parametrize("bad", [b"\x01", bytes(7), bytes(9), b"x" * 16])
def test_a_source_is_a_tag_or_nothing(bad: bytes) -> None:
    with pytest.raises(ValueError, match="source"):
        SeenEntry(FP, NOW, bad)


@pytest.mark.parametrize("year", [1, 1970, 2025, 9999])
def test_an_entry_stays_within_the_44_bytes_redis_embeds_in_its_object(year: int) -> None:
    assert len(SeenEntry(FP, datetime(year, 12, 31, tzinfo=UTC), TAG).encode()) == 44


def test_an_offset_valid_until_is_stored_as_the_same_instant() -> None:
    plus_two = datetime(2025, 3, 16, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    decoded = SeenEntry.decode(SeenEntry(FP, plus_two).encode())
    assert decoded is not None
    assert decoded.valid_until == plus_two
    assert decoded.valid_until.tzinfo is UTC


@PROPERTY
@given(st.datetimes(timezones=st.just(UTC)))
def test_encoding_keeps_valid_until_to_the_millisecond(valid_until: datetime) -> None:
    decoded = SeenEntry.decode(SeenEntry(FP, valid_until).encode())
    assert decoded is not None
    assert decoded.fingerprint == FP
    # Compared by difference: ``valid_until - 1 ms`` overflows at ``datetime.min``.
    assert timedelta(0) <= valid_until - decoded.valid_until < timedelta(milliseconds=1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        FP.encode(),
        FP.encode() + b":1742112000123",  # an earlier text format
        b"2ASNFZ4mrze8BI0VniavN7wARIjNEVWZ3AAABlZ33iHs",  # unknown format letter
        b"1ASNFZ4mrze8BI0VniavN7wARIjNEVWZ3AAABlZ33iH",  # one short
        b"1ASNFZ4mrze8BI0VniavN7wARIjNEVWZ3AAABlZ33iHss",  # one long
        b"1ASNFZ4mrze8BI0VniavN7wARIjNEVWZ3AAABlZ33+Hs",  # not base64url
        b"1ASNFZ4mrze8BI0VniavN7wARIjNEVWZ3AAABlZ33 Hs",
        b"1ASNFZ4mrze8BI0VniavN7wARIjNEVWZ3AAD__________",  # valid_until past year 9999
        b'{"fingerprint": "x"}',
    ],
)
def test_anything_encode_cannot_write_decodes_to_none(data: bytes) -> None:
    assert SeenEntry.decode(data) is None


@PROPERTY
@given(st.binary(max_size=80))
def test_decode_never_raises(data: bytes) -> None:
    decoded = SeenEntry.decode(data)
    assert decoded is None or SeenEntry.decode(decoded.encode()) == decoded


@pytest.mark.parametrize("bad", ["", "xyz", FP.upper(), FP + "0", FP[:-1], f"{FP[:-1]}:"])
def test_an_entry_needs_a_well_formed_fingerprint(bad: str) -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        SeenEntry(bad, NOW)


def test_an_entry_needs_an_aware_valid_until() -> None:
    with pytest.raises(ValueError, match="aware"):
        SeenEntry(FP, datetime(2025, 3, 16))


# --- decide -----------------------------------------------------------------------------------


def decide_at(
    seen: SeenEntry | None, fp: str = FP, elapsed: timedelta = timedelta(hours=4)
) -> ForwardReason | None:
    """The decision ``elapsed`` after an upload at NOW that was valid for a week."""
    now = NOW + elapsed
    return decide(seen, fp, now, now + WEEK, HALF_WEEK)


UPLOADED = SeenEntry(FP, NOW + WEEK)


def test_a_never_seen_indicator_is_new() -> None:
    assert decide_at(None) is ForwardReason.NEW


def test_an_unchanged_indicator_is_dropped() -> None:
    assert decide_at(UPLOADED) is None


def test_a_changed_fingerprint_is_changed() -> None:
    assert decide_at(UPLOADED, OTHER_FP) is ForwardReason.CHANGED


def test_an_unchanged_indicator_is_refreshed_once_half_its_validity_has_passed() -> None:
    assert decide_at(UPLOADED, elapsed=HALF_WEEK - timedelta(milliseconds=1)) is None
    assert decide_at(UPLOADED, elapsed=HALF_WEEK) is ForwardReason.REFRESH
    assert decide_at(UPLOADED, elapsed=WEEK - timedelta(milliseconds=1)) is ForwardReason.REFRESH


@pytest.mark.parametrize("elapsed", [WEEK, WEEK + timedelta(days=30)])
def test_an_entry_whose_valid_until_has_passed_is_new(elapsed: timedelta) -> None:
    assert decide_at(UPLOADED, elapsed=elapsed) is ForwardReason.NEW
    assert decide_at(UPLOADED, OTHER_FP, elapsed=elapsed) is ForwardReason.NEW


def test_a_change_wins_over_a_refresh() -> None:
    assert decide_at(UPLOADED, OTHER_FP, elapsed=HALF_WEEK) is ForwardReason.CHANGED


def test_a_shorter_new_expiration_never_refreshes_a_longer_upload() -> None:
    ninety_days = SeenEntry(FP, NOW + timedelta(days=90))
    later = NOW + timedelta(days=60)
    assert decide(ninety_days, FP, later, later + WEEK, HALF_WEEK) is None


def test_a_still_reported_hash_is_refreshed_twice_in_100_days_not_every_sync() -> None:
    hash_expiry = timedelta(days=90)
    refresh_after = refresh_after_for(hash_expiry, 0.5)
    entry = SeenEntry(FP, NOW + hash_expiry)
    forwarded: list[tuple[timedelta, ForwardReason]] = []
    for sync in range(1, 6 * 100 + 1):  # every 4 hours for 100 days
        now = NOW + sync * timedelta(hours=4)
        reason = decide(entry, FP, now, now + hash_expiry, refresh_after)
        if reason is not None:
            forwarded.append((now - NOW, reason))
            entry = SeenEntry(FP, now + hash_expiry)  # what the uploader writes back
    assert forwarded == [
        (timedelta(days=45), ForwardReason.REFRESH),
        (timedelta(days=90), ForwardReason.REFRESH),
    ]


@PROPERTY
@given(
    utc_datetimes,
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=200)),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=100)),
    st.booleans(),
)
def test_decide_follows_its_definition(
    uploaded_at: datetime, elapsed: timedelta, refresh_after: timedelta, same: bool
) -> None:
    entry = SeenEntry(FP, uploaded_at + WEEK)
    now = uploaded_at + elapsed
    reason = decide(entry, FP if same else OTHER_FP, now, now + WEEK, refresh_after)
    if elapsed >= WEEK:
        assert reason is ForwardReason.NEW
    elif not same:
        assert reason is ForwardReason.CHANGED
    else:
        assert reason is (ForwardReason.REFRESH if elapsed >= refresh_after else None)


# --- refresh_after_for ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expiration", "ratio", "expected"),
    [
        (WEEK, 0.5, HALF_WEEK),
        (timedelta(days=90), 0.5, timedelta(days=45)),
        (WEEK, 0.0, timedelta(0)),
        (WEEK, 1.0, WEEK),
        (timedelta(days=10), 0.25, timedelta(days=2, hours=12)),
    ],
)
def test_refresh_after_is_a_fraction_of_the_expiration(
    expiration: timedelta, ratio: float, expected: timedelta
) -> None:
    assert refresh_after_for(expiration, ratio) == expected


@pytest.mark.parametrize("ratio", [-0.1, 1.01, float("nan"), float("inf")])
def test_the_refresh_ratio_must_lie_in_0_to_1(ratio: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        refresh_after_for(WEEK, ratio)


@pytest.mark.parametrize("expiration", [timedelta(0), -WEEK])
def test_the_expiration_must_be_positive(expiration: timedelta) -> None:
    with pytest.raises(ValueError, match="expiration"):
        refresh_after_for(expiration, 0.5)


# -- revocation: generation and revoked ride in the valid_until field ---------------------


@PROPERTY
@given(
    utc_datetimes,
    st.booleans(),
    st.integers(min_value=0, max_value=MAX_GENERATION),
    st.sampled_from([b"", TAG]),
)
def test_revoked_and_generation_round_trip(
    valid_until: datetime, revoked: bool, generation: int, source: bytes
) -> None:
    valid_until = valid_until.replace(microsecond=valid_until.microsecond // 1000 * 1000)
    entry = SeenEntry(FP, valid_until, source, revoked, generation)
    data = entry.encode()
    assert len(data) == 44
    assert SeenEntry.decode(data) == entry


def test_an_entry_written_before_revocation_decodes_as_generation_0_not_revoked() -> None:
    # The pinned encoding above, as the code before revocation wrote it.
    decoded = SeenEntry.decode(b"1ASNFZ4mrze8BI0VniavN7wARIjNEVWZ3AAABlZ33iHs")
    assert decoded == SeenEntry(FP, datetime(2025, 3, 16, 8, 0, 0, 123000, tzinfo=UTC), TAG)
    assert decoded is not None
    assert (decoded.revoked, decoded.generation) == (False, 0)


def test_a_live_entry_encodes_exactly_as_before_revocation_existed() -> None:
    entry = SeenEntry(FP, datetime(2025, 3, 16, 8, 0, 0, 123000, tzinfo=UTC), TAG, False, 0)
    assert entry.encode() == b"1ASNFZ4mrze8BI0VniavN7wARIjNEVWZ3AAABlZ33iHs"


@pytest.mark.parametrize("generation", [-1, MAX_GENERATION + 1])
def test_a_generation_fits_its_bits(generation: int) -> None:
    with pytest.raises(ValueError, match="generation"):
        SeenEntry(FP, NOW, generation=generation)


def test_a_revoked_entry_is_not_live_and_moves_to_the_next_generation() -> None:
    entry = SeenEntry(FP, NOW + timedelta(days=1), revoked=True, generation=2)
    assert not entry.live(NOW)
    assert entry.next_generation() == 3
    unrevoked = SeenEntry(FP, NOW + timedelta(days=1), generation=2)
    assert unrevoked.live(NOW)
    assert not unrevoked.live(NOW + timedelta(days=1))
    assert unrevoked.next_generation() == 2


def test_a_revoked_entry_is_new_even_when_unchanged() -> None:
    entry = SeenEntry(FP, NOW + timedelta(days=5), revoked=True)
    assert decide(entry, FP, NOW, NOW + timedelta(days=7), timedelta(days=3)) is ForwardReason.NEW
