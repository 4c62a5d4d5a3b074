"""The STIX indicator object Sentinel receives: its exact shape, confidence, labels, names and
references, and the fingerprint that says whether Sentinel already holds this version. The OASIS
``stix2`` library judges every object valid, strictly."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import stix2
from hypothesis import given
from hypothesis import strategies as st

from shared.core.filters import Observable
from shared.core.fingerprint import FINGERPRINT_PROPERTY, fingerprint
from shared.core.indicator import Association, HashType, Indicator, IndicatorType, Source
from shared.core.stix import StixPolicy, content, indicator_object, unescape
from tests.unit.stix_rig import NOW, SHA1, assert_valid_stix, literal, observable, of, ours
from tests.unit.strategies import (
    PROPERTY,
    observables,
    stix_policies,
    text_observables,
    utc_datetimes,
)

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
