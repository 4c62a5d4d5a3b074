"""When an object is valid: ``valid_from``/``valid_until`` from the upload time and the type's
expiration, ``created`` from MATI's first sighting, drafts stamped afresh per request, and the
policy's seeds and checks, since a wrong expiration makes Sentinel drop indicators early or keep
them too long."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.core.filters import Observable
from shared.core.fingerprint import EXTENSION_ID, FINGERPRINT_PROPERTY, fingerprint
from shared.core.indicator import HashType
from shared.core.parsing import format_timestamp, parse_timestamp
from shared.core.stix import Draft, StixPolicy, UploadTime, content, indicator_object
from tests.unit.stix_rig import NOW, assert_valid_stix, observable, ours
from tests.unit.strategies import (
    PROPERTY,
    observables,
    stix_policies,
    text_observables,
    utc_datetimes,
)

# --- validity, creation and drafts ------------------------------------------------------------


@pytest.mark.parametrize(
    ("obs", "days"),
    [
        (observable("ipv4"), 7),
        (observable("fqdn"), 7),
        (observable("url"), 7),
        (observable("md5", HashType.MD5), 90),
        (observable("md5", HashType.SHA256), 90),
    ],
    ids=["ipv4", "fqdn", "url", "md5", "sha256"],
)
def test_valid_until_is_upload_time_plus_the_types_default_expiration(
    obs: Observable, days: int
) -> None:
    obj = indicator_object(obs, StixPolicy(), NOW)
    assert parse_timestamp(obj["valid_from"]) == NOW.replace(microsecond=123000)
    assert parse_timestamp(obj["valid_until"]) == NOW.replace(microsecond=123000) + timedelta(
        days=days
    )


def test_each_type_uses_its_own_expiration_setting() -> None:
    policy = StixPolicy(
        ipv4_expiration=timedelta(days=1),
        fqdn_expiration=timedelta(days=2),
        url_expiration=timedelta(days=3),
        hash_expiration=timedelta(days=4),
    )
    for days, obs in enumerate(
        [
            observable("ipv4"),
            observable("fqdn"),
            observable("url"),
            observable("md5", HashType.SHA1),
        ],
        start=1,
    ):
        assert policy.expiration_for(obs) == timedelta(days=days)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "2025-03-02T11:04:19.000Z"),
        ({"first_seen": None}, "2025-03-02T11:04:19.512Z"),
        ({"first_seen": None, "sources": []}, "2025-03-09T08:02:44.617Z"),
        ({"first_seen": None, "sources": [], "last_updated": None}, "2025-03-09T08:30:00.123Z"),
        ({"first_seen": "2026-01-01T00:00:00Z"}, "2025-03-09T08:30:00.123Z"),
    ],
    ids=["first-seen", "earliest-source", "last-updated", "now", "future-clamped"],
)
def test_created_is_matis_first_sighting_never_after_modified(
    changes: dict[str, object], expected: str
) -> None:
    obj = indicator_object(observable("ipv4", **changes), StixPolicy(), NOW)
    assert obj["created"] == expected
    assert str(obj["created"]) <= str(obj["modified"])
    assert_valid_stix(obj)


def test_a_reupload_moves_only_the_timestamps() -> None:
    first = indicator_object(observable("md5", HashType.SHA256), StixPolicy(), NOW)
    later = NOW + timedelta(days=3, seconds=1)
    second = indicator_object(observable("md5", HashType.SHA256), StixPolicy(), later)
    moved = {key for key in first if first[key] != second[key]}
    assert moved == {"modified", "valid_from", "valid_until"}


def test_a_naive_upload_time_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        indicator_object(observable(), StixPolicy(), datetime(2025, 3, 9))
    with pytest.raises(ValueError, match="aware"):
        UploadTime(datetime(2025, 3, 9))


def reference_object(obs: Observable, policy: StixPolicy, now: datetime) -> dict[str, object]:
    """The object as first written, straight from its definition: every timestamp formatted
    afresh, ``created`` clamped to ``now``."""
    body = content(obs, policy)
    indicator = obs.indicator
    sightings = [s.first_seen for s in indicator.sources if s.first_seen is not None]
    first = indicator.first_seen or (min(sightings) if sightings else indicator.last_updated)
    return {
        **body,
        "created": format_timestamp(min(first or now, now)),
        "modified": format_timestamp(now),
        "valid_from": format_timestamp(now),
        "valid_until": format_timestamp(now + policy.expiration_for(obs)),
        "extensions": {EXTENSION_ID: {**ours(body), FINGERPRINT_PROPERTY: fingerprint(body)}},
    }


@PROPERTY
@given(
    st.lists(st.one_of(observables(), text_observables()), min_size=1, max_size=4),
    stix_policies,
    st.lists(utc_datetimes, min_size=1, max_size=3),
)
def test_drafts_stamped_at_shared_upload_times_are_the_objects_of_their_definition(
    batch: list[Observable], policy: StixPolicy, times: list[datetime]
) -> None:
    """The uploader makes each object's draft once and stamps it per request (a retry, a split
    half: new times) with one ``UploadTime`` shared by the whole request."""
    drafts = [Draft.of(obs, policy) for obs in batch]
    for now in times:
        stamp = UploadTime(now)
        for obs, draft in zip(batch, drafts, strict=True):
            obj, valid_until = draft.at(stamp)
            assert obj == reference_object(obs, policy, now) == indicator_object(obs, policy, now)
            # What the seen cache keeps is what Sentinel stores: the text, read back.
            assert valid_until == parse_timestamp(obj["valid_until"])


def test_a_draft_takes_a_checked_id_instead_of_deriving_it() -> None:
    obs = observable()
    derived = Draft.of(obs, StixPolicy())
    given_id = Draft.of(obs, StixPolicy(), object_id=str(derived.body["id"]))
    assert given_id == derived


# --- policy -----------------------------------------------------------------------------------


def test_policy_defaults_are_the_seeds() -> None:
    policy = StixPolicy()
    assert (policy.ipv4_expiration, policy.fqdn_expiration, policy.url_expiration) == (
        timedelta(days=7),
    ) * 3
    assert policy.hash_expiration == timedelta(days=90)
    assert (policy.default_action, policy.passive_only) == ("alert", False)


@pytest.mark.parametrize("action", ["Alert", "deny", "", "alert "])
def test_default_action_must_be_alert_block_or_allow(action: str) -> None:
    with pytest.raises(ValueError, match="default_action"):
        StixPolicy(default_action=action)


@pytest.mark.parametrize(
    "field", ["ipv4_expiration", "fqdn_expiration", "url_expiration", "hash_expiration"]
)
@pytest.mark.parametrize("value", [timedelta(0), timedelta(microseconds=999), -timedelta(days=1)])
def test_an_expiration_must_be_at_least_a_millisecond(field: str, value: timedelta) -> None:
    with pytest.raises(ValueError, match="expiration"):
        replace(StixPolicy(), **{field: value})  # type: ignore[arg-type]
