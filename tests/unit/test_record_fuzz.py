"""Hostile MATI records through everything that reads one before Sentinel does: the parser, the
filters, the STIX mapping, the upload message, and the filter's judging of a raw delivery. None
of it may raise; each record ends as an indicator (forwarded or dropped for a counted reason) or
as a counted rejection the filter dead-letters with that reason. tests/unit/test_parsing_*.py
fuzz the parser alone with spec-shaped records; here the records are the simulator's, broken
(tests/unit/fuzz_records.py), and followed past the parser."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.filter.judging import FILTER_ERROR, INVALID_RECORD, Item, judge
from shared.contract.bus import Delivery
from shared.contract.messages import UploadRequest, read_upload, upload_message
from shared.core.filters import DropReason, FilterPolicy, evaluate
from shared.core.fingerprint import ForwardReason
from shared.core.indicator import Indicator, IndicatorType
from shared.core.parsing import (
    MAX_DETAIL_CHARS,
    MAX_VALUE_CHARS,
    Rejection,
    RejectReason,
    parse_indicator,
    parse_json,
)
from shared.core.stix import Draft, SentinelApi, StixPolicy, UploadTime, upload_body
from tests.unit.fuzz_records import FEED, hostile_records, mutated_records
from tests.unit.strategies import PROPERTY, example_record, filter_policies, stix_policies

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
#: Lets every well-formed record through, so the fuzz reaches the STIX mapping.
EVERYTHING = FilterPolicy(minimum_confidence=0, minimum_threat_score=0, exclude_osint=False)
REASONS = {str(reason) for reason in RejectReason}


def delivery(body: bytes) -> Delivery:
    return Delivery(
        body=body,
        message_id="m-1",
        properties={"indicator_id": "from-the-properties"},
        delivery_count=1,
        enqueued_at=NOW,
        lock_token="t-1",
    )


def judged(body: bytes, policy: FilterPolicy = EVERYTHING) -> Item:
    return judge(
        delivery(body),
        source=b"tag",
        now=NOW,
        filter_policy=policy,
        stix_policy=StixPolicy(),
        refresh_ratio=0.5,
    )


def assert_one_verdict(item: Item) -> None:
    """Dead-lettered with a counted parser reason, or forwarded, or dropped for a counted
    reason; never the filter's own failure, which means a bug met the record."""
    assert item.dead_letter is None or item.dead_letter[0] != FILTER_ERROR, item.dead_letter
    if item.dead_letter is not None:
        reason, description = item.dead_letter
        assert reason == INVALID_RECORD
        assert description.split(":", 1)[0] in REASONS
        assert len(description) < 2 * MAX_DETAIL_CHARS
        assert item.counts == {f"rejected_{description.split(':', 1)[0]}": 1}
        assert not item.observables
    elif not item.observables:
        assert [name for name in item.counts if name.startswith("dropped_")], item.counts
    # What goes on to Sentinel is bounded: a pattern is the value, escaped, in a short frame.
    assert all(
        len(str(f.draft.body["pattern"])) < 2 * MAX_VALUE_CHARS + 100 for f in item.observables
    )


def assert_maps_to_an_upload(indicator: Indicator, policy: FilterPolicy, stix: StixPolicy) -> None:
    """Whatever passes the filters becomes a STIX object, an upload body and an upload message
    that reads back as what was sent."""
    accepted = evaluate(indicator, policy)
    if isinstance(accepted, DropReason):
        return
    for observable in accepted:
        draft = Draft.of(observable, stix)
        obj, _ = draft.at(UploadTime(NOW))
        orjson.dumps(upload_body(SentinelApi.STIX_OBJECTS, "Mandiant Threat Intelligence", [obj]))
        request = UploadRequest(draft, ForwardReason.NEW, indicator_type=indicator.type.value)
        message = upload_message(request, run_id="r", source_message_id="m")
        assert read_upload(message.body).draft.stix_id == draft.stix_id


@PROPERTY
@given(hostile_records, filter_policies, stix_policies)
def test_a_hostile_record_parses_to_an_indicator_or_a_rejection_and_maps_cleanly(
    record: Any, policy: FilterPolicy, stix: StixPolicy
) -> None:
    result = parse_indicator(record)
    if isinstance(result, Rejection):
        assert result.reason in RejectReason
        assert len(result.detail) <= MAX_DETAIL_CHARS
        return
    assert isinstance(result, Indicator)
    assert len(result.value) <= MAX_VALUE_CHARS
    assert_maps_to_an_upload(result, policy, stix)


@PROPERTY
@given(hostile_records)
def test_the_filter_judges_a_hostile_record_without_failing(record: Any) -> None:
    assert_one_verdict(judged(orjson.dumps(record)))


@PROPERTY
@given(mutated_records(), st.data())
def test_the_filter_judges_a_record_whose_bytes_were_damaged(
    record: dict[str, Any], data: st.DataObject
) -> None:
    """Bytes flipped, cut or inserted anywhere in a record's body, as a broken transport or a
    buggy producer would: invalid JSON or a changed record, judged either way."""
    body = bytearray(orjson.dumps(record))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body)))
        edit = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if edit == "flip" and at < len(body):
            body[at] ^= data.draw(st.integers(1, 255))
        elif edit == "cut":
            del body[at:]
        else:
            body[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    assert_one_verdict(judged(bytes(body)))


@pytest.mark.parametrize("kind", list(IndicatorType))
def test_a_value_of_megabytes_is_refused_at_the_record_level(kind: IndicatorType) -> None:
    record = example_record(str(kind)) | {"value": "a" * (4 * 1024 * 1024)}
    item = judged(orjson.dumps(record))
    assert item.dead_letter is not None
    reason, description = item.dead_letter
    assert reason == INVALID_RECORD
    assert description == (
        f"bad_field: {kind} value has {4 * 1024 * 1024} characters, more than {MAX_VALUE_CHARS}"
    )
    assert item.indicator_id == record["id"]
    assert item.counts == {"rejected_bad_field": 1}


def test_a_url_of_the_longest_value_allowed_still_passes() -> None:
    value = "https://long.example/" + "p" * (MAX_VALUE_CHARS - len("https://long.example/"))
    indicator = parse_indicator(example_record("url") | {"value": value})
    assert isinstance(indicator, Indicator)
    assert indicator.value == value


@pytest.mark.parametrize("depth", [1025, 5000, 100_000])
def test_a_body_nested_past_what_json_readers_take_is_invalid_json(depth: int) -> None:
    body = b'{"id": "ipv4--1", "value": ' + b"[" * depth + b"]" * depth + b"}"
    rejection = parse_json(body)
    assert isinstance(rejection, Rejection)
    assert rejection.reason is RejectReason.INVALID_JSON
    assert "depth limit exceeded" in rejection.detail
    item = judged(body)
    assert item.dead_letter is not None
    assert item.dead_letter[0] == INVALID_RECORD
    assert item.dead_letter[1].startswith("invalid_json: body is not JSON: depth limit exceeded")


def test_every_feed_record_goes_through_untouched() -> None:
    """The oracle for the mutations: unbroken, the simulator's feed is judged without a single
    rejection, so every rejection above comes from what the fuzz broke."""
    for i in range(len(FEED)):
        item = judged(orjson.dumps(FEED.record(i)))
        assert item.dead_letter is None
