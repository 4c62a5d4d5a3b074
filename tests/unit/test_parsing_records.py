"""MATI wire format to model, record by record: the §6 examples read field by field, what a
record must carry to be taken at all (and the reason it is refused without it), and how each
type's value is normalised, since that value is what Sentinel matches on."""

from __future__ import annotations

import pytest

from shared.core.indicator import Association, HashType, Indicator, IndicatorType, Source
from shared.core.parsing import (
    MAX_DETAIL_CHARS,
    MAX_ID_CHARS,
    Rejection,
    RejectReason,
    parse_indicator,
)
from tests.unit.parsing_rig import MD5, SHA1, SHA256, at
from tests.unit.strategies import example_record, must_parse


def rejected(raw: object) -> Rejection:
    result = parse_indicator(raw)
    assert isinstance(result, Rejection), result
    return result


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
