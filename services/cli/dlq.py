"""``mati2sentinel dlq list|replay``: the dead-letter queues, for an operator to read and resend.

A dead letter keeps its body and the reason it was set aside (Sentinel's message for a record
it rejected, the parser's for a malformed MATI record), so "why is this indicator not in
Sentinel" has an answer. Replay sends them back to the entity they came from, as fresh
deliveries, after the cause was fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import orjson

from services.runtime import Runtime
from shared.contract.bus import DeadLetter, Source
from shared.contract.messages import revocation_queue, subscription, upload_queue

Which = Literal["upload", "revoke", "indicators"]


def source_of(runtime: Runtime, which: Which) -> Source:
    destination = runtime.settings.destination
    if which == "upload":
        return upload_queue(destination)
    return revocation_queue(destination) if which == "revoke" else subscription(destination)


@dataclass(frozen=True)
class DeadLetterView:
    message_id: str
    indicator_id: str
    reason: str
    description: str
    delivery_count: int
    dead_lettered_at: str

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterView:
        return cls(
            message_id=letter.message_id,
            indicator_id=letter.properties.get("indicator_id", ""),
            reason=letter.reason,
            description=letter.description,
            delivery_count=letter.delivery_count,
            dead_lettered_at=letter.dead_lettered_at.isoformat(),
        )


async def list_dead_letters(runtime: Runtime, which: Which, limit: int) -> list[DeadLetterView]:
    letters = await runtime.bus.dead_letters(source_of(runtime, which), limit=limit)
    return [DeadLetterView.of(letter) for letter in letters]


async def replay(runtime: Runtime, which: Which, limit: int) -> int:
    source = source_of(runtime, which)
    letters = await runtime.bus.dead_letters(source, limit=limit)
    return await runtime.bus.replay(source, letters) if letters else 0


def render(views: list[DeadLetterView]) -> str:
    if not views:
        return "no dead letters"
    lines = []
    for v in views:
        lines.append(
            f"{v.dead_lettered_at}  {v.indicator_id or v.message_id}  {v.reason}"
            f"  (deliveries {v.delivery_count})"
        )
        if v.description:
            lines.append(f"    {v.description}")
    return "\n".join(lines)


def to_json(views: list[DeadLetterView]) -> bytes:
    return orjson.dumps([v.__dict__ for v in views], option=orjson.OPT_INDENT_2)
