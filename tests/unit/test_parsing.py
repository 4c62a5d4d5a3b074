"""MATI wire format to model: required fields, lenient optional fields, both timestamp
formats, and the promise that nothing raises on any input."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.core.indicator import Association, HashType, Indicator, IndicatorType, Source
from shared.core.parsing import (
    MAX_DETAIL_CHARS,
    MAX_ID_CHARS,
    Page,
    Rejection,
    RejectReason,
    format_timestamp,
    is_hash,
    parse_indicator,
    parse_json,
    parse_page,
    parse_timestamp,
)
from tests.unit.strategies import (
    PROPERTY,
    example_record,
    json_values,
    mati_records,
    mati_timestamps,
    must_parse,
    noisy_records,
    utc_datetimes,
)

MD5 = "b3becab76a6d36861357bfa3fe966003"
SHA1 = "537f7341e42b72c88032e89aafa94ce5861f2e2a"
SHA256 = "268791330e6cf922e1c53392031cfcbe203630e416342e5503d39f402b6f0ca5"


def rejected(raw: object) -> Rejection:
    result = parse_indicator(raw)
    assert isinstance(result, Rejection), result
    return result


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


# --- the §6 examples --------------------------------------------------------------------------


def test_ipv4_example_is_read_field_by_field() -> None:
    assert must_parse(example_record("ipv4")) == Indicator(
        id="ipv4--451fa3ec-72a4-58b6-bf12-e81aa2ff95a6",
        type=IndicatorType.IPV4,
        value="203.0.113.77",
        mscore=92,
        threat_score=88,
        sources=(
            Source(
                name="Mandiant",
                osint=False,
                categories=("control-server",),
                first_seen=at(2025, 3, 2, 11, 4, 19, 512000),
                last_seen=at(2025, 3, 9, 7, 41, 2, 208000),
            ),
            Source(
                name="blocklist_de",
                osint=True,
                categories=(),
                first_seen=at(2025, 3, 4, 23, 10, 0, 731000),
                last_seen=at(2025, 3, 4, 23, 10, 0, 731000),
            ),
        ),
        category=("control-server",),
        hashes=(),
        associations=(
            Association("malware--6350612e-8b86-5502-9f24-418c5cebde45", "FAKEGATE", "malware"),
        ),
        campaigns=(),
        last_updated=at(2025, 3, 9, 8, 2, 44, 617000),
        first_seen=at(2025, 3, 2, 11, 4, 19),
        last_seen=at(2025, 3, 9, 7, 41, 2),
    )


def test_fqdn_example_keeps_actors_malware_and_campaign_names() -> None:
    indicator = must_parse(example_record("fqdn"))
    assert indicator.type is IndicatorType.FQDN
    assert indicator.actors == ("UNC9999",)
    assert indicator.malware == ("FAKEGATE",)
    assert indicator.campaigns == ("CAMP.25.014",)
    assert indicator.categories == ("control-server", "malware")


def test_md5_example_carries_all_three_hashes_md5_first() -> None:
    indicator = must_parse(example_record("md5"))
    assert indicator.hashes == (
        (HashType.MD5, MD5),
        (HashType.SHA1, SHA1),
        (HashType.SHA256, SHA256),
    )


def test_url_example_is_osint_when_every_source_is() -> None:
    assert must_parse(example_record("url")).is_osint


# --- required fields --------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, [], "ipv4", 3, 1.5, True, [{"id": "x"}]])
def test_a_record_that_is_not_an_object_is_rejected(raw: object) -> None:
    assert rejected(raw).reason is RejectReason.NOT_AN_OBJECT


@pytest.mark.parametrize("key", ["id", "type", "value"])
def test_a_missing_required_field_is_rejected(key: str) -> None:
    record = example_record("ipv4")
    del record[key]
    rejection = rejected(record)
    assert rejection.reason is RejectReason.MISSING_FIELD
    assert key in rejection.detail
    assert rejection.indicator_id == (None if key == "id" else record["id"])


@pytest.mark.parametrize("key", ["id", "type", "value"])
def test_a_null_required_field_counts_as_missing(key: str) -> None:
    assert rejected({**example_record("ipv4"), key: None}).reason is RejectReason.MISSING_FIELD


@pytest.mark.parametrize("key", ["id", "type", "value"])
@pytest.mark.parametrize("bad", ["", "   ", 5, True, [], {}])
def test_a_required_field_must_be_a_non_empty_string(key: str, bad: object) -> None:
    rejection = rejected({**example_record("ipv4"), key: bad})
    assert rejection.reason is RejectReason.BAD_FIELD
    assert key in rejection.detail


@pytest.mark.parametrize("kind", ["ipv6", "sha256", "domain", "email", "ip v4"])
def test_a_type_outside_the_four_is_unsupported(kind: str) -> None:
    rejection = rejected({**example_record("ipv4"), "type": kind})
    assert rejection.reason is RejectReason.UNSUPPORTED_TYPE
    assert rejection.indicator_id == "ipv4--451fa3ec-72a4-58b6-bf12-e81aa2ff95a6"
    assert kind in rejection.detail


def test_type_is_read_case_insensitively() -> None:
    assert must_parse({**example_record("fqdn"), "type": " FQDN "}).type is IndicatorType.FQDN


@pytest.mark.parametrize("value", [MD5[:-1], MD5 + "0", "z" * 32, SHA1, MD5[:16] + " " + MD5[17:]])
def test_an_md5_value_must_be_32_hex_digits(value: str) -> None:
    assert rejected({**example_record("md5"), "value": value}).reason is RejectReason.BAD_FIELD


def test_rejection_detail_and_id_are_clipped() -> None:
    rejection = rejected({"id": "i" * 10_000, "type": "t" * 10_000, "value": "v"})
    assert rejection.reason is RejectReason.UNSUPPORTED_TYPE
    assert len(rejection.detail) <= MAX_DETAIL_CHARS
    assert rejection.indicator_id is not None
    assert len(rejection.indicator_id) == MAX_ID_CHARS
    assert rejection.indicator_id.endswith("…")


def test_a_rejection_clips_whatever_detail_it_is_given() -> None:
    rejection = Rejection(RejectReason.BAD_FIELD, "d" * 5000, "i" * 5000)
    assert rejection.detail == "d" * (MAX_DETAIL_CHARS - 1) + "…"
    assert rejection.indicator_id == "i" * (MAX_ID_CHARS - 1) + "…"


def test_a_short_rejection_is_kept_verbatim() -> None:
    rejection = Rejection(RejectReason.BAD_FIELD, "short", "id-1")
    assert (rejection.detail, rejection.indicator_id) == ("short", "id-1")


# --- value normalisation ----------------------------------------------------------------------


def test_ipv4_is_stripped() -> None:
    assert must_parse({**example_record("ipv4"), "value": " 203.0.113.77\n"}).value == (
        "203.0.113.77"
    )


def test_fqdn_is_stripped_and_lower_cased() -> None:
    assert must_parse({**example_record("fqdn"), "value": "\tEvil.Example "}).value == (
        "evil.example"
    )


def test_md5_is_stripped_and_lower_cased() -> None:
    indicator = must_parse({**example_record("md5"), "value": f" {MD5.upper()} "})
    assert indicator.value == MD5
    assert indicator.hash_value(HashType.MD5) == MD5


def test_url_is_kept_byte_for_byte() -> None:
    url = " http://Evil.Example/A%20b?q='x'\\ "
    assert must_parse({**example_record("url"), "value": url}).value == url


# --- optional fields --------------------------------------------------------------------------


def test_a_record_with_only_the_required_fields_parses() -> None:
    indicator = must_parse({"id": "fqdn--1", "type": "fqdn", "value": "a.example"})
    assert indicator == Indicator(id="fqdn--1", type=IndicatorType.FQDN, value="a.example")


def test_unknown_fields_are_ignored() -> None:
    record = {**example_record("ipv4"), "misp": {"akamai": False}, "x_new": [1, {"a": None}]}
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


# --- timestamps -------------------------------------------------------------------------------


def assert_utc(parsed: datetime | None, expected: datetime) -> None:
    assert parsed == expected
    assert parsed is not None
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-09T08:02:44.617Z", at(2025, 3, 9, 8, 2, 44, 617000)),
        ("2025-03-09T08:02:44.617+0000", at(2025, 3, 9, 8, 2, 44, 617000)),
        ("2025-03-09T08:02:44Z", at(2025, 3, 9, 8, 2, 44)),
        ("2025-03-09T08:02:44.617+00:00", at(2025, 3, 9, 8, 2, 44, 617000)),
        ("2025-03-09T08:02:44+0200", at(2025, 3, 9, 6, 2, 44)),
        ("2025-03-09T08:02:44-05:30", at(2025, 3, 9, 13, 32, 44)),
        ("2025-03-09T08:02:44.1Z", at(2025, 3, 9, 8, 2, 44, 100000)),
        ("2025-03-09T08:02:44.123456789Z", at(2025, 3, 9, 8, 2, 44, 123456)),
        ("2025-03-09t08:02:44z", at(2025, 3, 9, 8, 2, 44)),
        ("2025-03-09T23:30:00-01:00", at(2025, 3, 10, 0, 30)),
    ],
)
def test_timestamps_in_every_mati_shape_become_aware_utc(text: str, expected: datetime) -> None:
    assert_utc(parse_timestamp(text), expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2025-03-09",
        "2025-03-09T08:02:44",
        "2025-03-09T08:02:44.617",
        "2025-03-09 08:02:44Z",
        "2025-13-09T08:02:44Z",
        "2025-02-30T08:02:44Z",
        "2025-03-09T24:00:00Z",
        "2025-03-09T08:02:60Z",
        "2025-03-09T08:02:44+2400",
        "2025-03-09T08:02:44+02",
        "2025-03-09T08:02:44.Z",
        "2025-03-09T08:02:44Z\n",
        " 2025-03-09T08:02:44Z",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:30:00+01:00",
        "9999-12-31T23:30:00-01:00",
        "２０２５-03-09T08:02:44Z",
        "20250309T080244Z",
    ],
)
def test_anything_else_is_not_a_timestamp(text: str) -> None:
    assert parse_timestamp(text) is None


@pytest.mark.parametrize("value", [None, 1741507364, 1741507364.5, ["2025-03-09T08:02:44Z"]])
def test_non_strings_are_not_timestamps(value: object) -> None:
    assert parse_timestamp(value) is None


@pytest.mark.parametrize(
    ("dt", "expected"),
    [
        (at(2025, 3, 9, 8, 2, 44, 617999), "2025-03-09T08:02:44.617Z"),
        (at(2025, 3, 9, 8, 2, 44), "2025-03-09T08:02:44.000Z"),
        (at(5, 1, 2, 3, 4, 5), "0005-01-02T03:04:05.000Z"),
        (
            datetime(2025, 3, 9, 10, 2, 44, 1000, tzinfo=timezone(timedelta(hours=2))),
            "2025-03-09T08:02:44.001Z",
        ),
    ],
)
def test_format_timestamp_writes_stix_utc_milliseconds(dt: datetime, expected: str) -> None:
    assert format_timestamp(dt) == expected


def test_format_timestamp_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="aware"):
        format_timestamp(datetime(2025, 3, 9))


@PROPERTY
@given(utc_datetimes)
def test_formatted_timestamps_parse_back_to_the_millisecond(dt: datetime) -> None:
    assert parse_timestamp(format_timestamp(dt)) == dt.replace(
        microsecond=dt.microsecond // 1000 * 1000
    )


@PROPERTY
@given(st.data(), utc_datetimes)
def test_every_mati_timestamp_shape_round_trips(data: st.DataObject, dt: datetime) -> None:
    dt = dt.replace(microsecond=dt.microsecond // 1000 * 1000)
    text = data.draw(mati_timestamps(dt))
    parsed = parse_timestamp(text)
    assert parsed is not None
    assert parsed == (dt if "." in text else dt.replace(microsecond=0))


# --- bodies and pages -------------------------------------------------------------------------


def page_body(**envelope: Any) -> bytes:
    return orjson.dumps(envelope)


def test_a_page_keeps_its_records_raw_and_its_cursor() -> None:
    records = [example_record(kind) for kind in ("ipv4", "fqdn", "url", "md5")]
    page = parse_page(page_body(indicators=[*records, "junk"], next="FGluY2x1"))
    assert page == Page((*records, "junk"), "FGluY2x1")


def test_an_empty_last_page_has_no_cursor() -> None:
    assert parse_page(b'{"indicators": []}') == Page((), None)


@pytest.mark.parametrize("cursor", [None, "", 5, ["abc"], {"a": 1}, True])
def test_a_cursor_that_is_not_a_non_empty_string_means_last_page(cursor: object) -> None:
    page = parse_page(page_body(indicators=[], next=cursor))
    assert isinstance(page, Page)
    assert page.next is None


#: Broken pages by the reason each must be rejected with.
BROKEN_PAGES: dict[RejectReason, list[bytes]] = {
    RejectReason.INVALID_JSON: [
        b"",
        b"   ",
        b"{",
        b"{'indicators': []}",
        b'{"indicators": [NaN]}',
        b'{"indicators": ["\xff"]}',
        b"[" * 2000 + b"]" * 2000,
    ],
    RejectReason.NOT_AN_OBJECT: [b"[]", b'"indicators"', b"null"],
    RejectReason.MISSING_FIELD: [b"{}", b'{"indicators": null}', b'{"Indicators": []}'],
    RejectReason.BAD_FIELD: [b'{"indicators": {}}', b'{"indicators": "[]"}', b'{"indicators": 0}'],
}


@pytest.mark.parametrize(
    ("body", "reason"),
    [(body, reason) for reason, bodies in BROKEN_PAGES.items() for body in bodies],
)
def test_a_broken_page_is_rejected_with_its_reason(body: bytes, reason: RejectReason) -> None:
    rejection = parse_page(body)
    assert isinstance(rejection, Rejection)
    assert rejection.reason is reason
    assert rejection.indicator_id is None
    assert len(rejection.detail) <= MAX_DETAIL_CHARS


def test_parse_json_returns_the_document() -> None:
    assert parse_json(b'{"a": [1, 2.5, null, true, "x"]}') == {"a": [1, 2.5, None, True, "x"]}


def test_duplicate_keys_keep_the_last_value_on_pages_and_records() -> None:
    page = parse_page(b'{"indicators": [1], "next": "a", "indicators": [], "next": "b"}')
    assert page == Page((), "b")
    record = parse_json(
        b'{"id": "fqdn--1", "type": "fqdn", "value": "a.example",'
        b' "campaigns": [{"name": "CAMP.1"}], "campaigns": []}'
    )
    assert must_parse(record).campaigns == ()


def test_an_invalid_json_detail_does_not_echo_the_body() -> None:
    body = b'{"secret-looking": "' + b"A" * 5000
    rejection = parse_json(body)
    assert isinstance(rejection, Rejection)
    assert rejection.reason is RejectReason.INVALID_JSON
    assert "AAAA" not in rejection.detail


# --- properties -------------------------------------------------------------------------------


@PROPERTY
@given(json_values)
def test_parse_indicator_never_raises_on_any_json_value(value: object) -> None:
    assert isinstance(parse_indicator(value), Indicator | Rejection)


@PROPERTY
@given(noisy_records())
def test_parse_indicator_never_raises_on_records_with_garbled_fields(record: object) -> None:
    result = parse_indicator(record)
    assert isinstance(result, Indicator | Rejection)
    if isinstance(result, Rejection):
        assert len(result.detail) <= MAX_DETAIL_CHARS


@PROPERTY
@given(st.binary(max_size=200))
def test_parse_page_never_raises_on_any_bytes(body: bytes) -> None:
    assert isinstance(parse_page(body), Page | Rejection)


@PROPERTY
@given(json_values)
def test_parse_page_never_raises_on_any_json_document(value: object) -> None:
    for envelope in (value, {"indicators": value}, {"indicators": [value], "next": value}):
        assert isinstance(parse_page(orjson.dumps(envelope)), Page | Rejection)


@PROPERTY
@given(mati_records())
def test_every_realistic_record_parses_with_the_model_invariants(record: dict[str, Any]) -> None:
    indicator = must_parse(record)
    assert indicator.id == record["id"]
    assert indicator.type == record["type"]
    for score in (indicator.mscore, indicator.threat_score):
        assert score is None or 0 <= score <= 100
    moments = [indicator.last_updated, indicator.first_seen, indicator.last_seen]
    moments += [s.first_seen for s in indicator.sources] + [s.last_seen for s in indicator.sources]
    assert all(m is None or m.tzinfo is UTC for m in moments)
    kinds = [kind for kind, _ in indicator.hashes]
    assert kinds == sorted(set(kinds), key=list(HashType).index)
    assert all(is_hash(kind, value) for kind, value in indicator.hashes)
    if indicator.type is IndicatorType.MD5:
        assert indicator.hashes[0] == (HashType.MD5, indicator.value)


# --- the fast timestamp path ------------------------------------------------------------------
# parse_timestamp hands the shapes MATI sends to ``datetime.fromisoformat``, which also accepts
# much that is not a MATI timestamp. These tests hold it to the pattern definition below,
# which is the parser as it was before the fast path: same strings accepted, same instants.

_REFERENCE_PATTERN = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:[Zz]|([+-])(\d{2}):?(\d{2}))",
    re.ASCII,
)


def reference_timestamp(text: str) -> datetime | None:
    """The definition: the pattern, fields read as written, the fraction truncated to
    microseconds, any result outside ``datetime``'s range refused."""
    match = _REFERENCE_PATTERN.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    offset = timedelta(hours=int(off_h), minutes=int(off_m)) if sign else timedelta(0)
    try:
        zone = timezone(-offset if sign == "-" else offset)
        micros = int((fraction or "0")[:6].ljust(6, "0"))
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros, zone
        ).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _two(top: int) -> st.SearchStrategy[str]:
    return st.integers(0, top).map(lambda n: f"{n:02d}")


