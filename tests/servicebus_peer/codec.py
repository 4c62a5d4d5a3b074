"""AMQP 1.0 message sections, as raw bytes: how a broker keeps a bare message untouched.

A message on the wire is a run of described sections (header, delivery annotations, message
annotations, properties, application properties, body sections, footer). The fake broker keeps
the *bare message* (properties … footer) exactly as the sender encoded it and only rewrites what
a broker owns: the header (delivery count) and the message annotations (sequence number,
enqueued time, lock expiry). proton's ``Data`` encodes and decodes single values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from proton import Data, Described, symbol, timestamp, uint, ulong

HEADER: Final = 0x70
DELIVERY_ANNOTATIONS: Final = 0x71
MESSAGE_ANNOTATIONS: Final = 0x72
PROPERTIES: Final = 0x73
APPLICATION_PROPERTIES: Final = 0x74
DATA: Final = 0x75
AMQP_SEQUENCE: Final = 0x76
AMQP_VALUE: Final = 0x77
FOOTER: Final = 0x78

_SECTION_CODES: Final = frozenset(range(HEADER, FOOTER + 1))


@dataclass(frozen=True, slots=True)
class Section:
    code: int
    encoded: bytes
    value: Any


def encode(value: Any) -> bytes:
    data = Data()
    data.put_object(value)
    return bytes(data.encode())


def split(raw: bytes) -> list[Section]:
    """The sections of an encoded message, in order; ``ValueError`` if ``raw`` is not one."""
    sections: list[Section] = []
    offset = 0
    data = Data()
    while offset < len(raw):
        data.clear()
        try:
            used = data.decode(raw[offset:])
        except Exception as exc:  # proton raises DataException subclasses
            raise ValueError(f"undecodable AMQP at byte {offset}") from exc
        if used <= 0:
            raise ValueError(f"undecodable AMQP at byte {offset}")
        data.rewind()
        data.next()
        value = _owned(data.get_object())
        code = _section_code(value)
        if code is None:
            raise ValueError(f"not a message section at byte {offset}")
        sections.append(Section(code, raw[offset : offset + used], value.value))
        offset += used
    return sections


def _section_code(value: Any) -> int | None:
    """The section code of a decoded value, or None when it is not a message section."""
    if not isinstance(value, Described):
        return None
    descriptor = value.descriptor
    if not isinstance(descriptor, int) or int(descriptor) not in _SECTION_CODES:
        return None
    return int(descriptor)


def _owned(value: Any) -> Any:
    """proton hands out binaries as memoryviews into its own buffer, which the next decode
    (or the ``Data`` going away) overwrites: copy them out at once, however deeply nested."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, Described):
        return Described(value.descriptor, _owned(value.value))
    if isinstance(value, dict):
        return type(value)({_owned(k): _owned(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_owned(v) for v in value]
    return value


def batch_members(raw: bytes) -> list[bytes] | None:
    """The encoded messages of a batch transfer (message-format 0x80013700), or ``None`` for a
    single message.

    proton does not expose a transfer's message-format, so the shape decides: the SDK sends a
    batch as the first member's properties section followed by one data section per member,
    each holding a whole encoded message. A single message whose one data section happens to
    hold a valid encoded AMQP message would be mistaken for a batch; no test sends one.
    """
    sections = split(raw)
    bodies = [s for s in sections if s.code in (DATA, AMQP_SEQUENCE, AMQP_VALUE)]
    if not bodies or any(s.code != DATA for s in bodies):
        return None
    members = [bytes(s.value) for s in bodies]
    for member in members:
        try:
            codes = {s.code for s in split(member)}
        except ValueError:
            return None
        if not codes & {PROPERTIES, DATA, AMQP_SEQUENCE, AMQP_VALUE}:
            return None
    return members


@dataclass(slots=True)
class BareMessage:
    """A message as the broker stores it: the bare part verbatim, plus what it reads from it."""

    bare: bytes
    message_id: str | None
    application_properties: dict[str, Any]

    @classmethod
    def parse(cls, raw: bytes) -> BareMessage:
        sections = split(raw)
        bare = b"".join(
            s.encoded
            for s in sections
            if s.code not in (HEADER, DELIVERY_ANNOTATIONS, MESSAGE_ANNOTATIONS)
        )
        message_id: str | None = None
        properties: dict[str, Any] = {}
        for section in sections:
            if section.code == PROPERTIES and section.value:
                first = section.value[0]
                message_id = None if first is None else str(first)
            elif section.code == APPLICATION_PROPERTIES and section.value:
                properties = {str(k): v for k, v in dict(section.value).items()}
        return cls(bare, message_id, properties)

    def with_properties(self, extra: dict[str, str]) -> BareMessage:
        """A copy whose application properties also hold ``extra`` (dead-letter reason…)."""
        merged: dict[Any, Any] = {**self.application_properties, **extra}
        # The order the spec fixes: properties, application properties, body, footer.
        sections = split(self.bare)
        props = [s.encoded for s in sections if s.code == PROPERTIES]
        rest = [s.encoded for s in sections if s.code not in (PROPERTIES, APPLICATION_PROPERTIES)]
        app = encode(Described(ulong(APPLICATION_PROPERTIES), merged))
        return BareMessage(b"".join([*props, app, *rest]), self.message_id, merged)

    def wire(self, *, delivery_count: int, annotations: dict[str, Any]) -> bytes:
        """Header + message annotations (the broker's) + the bare message (the sender's)."""
        header = encode(Described(ulong(HEADER), [True, None, None, None, uint(delivery_count)]))
        notes = encode(
            Described(ulong(MESSAGE_ANNOTATIONS), {symbol(k): v for k, v in annotations.items()})
        )
        return header + notes + self.bare


def ms_timestamp(epoch_s: float) -> timestamp:
    return timestamp(round(epoch_s * 1000))
