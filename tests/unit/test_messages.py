"""The message contract: content-derived ids, properties, and poison bodies refused by name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.contract.messages import (
    RAW_SCHEMA,
    UPLOAD_SCHEMA,
    UploadRequest,
    raw_message,
    read_upload,
    subscription,
    upload_message,
    upload_queue,
)
from shared.core.errors import MalformedMessage
from shared.core.filters import Observable, ObservableKind
from shared.core.fingerprint import EXTENSION_ID, ForwardReason, fingerprint
from shared.core.stix import Draft, StixPolicy, UploadTime
from tests.unit.strategies import example_indicator

RECORD = {
    "id": "md5--1",
    "type": "md5",
    "value": "a" * 32,
    "last_updated": "2025-03-09T08:05:02.871Z",
}


#: What ``raw_message(RECORD, run_id="run-1")`` must say about the record it carries.
RECORD_PROPERTIES = {
    "schema": RAW_SCHEMA,
    "indicator_id": "md5--1",
    "indicator_type": "md5",
    "run_id": "run-1",
}


def test_raw_message_keeps_the_record_and_names_it() -> None:
    message = raw_message(RECORD, run_id="run-1")
    assert orjson.loads(message.body) == RECORD
    assert message.properties == RECORD_PROPERTIES


def test_raw_messages_of_a_page_carry_its_trace_as_is() -> None:
    page = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "tracestate": "a=b"}
    message = raw_message(RECORD, run_id="run-1", trace=page)
    assert message.properties == {**RECORD_PROPERTIES, **page}


def test_raw_message_id_is_one_per_indicator_version() -> None:
    first = raw_message(RECORD, run_id="a").message_id
    assert raw_message(dict(RECORD), run_id="b").message_id == first
    assert raw_message({**RECORD, "mscore": 1}, run_id="a").message_id == first
    newer = {**RECORD, "last_updated": "2025-03-10T00:00:00.000Z"}
    assert raw_message(newer, run_id="a").message_id != first


def test_a_full_sync_has_ids_of_its_own_keeps_them_within_it_and_says_so() -> None:
    """A full sync re-judges records the bus carried minutes ago: without its own ids the
    duplicate detection would drop them; with the run in them its retries still deduplicate."""
    plain = raw_message(RECORD, run_id="a")
    full = raw_message(RECORD, run_id="full-1", full=True)
    assert full.message_id != plain.message_id
    assert raw_message(RECORD, run_id="full-1", full=True).message_id == full.message_id
    assert raw_message(RECORD, run_id="full-2", full=True).message_id != full.message_id
    assert full.properties == {**RECORD_PROPERTIES, "run_id": "full-1", "sync": "full"}
    assert "sync" not in plain.properties


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    )
)
def test_any_json_record_can_be_published(record: object) -> None:
    message = raw_message(record, run_id="r")
    assert orjson.loads(message.body) == record
    assert len(message.message_id) == 32


def test_entities_carry_the_destination() -> None:
    assert subscription("prod").name == "prod"
    assert subscription("prod").topic == "indicators"
    assert upload_queue("prod").name == "upload.prod"


STIX_ID = "indicator--00000000-0000-5000-8000-000000000001"
OBJECT: dict[str, object] = {
    "type": "indicator",
    "id": STIX_ID,
    "pattern": "[file:hashes.'MD5' = '" + "a" * 32 + "']",
    "extensions": {EXTENSION_ID: {"extension_type": "property-extension", "mati_id": "md5--1"}},
}


def _request(
    first_known: datetime | None = None,
    expiration: timedelta = timedelta(days=90),
    **options: Any,
) -> UploadRequest:
    draft = Draft.known(dict(OBJECT), "f" * 32, expiration, first_known)
    return UploadRequest(draft, options.pop("reason", ForwardReason.NEW), **options)


def test_the_upload_schema_is_version_3() -> None:
    # Version 3: MATI's data in our property extension, not in top-level x_ properties.
    assert UPLOAD_SCHEMA == "upload.indicator/3"


def _version_2(body: dict[str, object]) -> dict[str, object]:
    """``body`` (a draft's) as a filter of the previous version queued it."""
    old = {key: value for key, value in body.items() if key != "extensions"}
    ours = body["extensions"][EXTENSION_ID]  # type: ignore[index]
    old["x_mati_id"] = ours["mati_id"]
    if "threat_score" in ours:
        old["x_mati_threat_score"] = ours["threat_score"]
    return old


@pytest.mark.parametrize("threat_rating", [{"threat_score": 88}, None])
def test_a_version_2_message_of_an_older_filter_is_uploaded_in_the_new_shape(
    threat_rating: dict[str, int] | None,
) -> None:
    """A rolling upgrade: what an older filter queued is still uploaded, not dead-lettered
    (MATI may never report it again), with MATI's data moved into our extension and the
    fingerprint the older filter claimed it under, so the in-flight claim still matches."""
    indicator = example_indicator("ipv4", threat_rating=threat_rating)
    observable = Observable(indicator, ObservableKind.IPV4, indicator.value)
    draft = Draft.of(observable, StixPolicy())
    old_object = _version_2(draft.body)
    old_fingerprint = fingerprint(old_object)
    body = orjson.dumps(
        {
            "object": old_object,
            "fingerprint": old_fingerprint,
            "expiration_us": 7 * 86_400_000_000,
            "first_known": None,
            "reason": "changed",
            "source_tag": "",
            "indicator_type": "ipv4",
        }
    )
    request = read_upload(body)
    assert request.draft.body == draft.body
    assert request.fingerprint == old_fingerprint != draft.fingerprint
    assert request.indicator_id == indicator.id
    stamped, _ = request.draft.at(UploadTime(datetime(2025, 3, 9, tzinfo=UTC)))
    assert not [key for key in stamped if key.startswith("x_")]
    assert stamped["extensions"] == {
        EXTENSION_ID: {**draft.body["extensions"][EXTENSION_ID], "fingerprint": old_fingerprint}  # type: ignore[index]
    }


def test_upload_message_round_trips() -> None:
    request = _request(
        datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC),
        timedelta(days=7, microseconds=1),
        reason=ForwardReason.REFRESH,
        source_tag=bytes.fromhex("00ff00ff00ff00ff"),
        indicator_type="md5",
    )
    message = upload_message(request, run_id="run-2", source_message_id="raw-1")
    assert read_upload(message.body) == request
    assert message.message_id == f"{STIX_ID}:{'f' * 16}:raw-1"
    again = upload_message(request, run_id="run-3", source_message_id="raw-1")
    assert again.message_id == message.message_id
    later = upload_message(request, run_id="run-3", source_message_id="raw-2")
    assert later.message_id != message.message_id
    assert message.properties == {
        "schema": UPLOAD_SCHEMA,
        "indicator_id": "md5--1",
        "indicator_type": "md5",
        "stix_id": STIX_ID,
        "run_id": "run-2",
    }
    plain = _request()
    assert read_upload(upload_message(plain, run_id="r", source_message_id="x").body) == plain


