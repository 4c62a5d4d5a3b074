"""The parser's bounds on the names that reach the STIX object, and its check that an ipv4 value
is an IPv4 address: each a counted rejection, never a truncation (a name cut short names
something else), and never met by a real record. The record as a whole is bounded where it is
published (tests/unit/test_record_bounds.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.contract.messages import UploadRequest, upload_message
from shared.core.filters import every_observable
from shared.core.fingerprint import ForwardReason
from shared.core.indicator import IndicatorType
from shared.core.parsing import Rejection, RejectReason, parse_indicator
from shared.core.record_bounds import (
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_NAMES_CHARS,
    MAX_RECORD_BYTES,
    MAX_VALUE_CHARS,
)
from shared.core.stix import Draft, StixPolicy
from tests.unit.fuzz_records import FEED
from tests.unit.strategies import PROPERTY, example_record, must_parse

ID = "ipv4--451fa3ec-72a4-58b6-bf12-e81aa2ff95a6"


def rejected(record: object) -> Rejection:
    result = parse_indicator(record)
    assert isinstance(result, Rejection), result
    return result


# ---- names -------------------------------------------------------------------------------------


def _with_name(field: str, name: str) -> dict[str, Any]:
    record = example_record("ipv4")
    if field == "category":
        record["category"] = ["malware", name]
    elif field == "source":
        record["sources"][0]["source_name"] = name
    elif field == "source category":
        record["sources"][0]["category"] = [name]
    elif field == "association":
        record["attributed_associations"] = [{"id": "malware--1", "name": name, "type": "malware"}]
    else:
        record["campaigns"] = [{"id": "campaign--1", "name": name, "title": "t"}]
    return record


FIELDS = ["category", "source", "source category", "association", "campaign"]


@pytest.mark.parametrize("field", FIELDS)
def test_a_name_of_the_longest_length_allowed_passes(field: str) -> None:
    must_parse(_with_name(field, "n" * MAX_NAME_CHARS))


@pytest.mark.parametrize("field", FIELDS)
def test_a_longer_name_is_a_bad_field_naming_where_it_is(field: str) -> None:
    rejection = rejected(_with_name(field, "n" * (MAX_NAME_CHARS + 1)))
    assert rejection == Rejection(
        RejectReason.BAD_FIELD,
        f"{field} name has {MAX_NAME_CHARS + 1} characters, more than {MAX_NAME_CHARS}",
        ID,
    )


def _many_names(total: int) -> dict[str, Any]:
    """Campaign names of ``total`` characters together, each within the per-name bound."""
    record = example_record("ipv4")
    for key in ("category", "sources", "attributed_associations"):
        record[key] = []
    count, rest = divmod(total, MAX_NAME_CHARS)
    names = ["c" * MAX_NAME_CHARS] * count + ["c" * rest]  # campaigns are listed, not a set
    record["campaigns"] = [{"name": name} for name in names]
    return record


def test_names_that_reach_the_stix_object_may_total_the_bound() -> None:
    indicator = must_parse(_many_names(MAX_NAMES_CHARS))
    assert sum(map(len, indicator.campaigns)) == MAX_NAMES_CHARS


def test_names_that_total_more_are_too_large() -> None:
    rejection = rejected(_many_names(MAX_NAMES_CHARS + 1))
    assert rejection == Rejection(
        RejectReason.TOO_LARGE,
        f"category, association and campaign names have {MAX_NAMES_CHARS + 1} characters "
        f"together, more than {MAX_NAMES_CHARS}",
        ID,
    )


def test_a_category_repeated_by_every_source_counts_once() -> None:
    """Categories reach the object once each (they are a set there), however many sources
    repeat them: MATI repeats a source many times over its windows."""
    record = example_record("ipv4")
    source = record["sources"][0] | {"category": ["c" * MAX_NAME_CHARS]}
    record["sources"] = [source] * (2 * MAX_NAMES_CHARS // MAX_NAME_CHARS)
    assert len(must_parse(record).categories) == 2  # the record's own and the repeated one


# ---- values by kind ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["0.0.0.0", "203.0.113.77", "255.255.255.255", "10.0.0.0/8", "192.0.2.0/24"],  # noqa: S104
)
def test_an_ipv4_address_or_block_passes(value: str) -> None:
    assert must_parse(example_record("ipv4") | {"value": value}).value == value


@pytest.mark.parametrize(
    "value",
    [
        "256.0.0.1",
        "203.0.113",
        "203.0.113.77.1",
        "010.0.0.1",  # octal to some readers
        "203.0.113.77/33",
        "203.0.113.77/",
        "203.0.113.x",
        "update-cdn-sync.example",
        "::1",
        "203.0.113.77 198.51.100.1",
        "２０３.0.113.77",  # full-width digits: not ASCII
    ],
)
def test_an_ipv4_value_that_is_not_an_ipv4_address_is_a_bad_field(value: str) -> None:
    rejection = rejected(example_record("ipv4") | {"value": value})
    assert rejection.reason is RejectReason.BAD_FIELD
    assert rejection.detail == f"ipv4 value {value!r} is malformed"
    assert rejection.indicator_id == ID


@PROPERTY
@given(st.ip_addresses(v=4))
def test_every_ipv4_address_passes_as_python_writes_it(address: Any) -> None:
    assert must_parse(example_record("ipv4") | {"value": str(address)}).value == str(address)


def test_every_record_of_the_simulators_feed_passes_the_bounds() -> None:
    kinds = set()
    for i in range(len(FEED)):
        kinds.add(must_parse(FEED.record(i)).type)
    assert kinds == set(IndicatorType)


# ---- what the bounds add up to -----------------------------------------------------------------


def test_an_id_of_the_longest_length_allowed_passes_and_a_longer_one_is_a_bad_field() -> None:
    longest = "ipv4--" + "9" * (MAX_ID_CHARS - len("ipv4--"))
    assert must_parse(example_record("ipv4") | {"id": longest}).id == longest
    rejection = rejected(example_record("ipv4") | {"id": longest + "9"})
    assert rejection == Rejection(
        RejectReason.BAD_FIELD,
        f"'id' has {MAX_ID_CHARS + 1} characters, more than {MAX_ID_CHARS}",
        longest + "9",  # clipped on construction, as the parser's is
    )


def test_the_largest_record_the_parser_takes_fits_a_message_and_so_does_its_upload() -> None:
    """Every bound at once, in the characters that grow most when escaped (a backslash twice
    in the pattern, then twice in JSON; a quote twice in JSON): the raw record and the upload
    message made of it both stay under what one bus message may carry."""
    quote = '"'
    record = example_record("fqdn") | {
        "id": "fqdn--" + quote * (MAX_ID_CHARS - len("fqdn--")),
        "value": "\\" * MAX_VALUE_CHARS,
        "category": [f"{n:02d}" + quote * (MAX_NAME_CHARS - 2) for n in range(16)],
        "sources": [],
        "attributed_associations": [],
        "campaigns": [],
    }
    assert 16 * MAX_NAME_CHARS == MAX_NAMES_CHARS
    assert len(orjson.dumps(record)) < MAX_RECORD_BYTES
    indicator = must_parse(record)
    (observable,) = every_observable(indicator)
    draft = Draft.of(observable, StixPolicy())
    message = upload_message(
        UploadRequest(draft, ForwardReason.NEW, indicator_type="fqdn"),
        run_id="r",
        source_message_id="m",
    )
    assert len(message.body) < MAX_RECORD_BYTES
    assert len(message.body) > MAX_RECORD_BYTES // 2  # the bounds, not the example, are measured