@st.composite
def timestamp_like(draw: st.DrawFn) -> str:
    """Strings near the MATI shapes: fields in and out of range, every separator, fraction and
    offset form ISO 8601 or ``fromisoformat`` knows, upper and lower case."""
    date_sep = draw(st.sampled_from(["-", "-", "-", "", "/"]))
    time_sep = draw(st.sampled_from([":", ":", ":", ""]))
    year = draw(st.integers(0, 9999).map(lambda n: f"{n:04d}"))
    date = date_sep.join([year, draw(_two(13)), draw(_two(32))])
    if draw(st.booleans()):
        date = f"{year}-W{draw(_two(54))}-{draw(st.integers(0, 8))}"
    clock = time_sep.join([draw(_two(25)), draw(_two(61)), draw(_two(61))])
    if draw(st.integers(0, 9)) == 0:
        clock = clock[: draw(st.sampled_from([2, 5]))]
    separator = draw(st.sampled_from(["T", "T", "t", " ", "x", "_"]))
    mark = draw(st.sampled_from(["", "", ".", ","]))
    fraction = mark + draw(st.text("0123456789", max_size=12)) if mark else ""
    sign = draw(st.sampled_from(["+", "-"]))
    offset = sign + draw(_two(25)) + draw(st.sampled_from([":", ""])) + draw(_two(99))
    zone = draw(
        st.sampled_from(
            ["Z", "z", "", "ZZ", sign + draw(_two(23)), offset, offset]
            + [offset + extra for extra in (":00", "00", ".5", ":30.25")]
        )
    )
    return date + separator + clock + fraction + zone


