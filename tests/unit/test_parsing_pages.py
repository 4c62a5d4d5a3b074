"""MATI's response bodies: a page keeps its records raw for the filter and its cursor for the
next request, a broken one is refused with its reason; and the promise that neither a page nor
a record makes the parser raise, whatever the upstream sends."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.core.indicator import HashType, Indicator, IndicatorType
from shared.core.parsing import (
    MAX_DETAIL_CHARS,
    Page,
    Rejection,
    RejectReason,
    is_hash,
    parse_indicator,
    parse_json,
    parse_page,
)
from tests.unit.strategies import (
    PROPERTY,
    example_record,
    json_values,
    mati_records,
    must_parse,
    noisy_records,
)

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
