"""The Redis Streams bus against the shared bus contract (contract.py), so the services may run
on it where they would run on Service Bus."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from shared.adapters.redis_streams import RedisStreamsBus
from shared.contract.bus import Bus
from tests.bus.contract import BusContract, BusFactory, BusSettings

pytestmark = pytest.mark.timeout(30)


class TestRedisStreamsContract(BusContract):
    @pytest.fixture
    async def bus_factory(self, redis_client: Redis) -> AsyncIterator[BusFactory]:
        made: list[RedisStreamsBus] = []

        async def factory(consumer: str, settings: BusSettings) -> Bus:
            bus = RedisStreamsBus(
                redis_client,
                consumer=consumer,
                lock_duration_s=settings.lock_duration_s,
                max_delivery_count=settings.max_delivery_count,
                duplicate_window_s=settings.duplicate_window_s,
            )
            made.append(bus)
            return bus

        yield factory
        for bus in made:
            await bus.aclose()
