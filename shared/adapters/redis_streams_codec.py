"""What the Redis Streams bus writes into a stream entry and how it reads Redis's replies back:
deliveries, dead letters, peeks, counts, lock tokens and entry ids.

Times come from entry ids: a stream id's first part is the server's clock in ms when the entry
was added, so it is ``enqueued_at`` of a delivery and ``dead_lettered_at`` of a dead letter, no
field stores them twice and no client clock is trusted. Reading deliveries is most of the
client's cost of receiving: an entry as the bus writes it is read by position, anything else by
name, and a garbled value reads as empty rather than stalling the entity.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from shared.contract.bus import DeadLetter, Delivery, EntityCounts, Message, Peeked

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: ``XREADGROUP`` named with its first argument. redis-py sends a command name with a space as
#: its words (as it sends ``CONFIG GET``; ``shared.adapters.redis_connect`` packs it the same way)
#: but picks the reply's response callback by the name as given, and none is registered under this
#: one: the reply comes back as the server sent it and ``stream_entries`` reads its flat field
#: lists directly, instead of redis-py first building a dict per entry that ``_delivery`` would
#: take apart again (the two were most of the client's cost of receiving). Nothing of the
#: client is changed, so a client shared with other code behaves exactly as before.
XREADGROUP: Final = "XREADGROUP GROUP"
#: The fields ``PUBLISH`` writes, in its order (``REPLAY`` and the dead-letter copies too).
_OUR_FIELDS: Final = (b"body", b"message_id", b"properties")


def encode(message: Message) -> tuple[bytes, str, bytes]:
    """``body``, ``message_id`` and ``properties`` as ``PUBLISH`` takes them."""
    if not message.message_id:
        raise ValueError("message_id must not be empty (duplicate detection keys on it)")
    if not isinstance(message.body, bytes | bytearray | memoryview):
        raise TypeError(f"body must be bytes, got {type(message.body).__name__}")
    return bytes(message.body), message.message_id, orjson.dumps(dict(message.properties))


def deliveries(entries: Iterable[tuple[Any, int, Any]]) -> list[Delivery]:
    """The deliveries of ``(entry id, delivery count, fields)`` entries. The entries of a batch
    mostly share their millisecond (one publish script adds hundreds within one), so
    ``enqueued_at`` is made once per millisecond rather than once per entry (a datetime is
    immutable: sharing one is safe)."""
    delivered: list[Delivery] = []
    last_ms: str | None = None
    enqueued_at = _EPOCH
    for raw_id, delivery_count, fields in entries:
        entry_id = as_text(raw_id)
        ms = entry_id.partition("-")[0]
        if ms != last_ms:
            enqueued_at = _from_ms(int(ms))
            last_ms = ms
        delivered.append(_delivery(entry_id, delivery_count, fields, enqueued_at))
    return delivered


def stream_entries(reply: Any) -> Iterator[tuple[Any, int, Any]]:
    """``(entry id, 1, fields)`` of each entry of an unparsed one-stream ``XREADGROUP … >``
    reply (every entry is delivered for the first time): RESP2 ``[[stream, [[id, [field,
    value, ...]], ...]]]`` or RESP3 ``{stream: [...]}``; nil (nothing new) yields nothing, and
    so does a nil entry, as redis-py's parse skips one."""
    if not reply:
        return
    groups = reply.values() if isinstance(reply, dict) else (pair[1] for pair in reply)
    for entries in groups:
        for entry in entries or ():
            if entry is not None and entry[0] is not None:
                yield entry[0], 1, entry[1]


def dead_letters(entries: Iterable[tuple[Any, Any]] | None) -> list[DeadLetter]:
    """The dead letters of an ``XRANGE`` of a dead-letter stream; the entry id is the token
    ``replay`` takes back."""
    return [
        DeadLetter(
            *head,
            reason=as_text(f.get("reason", b"")),
            description=as_text(f.get("description", b"")),
            delivery_count=_int(f.get("delivery_count")),
            dead_lettered_at=_from_ms(_id_ms(entry_id)),
            lock_token=entry_id,
        )
        for entry_id, f, head in _stored(entries)
    ]


def peeked(entries: Any, pending: Any, *, lock_ms: int) -> list[Peeked]:
    """``PEEK``'s snapshot as messages; ``locked`` = pending with a lock younger than
    ``lock_ms`` (an abandoned or expired entry waits to be taken over, unlocked)."""
    locked = {as_text(entry[0]) for entry in pending or [] if int(entry[2]) < lock_ms}
    return [
        Peeked(
            *head,
            enqueued_at=_from_ms(_id_ms(entry_id)),
            locked=entry_id in locked,
        )
        for entry_id, f, head in _stored(entries)
    ]