@settings(max_examples=200, deadline=None)
@given(
    st.none() | st.datetimes(timezones=st.just(UTC)),  # the parser's times are UTC
    st.timedeltas(min_value=timedelta(milliseconds=1), max_value=timedelta(days=3650)),
)
def test_the_draft_arrives_exactly_as_the_filter_made_it(
    first_known: datetime | None, expiration: timedelta
) -> None:
    """Same instant (and zone), same expiration to the microsecond: the uploader stamps the
    very object the filter fingerprinted, with the ``created`` the filter would give it."""
    request = _request(first_known, expiration)
    got = read_upload(upload_message(request, run_id="r", source_message_id="m").body)
    assert got == request
    assert got.draft.created == request.draft.created


def _body(**fields: object) -> bytes:
    """A well-formed upload body without a source tag, with ``fields`` replaced (None drops)."""
    body: dict[str, object] = {
        "object": {"id": "indicator--1"},
        "fingerprint": "f" * 32,
        "expiration_us": 86_400_000_000,
        "reason": "new",
        **fields,
    }
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (_body(object=None), "no STIX object"),
        (_body(object=None, record={}), r"upload.indicator/1, queued by an older filter"),
        (_body(object={"id": "x"}), "no STIX indicator id"),
        (_body(object={}), "no STIX indicator id"),
        (_body(fingerprint=None), "no fingerprint"),
        (_body(fingerprint="F00D"), "malformed fingerprint"),
        (_body(expiration_us=None), "no expiration"),
        (_body(expiration_us=999), "no expiration of at least 1 ms"),
        (_body(expiration_us="86400000000"), "no expiration"),
        (_body(expiration_us=True), "no expiration"),
        (_body(reason="whim"), "unknown reason"),
        (_body(first_known="yesterday"), "malformed first_known"),
        (_body(first_known="2024-01-01T00:00:00"), "malformed first_known"),  # no zone
        (_body(first_known=1704067200), "malformed first_known"),
        (_body(indicator_type=7), "malformed indicator type"),
        (_body(source_tag="00FF00FF00FF00FF"), "malformed source tag"),
        (_body(source_tag=" 0ff00ff00ff00ff"), "malformed source tag"),
        (_body(source_tag=7), "malformed source tag"),
        (_body(lineage=7), "malformed lineage"),
        (_body(lineage="x"), "malformed lineage"),
        (_body(generation=-1), "malformed generation"),
        (_body(generation=1 << 14), "malformed generation"),
        (_body(generation="1"), "malformed generation"),
    ],
)
def test_poison_upload_messages_are_refused_with_a_reason(body: bytes, why: str) -> None:
    with pytest.raises(MalformedMessage, match=why):
        read_upload(body)


