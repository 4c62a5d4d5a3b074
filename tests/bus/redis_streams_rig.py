"""What several test_redis_streams_*.py modules share: ``receive_all``, which drains a queue up to
a count within a bound, and ``_text``, a Redis key or field read as text whichever protocol
answered."""

from __future__ import annotations

import asyncio

from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Delivery, Queue


async def receive_all(bus: RedisStreamsBus, source: Queue, *, want: int) -> list[Delivery]:
    got: list[Delivery] = []
    async with asyncio.timeout(20):
        while len(got) < want:
            batch = await bus.receive(source, max_messages=500, max_wait_s=1.0)
            if not batch:
                break
            got += batch
    return got


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
