"""MATI's optional fields are read leniently: a malformed one is dropped or left empty, never
a reason to lose the indicator. The associated hashes get the same care: each may become an
indicator of its own in Sentinel."""

from __future__ import annotations

import pytest

from shared.core.indicator import Association, HashType, Indicator, IndicatorType, Source
from shared.core.parsing import is_hash
from tests.unit.parsing_rig import MD5, SHA1, SHA256
from tests.unit.strategies import example_record, must_parse

# --- optional fields --------------------------------------------------------------------------


def test_a_record_with_only_the_required_fields_parses() -> None:
    indicator = must_parse({"id": "fqdn--1", "type": "fqdn", "value": "a.example"})
    assert indicator == Indicator(id="fqdn--1", type=IndicatorType.FQDN, value="a.example")


def test_unknown_fields_are_ignored() -> None:
    record = {**example_record("ipv4"), "x_new": [1, {"a": None}], "x_flags": {"akamai": False}}
    assert must_parse(record) == must_parse(example_record("ipv4"))


@pytest.mark.parametrize(
    ("mscore", "expected"),
    [
        (0, 0),
        (100, 100),
        (92.0, 92),
        (92.5, None),
        (101, None),
        (-1, None),
        (True, None),
        (False, None),
        ("92", None),
        ("high", None),
        (None, None),
        ([92], None),
        (1e300, None),
    ],
)
def test_mscore_is_a_0_to_100_int_or_none(mscore: object, expected: int | None) -> None:
    assert must_parse({**example_record("ipv4"), "mscore": mscore}).mscore == expected


@pytest.mark.parametrize(
    ("rating", "expected"),
    [
        ({"threat_score": 88}, 88),
        ({"threat_score": "88"}, None),
        ({"threat_score": True}, None),
        ({"threat_score": 200}, None),
        ({}, None),
        ([{"threat_score": 88}], None),
        ("high", None),
        (None, None),
    ],
)
def test_threat_score_comes_from_a_well_formed_threat_rating(
    rating: object, expected: int | None
) -> None:
    record = {**example_record("ipv4"), "threat_rating": rating}
    assert must_parse(record).threat_score == expected


@pytest.mark.parametrize("sources", [None, "Mandiant", {"osint": True}, 5])
def test_sources_that_are_not_a_list_are_ignored(sources: object) -> None:
    assert must_parse({**example_record("ipv4"), "sources": sources}).sources == ()


def test_source_entries_that_are_not_objects_are_skipped() -> None:
    record = example_record("ipv4")
    record["sources"] = ["Mandiant", None, 3, *record["sources"]]
    assert must_parse(record).sources == must_parse(example_record("ipv4")).sources


@pytest.mark.parametrize("flag", ["true", 1, None, "yes", [True]])
def test_only_an_explicit_true_makes_a_source_osint(flag: object) -> None:
    source = {"source_name": "feed", "osint": flag}
    indicator = must_parse({**example_record("ipv4"), "sources": [source]})
    assert indicator.sources == (Source(name="feed", osint=False),)
    assert not indicator.is_osint


def test_a_source_with_wrongly_typed_fields_keeps_what_is_usable() -> None:
    source = {"source_name": 7, "osint": True, "category": "malware", "first_seen": 1741}
    indicator = must_parse({**example_record("ipv4"), "sources": [source]})
    assert indicator.sources == (Source(name="", osint=True),)


def test_categories_skip_non_strings_and_blanks_and_are_lower_cased() -> None:
    record = {
        **example_record("ipv4"),
        "category": ["Malware", 5, None, " ", " Botnet "],
        "sources": [{"osint": False, "category": ["EXPLOIT", {"x": 1}]}],
    }
    indicator = must_parse(record)
    assert indicator.category == ("malware", "botnet")
    assert indicator.sources[0].categories == ("exploit",)


@pytest.mark.parametrize("category", ["malware", None, {"malware": True}, 3])
def test_a_top_level_category_that_is_not_a_list_is_ignored(category: object) -> None:
    assert must_parse({**example_record("ipv4"), "category": category}).category == ()