@st.composite
def mutated_timestamps(draw: st.DrawFn) -> str:
    """A near-MATI string with one character replaced, inserted or removed: the digits at
    every position must be checked, not only the separators."""
    text: str = draw(timestamp_like() | mati_timestamps())
    at_index = draw(st.integers(0, len(text)))
    char: str = draw(st.sampled_from([*"0123456789-:T.Z+z ,W", "٣", "２", "\n", "é", ""]))
    drop = draw(st.booleans())
    return text[:at_index] + char + text[at_index + drop :]


@PROPERTY
@given(timestamp_like() | mutated_timestamps() | st.text(max_size=40))
def test_parse_timestamp_accepts_exactly_what_the_definition_does(text: str) -> None:
    parsed = parse_timestamp(text)
    assert parsed == reference_timestamp(text)
    if parsed is not None:
        assert type(parsed) is datetime
        assert parsed.tzinfo is UTC


@PROPERTY
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(0, 999_999_999),
    st.integers(0, 9),
    st.integers(-(24 * 60 - 1), 24 * 60 - 1),
    st.sampled_from(["Z", "+hhmm", "+hh:mm"]),
)
def test_every_fraction_length_and_offset_reads_as_the_instant_it_names(
    local: datetime, nanos: int, digits: int, offset_minutes: int, style: str
) -> None:
    """Fractions of 0..9 digits are truncated to microseconds; ``+hh:mm`` means local time
    ``hh:mm`` ahead of UTC; the result is that instant in UTC."""
    offset = timedelta(minutes=0 if style == "Z" else offset_minutes)
    fraction = f"{nanos:09d}"[:digits]
    sign = "-" if offset < timedelta(0) else "+"
    hours, minutes = divmod(abs(offset_minutes) if style != "Z" else 0, 60)
    zone = {
        "Z": "Z",
        "+hhmm": f"{sign}{hours:02d}{minutes:02d}",
        "+hh:mm": f"{sign}{hours:02d}:{minutes:02d}",
    }[style]
    base = f"{local.year:04d}-{local:%m-%dT%H:%M:%S}"  # %Y would not pad year 999
    text = base + (f".{fraction}" if digits else "") + zone
    micros = int(fraction[:6].ljust(6, "0")) if digits else 0
    expected = (local.replace(microsecond=micros) - offset).replace(tzinfo=UTC)
    assert_utc(parse_timestamp(text), expected)


