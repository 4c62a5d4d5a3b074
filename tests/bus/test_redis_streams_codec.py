"""Reading entries: ``receive`` parses ``XREADGROUP``'s reply itself (redis_streams_codec), so
what it makes of odd entries (reordered, foreign, not UTF-8) is pinned here, over each protocol
and reply parser, as new, reclaimed and peeked messages."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser, _AsyncRESP3Parser
from redis.asyncio import Redis

from services.cli.redis_server import LocalRedis
from shared.adapters.redis_connect import connect
from shared.adapters.redis_streams import RedisStreamsBus
from shared.adapters.redis_streams_codec import as_text, deliveries, stream_entries
from shared.contract.bus import Delivery, Queue

pytestmark = pytest.mark.timeout(30)

#: (fields as XADD-ed, expected body, message id (``None``: the entry id), properties).
ODD_ENTRIES: list[tuple[list[bytes], bytes, str | None, dict[str, str]]] = [
    (  # as ``publish`` writes it
        [b"body", b"\x00\xffbin", b"message_id", b"m1", b"properties", b'{"a":"1"}'],
        b"\x00\xffbin",
        "m1",
        {"a": "1"},
    ),
    (  # reordered, with an extra field
        [b"properties", b'{"k":"v"}', b"extra", b"x", b"message_id", b"m2", b"body", b"b2"],
        b"b2",
        "m2",
        {"k": "v"},
    ),
    ([b"body", b"b3"], b"b3", None, {}),  # no message id, no properties
    ([b"other", b"x"], b"", None, {}),  # none of ours
    (  # not UTF-8 where text is expected
        [b"body", b"b5", b"message_id", b"m\xff5", b"properties", b"\xff{"],
        b"b5",
        "m\ufffd5",
        {},
    ),
    (  # properties of a foreign writer: not all strings, or not an object
        [b"body", b"b6", b"message_id", b"m6", b"properties", b'{"n":1,"z":null,"s":"t"}'],
        b"b6",
        "m6",
        {"n": "1", "z": "None", "s": "t"},
    ),
    ([b"body", b"b7", b"message_id", b"m7", b"properties", b"[1]"], b"b7", "m7", {}),
    (  # a field name that is not UTF-8 next to ours
        [b"\xffbody", b"x", b"body", b"b8", b"message_id", b"m8", b"properties", b"{}"],
        b"b8",
        "m8",
        {},
    ),
    ([b"message_id", b"first", b"message_id", b"second", b"body", b"b9"], b"b9", "second", {}),
    (  # six fields, but not ours: field names are case-sensitive
        [b"body", b"b10", b"message_id", b"m10", b"Properties", b'{"a":"b"}'],
        b"b10",
        "m10",
        {},
    ),
]


#: XADD with the fields as given, repeated names and all (``xadd`` takes a dict).
_XADD = "return redis.call('XADD', KEYS[1], '*', unpack(ARGV))"


def expected_delivery(entry_id: str, count: int, odd: int) -> Delivery:
    _, body, message_id, properties = ODD_ENTRIES[odd]
    ms = int(entry_id.partition("-")[0])
    return Delivery(
        body=body,
        message_id=entry_id if message_id is None else message_id,
        properties=properties,
        delivery_count=count,
        enqueued_at=datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms),
        lock_token=f"{entry_id}#{count}",
    )


@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
def test_an_unparsed_xreadgroup_reply_reads_every_entry_as_redis_py_would(resp3: bool) -> None:
    """Entries as the server sends them, odd ones included; a nil entry is skipped and an entry
    without fields reads as empty, as redis-py's own parse had it."""
    ids = [f"{1_700_000_000_000 + n // 3}-{n}" for n in range(len(ODD_ENTRIES))]
    entries: list[Any] = [
        [entry_id.encode(), fields] for entry_id, (fields, *_) in zip(ids, ODD_ENTRIES, strict=True)
    ]
    entries[3:3] = [None, [b"1700000000001-99", None]]
    reply: Any = {b"stream": entries} if resp3 else [[b"stream", entries]]

    got = deliveries(stream_entries(reply))

    no_fields = Delivery(
        b"",
        "1700000000001-99",
        {},
        1,
        datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=1_700_000_000_001),
        "1700000000001-99#1",
    )
    want = [expected_delivery(entry_id, 1, n) for n, entry_id in enumerate(ids)]
    want[3:3] = [no_fields]
    assert got == want
    assert [type(d.body) for d in got] == [bytes] * len(want)
    assert [type(d.properties) for d in got] == [dict] * len(want)
    assert deliveries(stream_entries(None)) == []
    assert deliveries(stream_entries({} if resp3 else [])) == []


def test_reclaimed_entries_keep_their_delivery_count() -> None:
    """The reclaim script's entries: each with its own count, fields as a flat list."""
    ours, no_message_id = ODD_ENTRIES[0][0], ODD_ENTRIES[2][0]
    got = deliveries([(b"5-0", 3, ours), (b"5-1", 2, no_message_id), (b"7-0", 4, None)])
    assert [(d.lock_token, d.delivery_count, d.message_id) for d in got] == [
        ("5-0#3", 3, "m1"),
        ("5-1#2", 2, "5-1"),
        ("7-0#4", 4, "7-0"),
    ]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert [d.enqueued_at for d in got] == [epoch + timedelta(milliseconds=ms) for ms in (5, 5, 7)]


@pytest.mark.parametrize(
    ("protocol", "parser"),
    [
        (2, _AsyncHiredisParser),
        (3, _AsyncHiredisParser),
        (2, _AsyncRESP2Parser),
        (3, _AsyncRESP3Parser),
    ],
    ids=["resp2-hiredis", "resp3-hiredis", "resp2-python", "resp3-python"],
)
async def test_odd_entries_read_the_same_new_reclaimed_and_peeked(
    redis_server: LocalRedis, redis_client: Redis, protocol: int, parser: type
) -> None:
    """Entries another writer put in a stream, read over each protocol and reply parser: as
    new entries, as expired ones taken over, and by ``peek``. (``redis_client`` empties Redis.)"""
    client = connect(redis_server.url, protocol=protocol, parser_class=parser)
    try:
        bus = RedisStreamsBus(client, consumer="a", lock_duration_s=0.2)
        queue = Queue("upload.prod")
        stream = bus.keys(queue).stream
        async with asyncio.timeout(10):
            await bus.ensure(queue)
            ids = [
                as_text(await client.eval(_XADD, 1, stream, *fields)) for fields, *_ in ODD_ENTRIES
            ]
            fresh = await bus.receive(queue, max_messages=50, max_wait_s=1.0)
            peeked = await bus.peek(queue)
            await asyncio.sleep(0.3)  # every lock expires: the next receive takes them over
            reclaimed = await bus.receive(queue, max_messages=50, max_wait_s=1.0)
        assert fresh == [expected_delivery(entry_id, 1, n) for n, entry_id in enumerate(ids)]
        assert reclaimed == [expected_delivery(entry_id, 2, n) for n, entry_id in enumerate(ids)]
        assert [(p.body, p.message_id, p.properties, p.enqueued_at) for p in peeked] == [
            (d.body, d.message_id, d.properties, d.enqueued_at) for d in fresh
        ]
    finally:
        await client.aclose()
