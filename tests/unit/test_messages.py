"""The message contract: content-derived ids, properties, and poison bodies refused by name."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.fingerprint import ForwardReason
from shared.indicator import HashType
from shared.messages import (
    RAW_SCHEMA,
    UPLOAD_SCHEMA,
    MalformedMessage,
    UploadRequest,
    raw_message,
    read_upload,
    subscription,
    upload_message,
    upload_queue,
)

RECORD = {
    "id": "md5--1",
    "type": "md5",
    "value": "a" * 32,
    "last_updated": "2025-03-09T08:05:02.871Z",
}


def test_raw_message_keeps_the_record_and_names_it() -> None:
    message = raw_message(RECORD, run_id="run-1")
    assert orjson.loads(message.body) == RECORD
    assert message.properties == {
        "schema": RAW_SCHEMA,
        "indicator_id": "md5--1",
        "indicator_type": "md5",
        "run_id": "run-1",
    }


def test_raw_message_id_is_one_per_indicator_version() -> None:
    first = raw_message(RECORD, run_id="a").message_id
    assert raw_message(dict(RECORD), run_id="b").message_id == first
    assert raw_message({**RECORD, "mscore": 1}, run_id="a").message_id == first
    newer = {**RECORD, "last_updated": "2025-03-10T00:00:00.000Z"}
    assert raw_message(newer, run_id="a").message_id != first


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


def test_upload_message_round_trips() -> None:
    request = UploadRequest(
        record=RECORD,
        stix_id="indicator--00000000-0000-5000-8000-000000000001",
        hash_type=HashType.SHA256,
        fingerprint="f" * 32,
        reason=ForwardReason.REFRESH,
        source_tag=bytes.fromhex("00ff00ff00ff00ff"),
    )
    message = upload_message(request, run_id="run-2", source_message_id="raw-1")
    assert read_upload(message.body) == request
    assert message.message_id == f"{request.stix_id}:{request.fingerprint[:16]}:raw-1"
    again = upload_message(request, run_id="run-3", source_message_id="raw-1")
    assert again.message_id == message.message_id
    later = upload_message(request, run_id="run-3", source_message_id="raw-2")
    assert later.message_id != message.message_id
    assert message.properties["schema"] == UPLOAD_SCHEMA
    assert message.properties["stix_id"] == request.stix_id
    plain = UploadRequest(RECORD, request.stix_id, None, "e" * 32, ForwardReason.NEW)
    assert read_upload(upload_message(plain, run_id="r", source_message_id="x").body) == plain


def _body(**fields: object) -> bytes:
    """A well-formed upload body without a source tag, with ``fields`` replaced (None drops)."""
    body: dict[str, object] = {
        "record": {},
        "stix_id": "indicator--1",
        "fingerprint": "f" * 32,
        "reason": "new",
        **fields,
    }
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (_body(record=None), "no record"),
        (_body(stix_id="x"), "no STIX indicator id"),
        (_body(fingerprint=None), "no fingerprint"),
        (_body(fingerprint="F00D"), "malformed fingerprint"),
        (_body(hash_type="sha512"), "unknown hash type"),
        (_body(reason="whim"), "unknown hash type or reason"),
        (_body(source_tag="00FF00FF00FF00FF"), "malformed source tag"),
        (_body(source_tag=" 0ff00ff00ff00ff"), "malformed source tag"),
        (_body(source_tag=7), "malformed source tag"),
    ],
)
def test_poison_upload_messages_are_refused_with_a_reason(body: bytes, why: str) -> None:
    with pytest.raises(MalformedMessage, match=why):
        read_upload(body)


def test_an_upload_queued_before_source_tags_reads_without_one() -> None:
    assert read_upload(_body()).source_tag == b""


def test_an_upload_message_can_carry_the_raw_messages_trace_as_is() -> None:
    request = UploadRequest(RECORD, "indicator--1", None, "f" * 32, ForwardReason.NEW)
    carried = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-00", "schema": "raw"}
    message = upload_message(request, run_id="r", source_message_id="m", carried=carried)
    assert message.properties["traceparent"] == carried["traceparent"]
    assert message.properties["schema"] == UPLOAD_SCHEMA