def test_an_upload_without_a_source_tag_or_first_sighting_reads_without_them() -> None:
    request = read_upload(_body())
    assert request.source_tag == b""
    assert request.draft.first_known is None
    assert request.draft.created is None


def test_an_upload_message_can_carry_the_raw_messages_trace_as_is() -> None:
    request = _request()
    carried = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-00", "schema": "raw"}
    message = upload_message(request, run_id="r", source_message_id="m", trace=carried)
    assert message.properties["traceparent"] == carried["traceparent"]
    assert message.properties["schema"] == UPLOAD_SCHEMA


def test_a_later_generation_travels_with_its_lineage_id() -> None:
    """The object goes out under its generation's id; the seen entry, the claim and the
    message's ``stix_id`` property stay with the lineage (generation-0) id."""
    first = _request(reason=ForwardReason.REVOKE)
    later = first.draft.reissued("indicator--00000000-0000-5000-8000-000000000002")
    request = UploadRequest(later, ForwardReason.NEW, lineage=STIX_ID, generation=1)
    message = upload_message(request, run_id="r", source_message_id="m")
    got = read_upload(message.body)
    assert got == request
    assert got.stix_id == STIX_ID
    assert got.draft.stix_id != STIX_ID
    assert got.generation == 1
    assert message.properties["stix_id"] == STIX_ID


def test_a_revocation_reads_back_revoked() -> None:
    request = UploadRequest(_request().draft.reissued(STIX_ID, revoked=True), ForwardReason.REVOKE)
    got = read_upload(upload_message(request, run_id="r", source_message_id="m").body)
    assert got == request
    assert got.revoked
    assert got.draft.body["revoked"] is True
    assert got.fingerprint != _request().fingerprint


def test_a_message_of_a_filter_before_revocation_reads_as_generation_0_of_its_own_id() -> None:
    request = read_upload(_body())
    assert (request.stix_id, request.generation, request.revoked) == ("indicator--1", 0, False)
    assert b"lineage" not in upload_message(_request(), run_id="r", source_message_id="m").body