def _stored(
    entries: Iterable[tuple[Any, Any]] | None,
) -> Iterator[tuple[str, dict[str, Any], tuple[bytes, str, Mapping[str, str]]]]:
    """Each ``XRANGE`` entry as its id, its fields by name and the message it stores (body, id,
    properties): dead letters and peeks read a message back alike and differ only in what they
    add to it."""
    for raw_id, fields in entries or []:
        entry_id = as_text(raw_id)
        f = _field_map(fields)
        head = (
            _bytes(f.get("body")),
            as_text(f.get("message_id", entry_id)),
            _properties(f.get("properties")),
        )
        yield entry_id, f, head


def entity_counts(reply: Sequence[Any]) -> EntityCounts:
    """``COUNTS``'s snapshot: ``depth`` = entries nobody holds, ``in_flight`` = pending
    entries, ``oldest_age_s`` by the server's clock."""
    length, pending, dead, oldest, seconds, micros = reply
    oldest_age_s = None
    if oldest:
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        oldest_age_s = max(0, now_ms - _id_ms(as_text(oldest))) / 1000
    return EntityCounts(
        depth=max(0, int(length) - int(pending)),
        in_flight=int(pending),
        dead_letter=int(dead),
        oldest_age_s=oldest_age_s,
    )


def parse_token(token: str) -> tuple[str, int]:
    """A lock token (``<entry id>#<delivery count>``) back into its two parts."""
    entry_id, sep, count = token.rpartition("#")
    if not sep or not count.isdigit():
        raise ValueError(f"not a lock token of this bus: {token!r}")
    return checked_entry_id(entry_id), int(count)


def checked_entry_id(value: str) -> str:
    ms, sep, seq = value.partition("-")
    if not (sep and ms.isdigit() and seq.isdigit()):
        raise ValueError(f"not a stream entry id: {value!r}")
    return value


def id_range(entry_ids: Iterable[str]) -> tuple[str, str]:
    """The lowest and the highest of stream entry ids, as Redis orders them (milliseconds,
    then sequence)."""
    keys = sorted(_id_key(entry_id) for entry_id in entry_ids)
    return _id_text(keys[0]), _id_text(keys[-1])


def as_text(value: Any) -> str:
    if type(value) is bytes:  # what hiredis hands back, so tested first
        return value.decode("utf-8", "replace")
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _delivery(entry_id: str, delivery_count: int, fields: Any, enqueued_at: datetime) -> Delivery:
    raw_body, raw_message_id, raw_properties = _message_fields(entry_id, fields)
    body = _bytes(raw_body)
    message_id = as_text(raw_message_id)
    properties = _properties(raw_properties)
    lock_token = f"{entry_id}#{delivery_count}"
    # Positional, each variable named as its field: a frozen dataclass takes keywords a third
    # slower, and this runs once per message received.
    return Delivery(body, message_id, properties, delivery_count, enqueued_at, lock_token)


def _message_fields(entry_id: str, fields: Any) -> tuple[Any, Any, Any]:
    """``body``, ``message_id`` (the entry id when missing) and ``properties`` (``None`` when
    missing) of an entry's fields. An entry as this module writes it is recognised by one
    comparison and read by position; anything else (fields missing, extra, reordered, of a
    foreign writer) is read by name, exactly as such an entry always was."""
    if (
        type(fields) is list
        and len(fields) == 6
        and (fields[0], fields[2], fields[4]) == _OUR_FIELDS
    ):
        return fields[1], fields[3], fields[5]
    f = _field_map(fields)
    return f.get("body"), f.get("message_id", entry_id), f.get("properties")


def _field_map(fields: Any) -> dict[str, Any]:
    """An entry's fields by name, from a flat ``[field, value, ...]`` list as Redis sends it or
    a mapping as redis-py parses one (``None``: no fields). The list is paired as redis-py
    pairs it (a repeated field keeps its last value, a field without a value is dropped) before
    names are decoded, so an odd entry reads the same whichever way it arrived."""
    if not fields:
        return {}
    raw = fields if isinstance(fields, Mapping) else _pairs(fields)
    return {as_text(k): v for k, v in raw.items()}


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def _id_text(key: tuple[int, int]) -> str:
    return f"{key[0]}-{key[1]}"


def _id_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _bytes(value: Any) -> bytes:
    if type(value) is bytes:  # a body as Redis sends it; bytes() would return it unchanged
        return value
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _properties(raw: Any) -> dict[str, str]:
    """A foreign or garbled value reads as no properties rather than stalling the entity."""
    if not raw:
        return {}
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(decoded, dict):
        return {}
    for value in decoded.values():  # a loop, not all(): this runs once per message received
        if type(value) is not str:
            return {str(k): v if isinstance(v, str) else str(v) for k, v in decoded.items()}
    return decoded  # ours always are all strings (and JSON keys are str)


def _pairs(flat: Sequence[Any]) -> dict[Any, Any]:
    return dict(zip(flat[0::2], flat[1::2], strict=False))
