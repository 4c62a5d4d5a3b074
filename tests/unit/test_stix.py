"""STIX 2.1 mapping: deterministic ids, escaped single-comparison patterns, the indicator
object Sentinel receives, and both upload body shapes. The OASIS validator and the OASIS
``stix2`` library are the judges of validity, not our own reading of the spec.

Validator quirk found while writing these tests (stix2-patterns 2.1.2): besides the grammar, it
checks hash literals against the algorithm (``file:hashes.'MD5'`` must match
``^[a-fA-F0-9]{32}$``, SHA-1 40 and SHA-256 64 hex digits) and fails the pattern otherwise. So
"any string" only holds for ipv4/fqdn/url values; hash values are drawn as hex of the right
length, which is also what ``parse_indicator`` guarantees. The string grammar itself accepts
every code point once ``\\`` and ``'`` are escaped (all of U+0000..U+10FFFF checked by hand,
surrogates and control characters included), so nothing else is filtered. Lone surrogates never
reach us anyway: orjson refuses them when decoding MATI's body.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

import pytest
import stix2
from hypothesis import given
from hypothesis import strategies as st
from stix2patterns.pattern import Pattern
from stix2patterns.validator import run_validator

from shared.core.filters import Observable, ObservableKind
from shared.core.fingerprint import EXTENSION_ID, FINGERPRINT_PROPERTY, fingerprint
from shared.core.indicator import Association, HashType, Indicator, IndicatorType, Source
from shared.core.parsing import format_timestamp, parse_timestamp
from shared.core.stix import (
    EXTENSION_NAME,
    MAX_OBJECTS_PER_REQUEST,
    NAMESPACE,
    Draft,
    SentinelApi,
    StixPolicy,
    UploadTime,
    check_source_system,
    content,
    escape,
    indicator_object,
    pattern,
    stix_id,
    unescape,
    upload_body,
)
from tests.unit.strategies import (
    PROPERTY,
    example_indicator,
    hex_digests,
    observables,
    stix_policies,
    text_observables,
    utc_datetimes,
)

NOW = datetime(2025, 3, 9, 8, 30, 0, 123456, tzinfo=UTC)
MD5 = "b3becab76a6d36861357bfa3fe966003"
SHA1 = "537f7341e42b72c88032e89aafa94ce5861f2e2a"
SHA256 = "268791330e6cf922e1c53392031cfcbe203630e416342e5503d39f402b6f0ca5"


def observable(
    kind: str = "ipv4", hash_type: HashType | None = None, /, **changes: object
) -> Observable:
    indicator = example_indicator(kind, **changes)
    if hash_type is None:
        return Observable(indicator, ObservableKind(kind), indicator.value)
    value = indicator.hash_value(hash_type)
    assert value is not None
    return Observable(indicator, ObservableKind.HASH, value, hash_type)


def of(indicator: Indicator) -> Observable:
    return Observable(indicator, ObservableKind(indicator.type), indicator.value)


def literal(stix_pattern: str) -> str:
    """The string literal of a single-comparison pattern, read by the OASIS parser."""
    comparisons = Pattern(stix_pattern).inspect().comparisons
    [(_, _, quoted)] = next(iter(comparisons.values()))
    assert quoted[0] == quoted[-1] == "'"
    return str(quoted[1:-1])


def _register_our_extension() -> type:
    """Our property extension, registered with ``stix2`` (its documented custom-extension API)
    so that parsing checks its properties too. Only this extension: nothing else custom is
    allowed (no ``allow_custom``), so a top-level ``x_`` property fails the parse.

    ``stix2`` would also accept the extension unregistered, as a plain dict it never looks
    into; registered, an unknown, missing or ill-typed property of ours fails the parse."""

    @stix2.v21.CustomExtension(
        EXTENSION_ID,
        [
            ("mati_id", stix2.properties.StringProperty(required=True)),
            ("threat_score", stix2.properties.IntegerProperty(min=0, max=100)),
            (FINGERPRINT_PROPERTY, stix2.properties.StringProperty(required=True)),
        ],
    )
    class MatiProperties:
        extension_type = "property-extension"

    return MatiProperties


MatiProperties: Final = _register_our_extension()


def ours(obj: Mapping[str, object]) -> dict[str, object]:
    """Our extension of ``obj``."""
    extensions = obj["extensions"]
    assert isinstance(extensions, dict)
    found = extensions[EXTENSION_ID]
    assert isinstance(found, dict)
    return found


def assert_valid_stix(obj: dict[str, object]) -> None:
    """Valid STIX 2.1 for the OASIS library, strictly: no custom property but our extension."""
    parsed = stix2.parse(obj)
    assert isinstance(parsed, stix2.v21.Indicator)
    assert parsed.id == obj["id"]
    assert parsed.pattern == obj["pattern"]
    assert isinstance(parsed.extensions[EXTENSION_ID], MatiProperties)
    # stix2 fills in a fixed extension_type that is missing and coerces "88" to 88: check ours.
    extension = ours(obj)
    assert extension["extension_type"] == "property-extension"
    assert type(extension.get("threat_score", 0)) is int
    assert not [key for key in obj if key.startswith("x_")]


# --- ids --------------------------------------------------------------------------------------


def test_the_namespace_is_pinned() -> None:
    # Changing NAMESPACE re-keys every indicator in every workspace (duplicates, not updates).
    assert uuid.UUID("1d560667-65d4-4cea-95f3-a08aad09ffae") == NAMESPACE


def test_the_extension_id_is_pinned_and_derived_from_the_namespace() -> None:
    # Objects already in a workspace carry this id: changing it orphans their properties.
    assert EXTENSION_ID == "extension-definition--8b329901-f0cd-573b-8581-99c3f0668664"
    assert f"extension-definition--{uuid.uuid5(NAMESPACE, EXTENSION_NAME)}" == EXTENSION_ID
    assert EXTENSION_NAME == "mati2sentinel/mati-properties"


def test_a_top_level_custom_property_fails_the_strict_parse() -> None:
    # What assert_valid_stix guards against: product data back at the top level.
    obj = {**indicator_object(observable(), StixPolicy(), NOW), "x_mati_id": "ipv4--1"}
    with pytest.raises(stix2.exceptions.ExtraPropertiesError):
        stix2.parse(obj)


@pytest.mark.parametrize(
    "change",
    [{"threat_score": 101}, {"unknown": 1}, {"mati_id": None}],
    ids=["score out of range", "unknown property", "no mati id"],
)
def test_the_registered_extension_is_checked_by_the_parse(change: dict[str, object]) -> None:
    obj = indicator_object(observable(), StixPolicy(), NOW)
    extension = {k: v for k, v in {**ours(obj), **change}.items() if v is not None}
    with pytest.raises(stix2.exceptions.STIXError):
        stix2.parse({**obj, "extensions": {EXTENSION_ID: extension}})


def test_stix_ids_are_uuid5_of_the_mati_id_and_pinned() -> None:
    mati_id = "ipv4--451fa3ec-72a4-58b6-bf12-e81aa2ff95a6"
    assert stix_id(mati_id, None) == "indicator--cc9148fb-9bec-5ded-97a3-46181d4f3f20"
    assert stix_id(mati_id, None) == f"indicator--{uuid.uuid5(NAMESPACE, mati_id)}"
    assert uuid.UUID(stix_id(mati_id, None).removeprefix("indicator--")).version == 5


def test_each_hash_of_one_indicator_has_its_own_id() -> None:
    mati_id = "md5--05aa3630-6857-5301-9955-0bad95077e4b"
    ids = {stix_id(mati_id, None)} | {stix_id(mati_id, h) for h in HashType}
    assert len(ids) == 4
    assert (
        stix_id(mati_id, HashType.SHA1) == f"indicator--{uuid.uuid5(NAMESPACE, mati_id + ':sha1')}"
    )


@PROPERTY
@given(st.text(), st.sampled_from([None, *HashType]))
def test_stix_ids_are_exactly_uuid5_for_any_id(mati_id: str, hash_type: HashType | None) -> None:
    # stix_id builds the uuid5 text itself (no UUID object): it must never drift from uuid5.
    name = mati_id if hash_type is None else f"{mati_id}:{hash_type}"
    assert stix_id(mati_id, hash_type) == f"indicator--{uuid.uuid5(NAMESPACE, name)}"


def test_ids_are_deterministic_across_calls_and_objects() -> None:
    first = indicator_object(observable(), StixPolicy(), NOW)
    second = indicator_object(observable(), StixPolicy(), NOW + timedelta(days=3))
    assert (
        first["id"] == second["id"] == stix_id("ipv4--451fa3ec-72a4-58b6-bf12-e81aa2ff95a6", None)
    )


# --- escaping and patterns --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("plain", "plain"),
        ("", ""),
        ("a'b", "a\\'b"),
        ("a\\b", "a\\\\b"),
        ("\\'", "\\\\\\'"),
        ("C:\\a'b", "C:\\\\a\\'b"),
        ("''", "\\'\\'"),
        ('"', '"'),
        ("\n\t\x00é😀", "\n\t\x00é😀"),
    ],
)
def test_escape_doubles_backslashes_then_escapes_quotes(value: str, escaped: str) -> None:
    assert escape(value) == escaped
    assert unescape(escaped) == value


@pytest.mark.parametrize("bad", ["'", "a'b", "\\", "a\\", "\\n", "\\\\\\", "\\x27"])
def test_unescape_refuses_what_escape_cannot_write(bad: str) -> None:
    with pytest.raises(ValueError, match="STIX string literal"):
        unescape(bad)


@pytest.mark.parametrize(
    ("obs", "expected"),
    [
        (observable("ipv4"), "[ipv4-addr:value = '203.0.113.77']"),
        (observable("fqdn"), "[domain-name:value = 'update-cdn-sync.example']"),
        (observable("url"), "[url:value = 'http://update-cdn-sync.example/gate.php?id=7']"),
        (observable("md5", HashType.MD5), f"[file:hashes.'MD5' = '{MD5}']"),
        (observable("md5", HashType.SHA1), f"[file:hashes.'SHA-1' = '{SHA1}']"),
        (observable("md5", HashType.SHA256), f"[file:hashes.'SHA-256' = '{SHA256}']"),
    ],
    ids=["ipv4", "fqdn", "url", "md5", "sha1", "sha256"],
)
def test_each_pattern_form_is_a_valid_single_comparison(obs: Observable, expected: str) -> None:
    assert pattern(obs) == expected
    assert run_validator(expected, stix_version="2.1") == []
    assert len(Pattern(expected).inspect().comparisons) == 1


def test_a_url_with_quotes_and_backslashes_is_escaped_in_the_pattern() -> None:
    url = "http://x.example/a'b\\c"
    obs = observable("url", value=url)
    assert pattern(obs) == "[url:value = 'http://x.example/a\\'b\\\\c']"
    assert run_validator(pattern(obs)) == []


@PROPERTY
@given(text_observables())
def test_any_text_value_gives_a_valid_pattern_whose_literal_is_the_value(obs: Observable) -> None:
    stix_pattern = pattern(obs)
    assert run_validator(stix_pattern, stix_version="2.1") == []
    assert unescape(literal(stix_pattern)) == obs.value


@PROPERTY
@given(st.sampled_from(list(HashType)).flatmap(lambda h: st.tuples(st.just(h), hex_digests(h))))
def test_any_well_formed_hash_gives_a_valid_pattern(drawn: tuple[HashType, str]) -> None:
    hash_type, digest = drawn
    indicator = Indicator(id="md5--1", type=IndicatorType.MD5, value="0" * 32)
    stix_pattern = pattern(Observable(indicator, ObservableKind.HASH, digest, hash_type))
    assert run_validator(stix_pattern, stix_version="2.1") == []
    assert literal(stix_pattern) == digest


def test_the_validator_refuses_a_malformed_hash_literal() -> None:
    # Why hash values are validated at parsing (see module docstring).
    indicator = Indicator(id="md5--1", type=IndicatorType.MD5, value="0" * 32)
    bad = pattern(Observable(indicator, ObservableKind.HASH, "not-a-hash", HashType.SHA256))
    assert run_validator(bad) != []


# --- the indicator object ---------------------------------------------------------------------


def test_the_ipv4_example_maps_to_this_exact_object() -> None:
    obj = indicator_object(observable("ipv4"), StixPolicy(), NOW)
    body = content(observable("ipv4"), StixPolicy())
    assert obj == {
        "type": "indicator",
        "spec_version": "2.1",
        "id": "indicator--cc9148fb-9bec-5ded-97a3-46181d4f3f20",
        "created": "2025-03-02T11:04:19.000Z",
        "modified": "2025-03-09T08:30:00.123Z",
        "valid_from": "2025-03-09T08:30:00.123Z",
        "valid_until": "2025-03-16T08:30:00.123Z",
        "name": "MATI ipv4 203.0.113.77",
        "description": (
            "Mandiant Advantage Threat Intelligence ipv4 indicator "
            "ipv4--451fa3ec-72a4-58b6-bf12-e81aa2ff95a6; IC-Score 92; threat score 88; "
            "categories: control-server; malware: FAKEGATE."
        ),
        "indicator_types": ["malicious-activity"],
        "pattern": "[ipv4-addr:value = '203.0.113.77']",
        "pattern_type": "stix",
        "pattern_version": "2.1",
        "confidence": 92,
        "labels": ["FAKEGATE", "action:alert", "control-server"],
        "external_references": [
            {
                "source_name": "Mandiant",
                "external_id": "ipv4--451fa3ec-72a4-58b6-bf12-e81aa2ff95a6",
                "url": "https://advantage.mandiant.com/indicator/ipv4--451fa3ec-72a4-58b6-bf12-e81aa2ff95a6",
            }
        ],
        "extensions": {
            "extension-definition--8b329901-f0cd-573b-8581-99c3f0668664": {
                "extension_type": "property-extension",
                "mati_id": "ipv4--451fa3ec-72a4-58b6-bf12-e81aa2ff95a6",
                "threat_score": 88,
                "fingerprint": fingerprint(body),
            }
        },
    }
    assert_valid_stix(obj)


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


def test_confidence_and_threat_score_are_omitted_when_unknown() -> None:
    obj = indicator_object(observable("ipv4", mscore=None, threat_rating=None), StixPolicy(), NOW)
    assert "confidence" not in obj
    assert "threat_score" not in ours(obj)
    assert_valid_stix(obj)


@pytest.mark.parametrize("score", [0, 100])
def test_confidence_is_the_mscore(score: int) -> None:
    obj = indicator_object(observable("ipv4", mscore=score), StixPolicy(), NOW)
    assert obj["confidence"] == score
    assert_valid_stix(obj)


def malware_domain(**fields: Any) -> Indicator:
    """The domain the label tests read, categorised malware, with the sources and associations
    each test is about."""
    return Indicator(
        id="fqdn--1", type=IndicatorType.FQDN, value="a.example", category=("malware",), **fields
    )


def test_labels_carry_categories_actors_malware_and_the_action_settings() -> None:
    indicator = malware_domain(
        sources=(Source(name="Mandiant", osint=False, categories=("botnet", "malware")),),
        associations=(
            Association("1", "UNC9999", "threat-actor"),
            Association("2", "FAKEGATE", "malware"),
            Association("3", "IGNORED", "intrusion-set"),
        ),
    )
    obj = indicator_object(
        of(indicator), StixPolicy(default_action="block", passive_only=True), NOW
    )
    assert obj["labels"] == [
        "FAKEGATE",
        "UNC9999",
        "action:block",
        "botnet",
        "malware",
        "passive-only",
    ]


def test_labels_are_de_duplicated() -> None:
    indicator = malware_domain(
        associations=(
            Association("2", "malware", "malware"),
            Association("3", "malware", "malware"),
        ),
    )
    assert indicator_object(of(indicator), StixPolicy(), NOW)["labels"] == [
        "action:alert",
        "malware",
    ]


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


def test_the_fingerprint_property_is_the_fingerprint_of_the_content() -> None:
    policy = StixPolicy()
    obj = indicator_object(observable("url"), policy, NOW)
    assert ours(obj)[FINGERPRINT_PROPERTY] == fingerprint(content(observable("url"), policy))
    assert ours(obj)[FINGERPRINT_PROPERTY] == fingerprint(obj)
    # The object is its content, plus the timestamps and the fingerprint in our extension.
    body = content(observable("url"), policy)
    assert {k: v for k, v in obj.items() if k in body and k != "extensions"} == {
        k: v for k, v in body.items() if k != "extensions"
    }
    assert ours(obj) == {**ours(body), FINGERPRINT_PROPERTY: fingerprint(body)}
    assert obj.keys() - body.keys() == {"created", "modified", "valid_from", "valid_until"}


@pytest.mark.parametrize(
    ("policy", "obs"),
    [
        (StixPolicy(default_action="block"), observable("ipv4")),
        (StixPolicy(passive_only=True), observable("ipv4")),
        (StixPolicy(), observable("ipv4", mscore=93)),
        (StixPolicy(), observable("ipv4", threat_rating={"threat_score": 89})),
        (StixPolicy(), observable("ipv4", category=["botnet"])),
        (StixPolicy(), observable("ipv4", value="203.0.113.78")),
        (StixPolicy(), observable("ipv4", attributed_associations=[])),
        (StixPolicy(), observable("fqdn", campaigns=[])),
    ],
)
def test_a_change_sentinel_would_store_changes_the_fingerprint(
    policy: StixPolicy, obs: Observable
) -> None:
    baseline = content(observable(obs.indicator.type.value), StixPolicy())
    assert fingerprint(content(obs, policy)) != fingerprint(baseline)


def test_expiration_and_upload_time_do_not_change_the_fingerprint() -> None:
    short = StixPolicy(ipv4_expiration=timedelta(days=1))
    first = indicator_object(observable("ipv4"), StixPolicy(), NOW)
    second = indicator_object(observable("ipv4"), short, NOW + timedelta(days=1))
    assert ours(first)[FINGERPRINT_PROPERTY] == ours(second)[FINGERPRINT_PROPERTY]


def test_a_long_value_is_truncated_in_the_name_only() -> None:
    url = "http://x.example/" + "a" * 500
    obj = indicator_object(observable("url", value=url), StixPolicy(), NOW)
    name = str(obj["name"])
    assert name.startswith("MATI url http://x.example/aaa")
    assert name.endswith("…")
    assert len(name) == len("MATI url ") + 100
    assert literal(str(obj["pattern"])) == url


def test_the_hash_name_says_which_hash() -> None:
    obj = indicator_object(observable("md5", HashType.SHA1), StixPolicy(), NOW)
    assert obj["name"] == f"MATI sha1 {SHA1}"


def test_the_reference_url_quotes_an_odd_mati_id() -> None:
    indicator = Indicator(id="fqdn--a/b c?", type=IndicatorType.FQDN, value="a.example")
    obj = indicator_object(of(indicator), StixPolicy(), NOW)
    assert obj["external_references"] == [
        {
            "source_name": "Mandiant",
            "external_id": "fqdn--a/b c?",
            "url": "https://advantage.mandiant.com/indicator/fqdn--a%2Fb%20c%3F",
        }
    ]


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


# --- upload bodies ----------------------------------------------------------------------------


def test_the_stix_objects_api_body() -> None:
    objects = [indicator_object(observable(kind), StixPolicy(), NOW) for kind in ("ipv4", "url")]
    assert upload_body(SentinelApi.STIX_OBJECTS, "Mandiant Advantage", objects) == {
        "sourcesystem": "Mandiant Advantage",
        "stixobjects": objects,
    }


def test_the_legacy_upload_indicators_api_body() -> None:
    objects = [indicator_object(observable(), StixPolicy(), NOW)]
    assert upload_body(SentinelApi.UPLOAD_INDICATORS, "Mandiant Advantage", objects) == {
        "sourcesystem": "Mandiant Advantage",
        "value": objects,
    }


def test_api_values_are_the_settings_spelling() -> None:
    assert [str(api) for api in SentinelApi] == ["stix-objects", "upload-indicators"]


@pytest.mark.parametrize("count", [0, MAX_OBJECTS_PER_REQUEST + 1])
def test_an_upload_holds_1_to_100_objects(count: int) -> None:
    objects = [{"type": "indicator"}] * count
    with pytest.raises(ValueError, match="objects"):
        upload_body(SentinelApi.STIX_OBJECTS, "Mandiant", objects)


def test_any_mapping_goes_into_a_body_as_a_dict() -> None:
    obj = indicator_object(observable(), StixPolicy(), NOW)
    body = upload_body(SentinelApi.STIX_OBJECTS, "Mandiant", [MappingProxyType(obj), obj])
    listed = body["stixobjects"]
    assert listed == [obj, obj]
    assert isinstance(listed, list)
    assert all(type(o) is dict for o in listed)


def test_a_full_batch_is_accepted() -> None:
    body = upload_body(SentinelApi.STIX_OBJECTS, "Mandiant", [{"type": "indicator"}] * 100)
    assert len(body["stixobjects"]) == 100  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    ["", "  ", "Microsoft Sentinel", "microsoft sentinel", " Microsoft Sentinel ", "x" * 257],
)
def test_sentinel_refuses_these_source_systems(name: str) -> None:
    assert check_source_system(name) is not None
    with pytest.raises(ValueError, match="source system"):
        upload_body(SentinelApi.STIX_OBJECTS, name, [{"type": "indicator"}])


@pytest.mark.parametrize("name", ["Mandiant", "x" * 256, "Microsoft Sentinel TI"])
def test_these_source_systems_are_fine(name: str) -> None:
    assert check_source_system(name) is None


# --- properties -------------------------------------------------------------------------------


@PROPERTY
@given(st.one_of(observables(), text_observables()), stix_policies, utc_datetimes)
def test_every_emitted_object_is_valid_stix_2_1(
    obs: Observable, policy: StixPolicy, now: datetime
) -> None:
    obj = indicator_object(obs, policy, now)
    assert_valid_stix(obj)
    parsed = stix2.parse(obj)
    assert parsed.created <= parsed.modified
    assert parsed.valid_until > parsed.valid_from
    assert ours(obj)[FINGERPRINT_PROPERTY] == fingerprint(obj)
    assert ours(obj)["mati_id"] == obs.indicator.id
    assert ours(obj).get("threat_score") == obs.indicator.threat_score
    assert unescape(literal(str(obj["pattern"]))) == obs.value
