"""A record no message can carry (larger than ``MAX_RECORD_BYTES``, or nested deeper than orjson
writes) is published as a small stand-in with its id and why, which the parser refuses with that
reason and the filter dead-letters: never an exception out of the fetcher's publish, never its
whole page refused. The fetcher's and the filter's side over a real bus are in
tests/services/test_fetcher_bad_records.py and tests/clients/test_edge_input_pipeline.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from services.filter.judging import INVALID_RECORD, judge
from shared.contract.bus import Delivery
from shared.contract.messages import REFUSED_PROPERTY, raw_message
from shared.core.filters import FilterPolicy
from shared.core.parsing import Rejection, RejectReason, parse_indicator, parse_json
from shared.core.record_bounds import (
    MAX_RECORD_BYTES,
    MAX_WRITABLE_DEPTH,
    STAND_IN_KEY,
    record_body,
)
from shared.core.stix import StixPolicy
from tests.unit.strategies import example_record, must_parse

RECORD_ID = "url--e3f1d2c4-0000-5000-8000-000000000001"
STAMP = "2025-03-09T08:05:02.871Z"


def nested(levels: int) -> object:
    """A JSON array ``levels`` deep."""
    value: object = []
    for _ in range(levels - 1):
        value = [value]
    return value


def url_record(**changes: Any) -> dict[str, Any]:
    return example_record("url") | {"id": RECORD_ID, "last_updated": STAMP} | changes


def sized(total: int) -> dict[str, Any]:
    """A url record of exactly ``total`` bytes as JSON, grown through its value."""
    record = url_record()
    record["value"] += "a" * (total - len(orjson.dumps(record)))
    assert len(orjson.dumps(record)) == total
    return record


def rejection_of(body: bytes) -> Rejection:
    raw = parse_json(body)
    result = raw if isinstance(raw, Rejection) else parse_indicator(raw)
    assert isinstance(result, Rejection), result
    return result


# ---- the body a record travels as --------------------------------------------------------------


def test_a_record_within_the_bounds_travels_as_it_is() -> None:
    record = sized(MAX_RECORD_BYTES)
    body, refusal = record_body(record)
    assert refusal is None
    assert body == orjson.dumps(record)


def test_a_record_one_byte_larger_travels_as_a_stand_in_naming_it() -> None:
    body, refusal = record_body(sized(MAX_RECORD_BYTES + 1))
    assert refusal is not None
    assert refusal.reason is RejectReason.TOO_LARGE
    assert orjson.loads(body) == {
        "id": RECORD_ID,
        "type": "url",
        "last_updated": STAMP,
        STAND_IN_KEY: {
            "reason": "too_large",
            "detail": f"record has {MAX_RECORD_BYTES + 1} bytes as JSON, more than 196608",
        },
    }
    assert len(body) < 1024


def test_a_record_as_deep_as_orjson_writes_travels_as_it_is() -> None:
    # The record is one level, its value the rest.
    record = url_record(value=nested(MAX_WRITABLE_DEPTH - 1))
    assert record_body(record) == (orjson.dumps(record), None)


def test_a_record_one_level_deeper_travels_as_a_stand_in() -> None:
    body, refusal = record_body(url_record(value=nested(MAX_WRITABLE_DEPTH)))
    assert refusal is not None
    assert refusal.reason is RejectReason.TOO_DEEP
    stand_in = orjson.loads(body)
    assert stand_in["id"] == RECORD_ID
    assert stand_in[STAND_IN_KEY] == {
        "reason": "too_deep",
        "detail": "record nested more than 254 levels deep: no message can carry it",
    }


def test_a_stand_in_keeps_only_short_text_of_what_it_replaces() -> None:
    """An id, type or timestamp of megabytes is what made the record too large: clipped."""
    record = {"id": "x" * 300_000, "type": ["not", "text"], "value": "v", "last_updated": 5}
    body, refusal = record_body(record)
    assert refusal is not None
    assert set(orjson.loads(body)) == {"id", STAND_IN_KEY}
    assert len(body) < 1024


def test_a_record_that_is_not_an_object_gets_a_stand_in_without_an_id() -> None:
    body, refusal = record_body(nested(MAX_WRITABLE_DEPTH + 1))
    assert refusal is not None
    assert set(orjson.loads(body)) == {STAND_IN_KEY}
    rejection = rejection_of(body)
    assert rejection.reason is RejectReason.TOO_DEEP
    assert rejection.indicator_id is None


# ---- the raw message ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (sized(MAX_RECORD_BYTES + 1), "too_large"),
        (url_record(value=nested(300)), "too_deep"),
    ],
    ids=["too_large", "too_deep"],
)
def test_the_raw_message_of_a_refused_record_is_its_stand_in_under_its_own_id(
    record: dict[str, Any], reason: str
) -> None:
    message = raw_message(record, run_id="run-1")
    # The id a publishable version of the same record gets: a page fetched twice, once.
    assert message.message_id == raw_message(url_record(), run_id="run-2").message_id
    assert message.properties[REFUSED_PROPERTY] == reason
    assert message.properties["indicator_id"] == RECORD_ID
    assert orjson.loads(message.body)[STAND_IN_KEY]["reason"] == reason


def test_the_raw_message_of_a_record_within_the_bounds_is_not_marked() -> None:
    assert REFUSED_PROPERTY not in raw_message(url_record(), run_id="run-1").properties


# ---- the parser and the filter -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "reason", "detail"),
    [
        (
            sized(MAX_RECORD_BYTES + 1),
            RejectReason.TOO_LARGE,
            "record has 196609 bytes as JSON, more than 196608",
        ),
        (
            url_record(value=nested(300)),
            RejectReason.TOO_DEEP,
            "record nested more than 254 levels deep: no message can carry it",
        ),
    ],
    ids=["too_large", "too_deep"],
)
def test_the_filter_dead_letters_a_stand_in_with_its_reason_and_the_records_id(
    record: dict[str, Any], reason: RejectReason, detail: str
) -> None:
    message = raw_message(record, run_id="run-1")
    item = judge(
        Delivery(
            body=message.body,
            message_id=message.message_id,
            properties=message.properties,
            delivery_count=1,
            enqueued_at=datetime(2025, 6, 1, tzinfo=UTC),
            lock_token="t-1",
        ),
        source=b"tag",
        now=datetime(2025, 6, 1, tzinfo=UTC),
        filter_policy=FilterPolicy(),
        stix_policy=StixPolicy(),
        refresh_ratio=0.5,
    )
    assert item.dead_letter == (INVALID_RECORD, f"{reason}: {detail}")
    assert item.counts == {f"rejected_{reason}": 1}
    assert item.indicator_id == RECORD_ID
    assert not item.observables


def test_a_stand_in_with_an_unknown_reason_is_a_record_without_a_value() -> None:
    body = orjson.dumps({"id": RECORD_ID, STAND_IN_KEY: {"reason": "lost", "detail": "x"}})
    assert rejection_of(body).reason is RejectReason.MISSING_FIELD


def test_a_record_with_a_value_is_parsed_whatever_else_it_carries() -> None:
    """The marker decides nothing for a record that has what an indicator needs."""
    record = url_record(**{STAND_IN_KEY: {"reason": "too_large", "detail": "forged"}})
    assert must_parse(record) == must_parse(url_record())