@pytest.mark.parametrize(
    "text",
    [
        "2025-03-09T08:02:44-00.0",  # fromisoformat reads an hour fraction in the offset
        "2025-03-09T08:02:44+02:00:00",
        "2025-03-09T08:02:44.617+00:00:00.5",
        "2025-03-09T08:02:44,617Z",
        "2025-03-09T08:02:44.1234567890Z",
        "2025-03-09x08:02:44Z",
        "2025-W10-1T08:02:44Z",
        "2025-03-09T08:02Z",
        "2025-03-09T080244Z",
        "2025-03-09T08:02:44+2359",  # only with the offset's minutes read as minutes
        "2025-03-09T08:02:4٣Z",
        "2025-03-09T08:02:44.61٣Z",
        "2025-03-09T08:02:44+0٣00",
        "2025-03-09T08:02:44\ud800Z",
    ],
)
def test_what_fromisoformat_alone_would_misread_is_decided_by_the_definition(text: str) -> None:
    assert parse_timestamp(text) == reference_timestamp(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-09T08:02:44+0099", at(2025, 3, 9, 6, 23, 44)),  # 99 minutes, as written
        ("2025-03-09T08:02:44-0000", at(2025, 3, 9, 8, 2, 44)),
        ("2025-03-09T08:02:44.999999999Z", at(2025, 3, 9, 8, 2, 44, 999999)),
        ("0001-01-01T00:30:00-01:00", at(1, 1, 1, 1, 30)),
        ("9999-12-31T23:30:00+01:00", at(9999, 12, 31, 22, 30)),
        ("2025-03-09T08:02:44+23:59", at(2025, 3, 8, 8, 3, 44)),
    ],
)
def test_edge_instants_read_as_written(text: str, expected: datetime) -> None:
    assert_utc(parse_timestamp(text), expected)


@PROPERTY
@given(
    st.datetimes(
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=45)), timezone(-timedelta(hours=11))]
        )
    )
)
def test_format_timestamp_is_the_utc_instant_truncated_to_milliseconds(dt: datetime) -> None:
    try:
        u = dt.astimezone(UTC)
    except OverflowError:
        with pytest.raises(OverflowError):
            format_timestamp(dt)
        return
    expected = (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
        f".{u.microsecond // 1000:03d}Z"
    )
    assert format_timestamp(dt) == expected
    assert parse_timestamp(expected) == u.replace(microsecond=u.microsecond // 1000 * 1000)


def test_a_zone_that_declines_an_offset_is_still_refused_by_format_timestamp() -> None:
    class NoOffset(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta | None:
            return None

        def dst(self, dt: datetime | None) -> timedelta | None:
            return None

        def tzname(self, dt: datetime | None) -> str | None:
            return None

    with pytest.raises(ValueError, match="aware"):
        format_timestamp(datetime(2025, 3, 9, tzinfo=NoOffset()))