def test_associations_need_a_name_and_keep_unknown_kinds() -> None:
    record = {
        **example_record("ipv4"),
        "attributed_associations": [
            {"id": "x", "type": "malware"},
            {"id": "y", "name": "", "type": "malware"},
            {"name": " APT29 ", "type": "threat-actor"},
            {"id": "z", "name": "NEWKIND", "type": "intrusion-set"},
            {"id": 5, "name": "NOKIND", "type": None},
            "FAKEGATE",
        ],
    }
    assert must_parse(record).associations == (
        Association("", "APT29", "threat-actor"),
        Association("z", "NEWKIND", "intrusion-set"),
        Association("", "NOKIND", ""),
    )


def test_campaign_names_come_from_well_formed_entries_only() -> None:
    record = {
        **example_record("fqdn"),
        "campaigns": [{"name": "CAMP.1"}, {"title": "no name"}, "CAMP.2", {"name": 3}],
    }
    assert must_parse(record).campaigns == ("CAMP.1",)


@pytest.mark.parametrize("field", ["last_updated", "first_seen", "last_seen"])
@pytest.mark.parametrize("bad", ["yesterday", 1741507364, None, "2025-03-09"])
def test_an_unparsable_indicator_timestamp_becomes_none(field: str, bad: object) -> None:
    assert getattr(must_parse({**example_record("ipv4"), field: bad}), field) is None


# --- associated hashes ------------------------------------------------------------------------


def hashes_of(associated: object, value: str = MD5) -> tuple[tuple[HashType, str], ...]:
    record = {**example_record("md5"), "value": value, "associated_hashes": associated}
    return must_parse(record).hashes


def test_hashes_are_read_in_canonical_order_whatever_the_wire_order() -> None:
    associated = [{"type": "sha256", "value": SHA256}, {"type": "sha1", "value": SHA1}]
    assert hashes_of(associated) == (
        (HashType.MD5, MD5),
        (HashType.SHA1, SHA1),
        (HashType.SHA256, SHA256),
    )


def test_hash_entries_are_normalised() -> None:
    associated = [{"type": " SHA1 ", "value": f" {SHA1.upper()} "}]
    assert hashes_of(associated) == ((HashType.MD5, MD5), (HashType.SHA1, SHA1))


def test_the_first_well_formed_hash_per_type_wins() -> None:
    other = "f" * 40
    associated = [
        {"type": "sha1", "value": "not-hex"},
        {"type": "sha1", "value": SHA1},
        {"type": "sha1", "value": other},
    ]
    assert hashes_of(associated) == ((HashType.MD5, MD5), (HashType.SHA1, SHA1))


def test_the_indicator_value_is_authoritative_for_md5() -> None:
    assert hashes_of([{"type": "md5", "value": "0" * 32}]) == ((HashType.MD5, MD5),)


@pytest.mark.parametrize(
    "associated",
    [
        None,
        "sha1",
        {"type": "sha1", "value": SHA1},
        [{"type": "sha512", "value": "a" * 128}],
        [{"type": "sha256", "value": SHA1}],
        [{"type": None, "value": SHA1}],
        [{"type": "sha1"}],
        [SHA1],
    ],
)
def test_unusable_associated_hashes_leave_only_the_md5(associated: object) -> None:
    assert hashes_of(associated) == ((HashType.MD5, MD5),)


@pytest.mark.parametrize("kind", ["ipv4", "fqdn", "url"])
def test_only_md5_indicators_carry_hashes(kind: str) -> None:
    record = {
        **example_record(kind),
        "associated_hashes": example_record("md5")["associated_hashes"],
    }
    indicator = must_parse(record)
    assert indicator.hashes == ()
    assert indicator.hash_value(HashType.SHA1) is None


@pytest.mark.parametrize(
    ("hash_type", "text", "expected"),
    [
        (HashType.MD5, MD5, True),
        (HashType.MD5, MD5.upper(), False),
        (HashType.MD5, MD5 + "\n", False),
        (HashType.SHA1, SHA1, True),
        (HashType.SHA1, MD5, False),
        (HashType.SHA256, SHA256, True),
        (HashType.SHA256, SHA256[:-1] + "g", False),
    ],
)
def test_is_hash_wants_lower_case_hex_of_the_right_length(
    hash_type: HashType, text: str, expected: bool
) -> None:
    assert is_hash(hash_type, text) is expected
